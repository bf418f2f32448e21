"""Batch miners: which (anchor, positive, negative) triplets of a batch the tuple losses use.

Every batch element is an anchor (as in the paper's code). A miner returns, for each
anchor i, the index of one positive (same label, not i) and one negative (other label),
and ``valid[i]``: whether i has at least one positive and one negative (where i has no
candidate on a side, that side's index is i itself; the losses mask invalid anchors out;
``rho_distance``'s (i, i, p) triplets are the exception below). Distances are Euclidean
between the (L2-normalised) embeddings and carry no gradient: mining only chooses pairs.

Choices are categorical draws (the Gumbel-max trick on the counter-based uniforms of
:func:`counter_uniform`) seeded by ``seed`` (a pair of integers), so a step's triplets are reproducible, the same
on every replica of a distributed step, and the same after a resume, and the miners
compile under XLA (``jit_compile``).

Miners (the paper's code, Roth et al. 2020, "Revisiting training strategies and
generalization performance in deep metric learning"):

``random``
    A uniformly random positive and negative.
``semihard`` (Schroff et al. 2015, FaceNet)
    A random positive p; a random negative n with d(i, p) < d(i, n) < d(i, p) + margin;
    if there is none, a random negative.
``softhard``
    A random positive among those farther than the anchor's nearest negative (else any
    positive) and a random negative among those nearer than its farthest positive (else
    any negative).
``distance`` (Wu et al. 2017, "Sampling matters in deep embedding learning")
    A random positive; a negative drawn with probability proportional to the inverse of
    the density q(d) of pairwise distances of points spread uniformly on the unit sphere
    in n dimensions, log q(d) = (n − 2) log d + (n − 3)/2 · log(1 − d²/4), with d clipped
    below at ``lower_cutoff`` (0.5) so that the nearest negatives do not take all the
    weight; negatives farther than ``upper_cutoff`` get none (Wu et al. use 1.4; the
    paper's code leaves it off, which is the default here: None). If no negative is left,
    a uniformly random one.
``rho_distance`` (the paper's code's ρ-regularised ``distance`` miner, ``batchminer/rho_distance.py``)
    The ``distance`` miner's triplet, except that with probability ``rho`` (0.2, the paper's
    code's ``--miner_rho_distance_cp``) an anchor a with a positive gets (a, a, p) instead:
    its negative slot holds its positive p (the same uniformly random positive), so the loss
    pushes that positive pair apart, which keeps the embedding space from compressing (Roth et
    al. 2020's ρ-regularisation). Such a triplet needs no negative: it is valid wherever a has
    a positive, as in the paper's code.
    The swap is a uniform draw of its own stream, so with ``rho`` = 0 the triplets are the
    ``distance`` miner's for the same seed.
"""

from __future__ import annotations

import tensorflow as tf

from tf_langdml.errors import ArgumentError
from tf_langdml.losses.base import euclidean_distances

MINERS = ("random", "semihard", "softhard", "distance", "rho_distance")

_NEG = -1e9  # the logit of an excluded choice (finite: an all-excluded row stays finite)


def _masks(labels):
    labels = tf.reshape(labels, [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    positives = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool)))
    return positives, tf.logical_not(same)


def _hash32(x):
    """A 32-bit integer mix (the "lowbias32" hash): exact integer arithmetic, so the same bits with and without XLA."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def counter_uniform(shape: tf.Tensor | tuple[int, ...], seed: tf.Tensor, stream: int = 0) -> tf.Tensor:
    """Uniform floats in (0, 1) of ``shape`` from a counter-based hash of (seed, stream, position).

    ``tf.random.stateless_uniform`` gives other numbers under XLA than without it, which
    would make a jit-compiled step mine other triplets than the same step run plainly;
    this stream is bit-identical in both (24 random bits per value).
    """
    words = tf.reshape(tf.bitcast(tf.cast(seed, tf.int64), tf.uint32), [-1])  # 4 words of the two int64s
    key = _hash32(tf.constant(0x9E3779B9 * (int(stream) + 1) % 2**32, tf.uint32))
    for index in range(4):
        key = _hash32(tf.bitwise.bitwise_xor(key, words[index]))
    count = tf.reduce_prod(shape)
    positions = tf.bitcast(tf.range(count, dtype=tf.int32), tf.uint32)
    bits = _hash32(tf.bitwise.bitwise_xor(_hash32(positions + key), key))
    values = (tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) + 0.5) / float(2**24)
    return tf.reshape(values, shape)


def _draw(mask, seed, logits=None, stream=0):
    """One index per row, uniformly among (or with ``logits`` over) the row's True entries; row i if none.

    Gumbel-max: argmax(logits + G) with G = −log(−log U), U uniform, is a draw from
    softmax(logits); U comes from :func:`counter_uniform`, so the draw is the same under XLA.
    """
    if logits is None:
        logits = tf.zeros(tf.shape(mask), tf.float32)
    gumbel = -tf.math.log(-tf.math.log(counter_uniform(tf.shape(mask), seed, stream)))
    drawn = tf.argmax(tf.where(mask, logits + gumbel, -3e38), axis=1, output_type=tf.int32)
    own = tf.range(tf.shape(mask)[0], dtype=tf.int32)
    return tf.where(tf.reduce_any(mask, axis=1), drawn, own)


def _or_fallback(preferred, fallback):
    """Rows of ``preferred``, except rows with no True entry, which take ``fallback``'s."""
    return tf.where(tf.reduce_any(preferred, axis=1, keepdims=True), preferred, fallback)


def inverse_sphere_density_logits(
    distances: tf.Tensor, dim: int, lower_cutoff: float = 0.5, upper_cutoff: float | None = None
) -> tf.Tensor:
    """log(1 / q(d)) of the distance-weighted miner (up to a constant), −1e9 where ``upper_cutoff`` excludes.

    q(d) ∝ d^(n−2) (1 − d²/4)^((n−3)/2) is the density of distances between two uniform
    points on the unit sphere in ``dim`` = n dimensions; d is clipped to
    [``lower_cutoff``, 2 − 1e-4] first (the upper clip only keeps the log finite).
    """
    clipped = tf.clip_by_value(distances, float(lower_cutoff), 2.0 - 1e-4)
    dim = float(dim)
    logits = (2.0 - dim) * tf.math.log(clipped) - (dim - 3.0) / 2.0 * tf.math.log(1.0 - 0.25 * tf.square(clipped))
    if upper_cutoff is not None:
        logits = tf.where(distances < float(upper_cutoff), logits, _NEG)
    return logits


def check_rho(rho: float) -> float:
    """``rho`` as a float; an :class:`~tf_langdml.errors.ArgumentError` about ``rho`` unless a probability in [0, 1]."""
    try:
        number = float(rho)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0.0 <= number <= 1.0:  # (NaN fails both comparisons)
        raise ArgumentError(
            f"rho must be a probability in [0, 1] (the share of rho_distance's triplets that push a positive away), "
            f"got {rho!r}; the paper's code uses 0.2.",
            argument="rho",
        )
    return number


@tf.autograph.experimental.do_not_convert
def mine_triplets(
    embeddings: tf.Tensor,
    labels: tf.Tensor,
    miner: str = "semihard",
    seed: tf.Tensor | tuple[int, int] = (0, 0),
    margin: float = 0.2,
    lower_cutoff: float = 0.5,
    upper_cutoff: float | None = None,
    dim: int | None = None,
    rho: float = 0.2,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(anchors, positives, negatives, valid): one triplet per batch element (module docstring).

    Args:
        embeddings: (B, d) embeddings (gradients are not taken through the choice).
        labels: (B,) integer labels.
        miner: one of :data:`MINERS`.
        seed: a pair of integers for the stateless draws.
        margin: the semihard window.
        lower_cutoff, upper_cutoff: the distance-weighted miner's clipping.
        dim: the embedding size n of the sphere density (default: the embeddings' static last dimension).
        rho: the rho_distance miner's probability of an (a, a, p) triplet.

    Returns:
        int32 (B,) anchors (= range(B)), positives, negatives, and bool (B,) valid.
    """
    if miner not in MINERS:
        raise ValueError(f"Unknown miner {miner!r}; expected one of {list(MINERS)}.")
    rho = check_rho(rho)
    embeddings = tf.stop_gradient(tf.cast(embeddings, tf.float32))
    distances = euclidean_distances(embeddings)
    positive_mask, negative_mask = _masks(labels)
    anchors = tf.range(tf.shape(labels)[0], dtype=tf.int32)
    has_positive = tf.reduce_any(positive_mask, axis=1)
    valid = tf.logical_and(has_positive, tf.reduce_any(negative_mask, axis=1))
    big = tf.constant(1e9, tf.float32)

    if miner == "softhard":
        nearest_negative = tf.reduce_min(tf.where(negative_mask, distances, big), axis=1, keepdims=True)
        farthest_positive = tf.reduce_max(tf.where(positive_mask, distances, -big), axis=1, keepdims=True)
        positive_choices = _or_fallback(tf.logical_and(positive_mask, distances > nearest_negative), positive_mask)
        positives = _draw(positive_choices, seed, stream=1)
    else:
        positives = _draw(positive_mask, seed, stream=1)

    if miner == "random":
        negatives = _draw(negative_mask, seed, stream=2)
    elif miner == "semihard":
        positive_distance = tf.gather(distances, positives, axis=1, batch_dims=1)[:, None]
        window = tf.logical_and(
            negative_mask, tf.logical_and(distances > positive_distance, distances < positive_distance + float(margin))
        )
        negatives = _draw(_or_fallback(window, negative_mask), seed, stream=2)
    elif miner == "softhard":
        harder = tf.logical_and(negative_mask, distances < farthest_positive)
        negatives = _draw(_or_fallback(harder, negative_mask), seed, stream=2)
    else:  # distance, rho_distance
        dim = embeddings.shape[-1] if dim is None else dim
        if dim is None:
            raise ValueError(f"The {miner} miner needs the embedding size: pass dim=... (the static shape is unknown).")
        logits = inverse_sphere_density_logits(distances, dim, lower_cutoff, upper_cutoff)
        kept = tf.logical_and(negative_mask, logits > _NEG / 2)
        row_logits = tf.where(kept, logits, _NEG)
        # Subtract each row's maximum over the kept entries: the weights are relative within a row. A row with
        # nothing kept is all _NEG, so all 0 after this: a uniform draw over its negatives (the fallback).
        row_logits = row_logits - tf.reduce_max(row_logits, axis=1, keepdims=True)
        negatives = _draw(_or_fallback(kept, negative_mask), seed, row_logits, stream=2)
    if miner == "rho_distance":
        # Stream 3 is drawn by no other choice, so the distance triplets above are those of the distance miner.
        swap = tf.logical_and(counter_uniform(tf.shape(anchors), seed, stream=3) < rho, has_positive)
        negatives = tf.where(swap, positives, negatives)
        positives = tf.where(swap, anchors, positives)
        valid = tf.logical_or(valid, swap)
    return anchors, positives, negatives, valid
