"""The batch miners against their rules (tf_langdml/losses/miners.py), checked in numpy.

Distances here are float64 numpy distances of the float32 embeddings the miner sees. The
miner computes them in float32 from the Gram matrix (d² = |a|² + |b|² − 2 a·b): d² is off
by a few 1e-7, so d by <= ~3e-6 for d >= 0.05 (unit vectors). A set defined by a distance
comparison is therefore checked with a tolerance TOL = 1e-5: when the set is non-empty even
with the tolerance against it ("strict"), the choice must lie in the set widened by TOL
("loose"); when the loose set is empty, the rule's fallback applies; the cases between
(a distance within TOL of a boundary) are counted and must stay rare.

Many draws are made at once: ``draw_many`` maps ``mine_triplets`` over (batch, seed) pairs
inside one ``tf.function`` (the same op the loss runs, with the seed as a tensor).
"""

import functools

import numpy as np
import pytest
import tensorflow as tf
from helpers import unit_rows

from tf_langdml.losses.base import mining_seed
from tf_langdml.losses.miners import MINERS, mine_triplets

TOL = 1e-5
# Uneven classes: 2 is a singleton (no positive), 3 has four members.
LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4], np.int32)


@tf.function
def _draw_many(embeddings, labels, seeds, miner, margin, lower_cutoff, upper_cutoff, rho):
    def one(arguments):
        x, y, seed = arguments
        _, positives, negatives, valid = mine_triplets(
            x, y, miner, seed=seed, margin=margin, lower_cutoff=lower_cutoff, upper_cutoff=upper_cutoff, rho=rho
        )
        return positives, negatives, valid

    return tf.map_fn(
        one, (embeddings, labels, seeds), fn_output_signature=(tf.int32, tf.int32, tf.bool), parallel_iterations=64
    )


def draw_many(embeddings, labels, seeds, miner, margin=0.2, lower_cutoff=0.5, upper_cutoff=None, rho=0.2):
    """mine_triplets on embeddings[k], labels[k] with seeds[k] for every k: numpy positives, negatives, valid (N, B)."""
    positives, negatives, valid = _draw_many(
        tf.constant(embeddings, tf.float32),
        tf.constant(labels, tf.int32),
        tf.constant(seeds, tf.int64),
        miner,
        margin,
        lower_cutoff,
        upper_cutoff,
        rho,
    )
    return positives.numpy(), negatives.numpy(), valid.numpy()


def distances(embeddings):
    """(..., B, B) float64 Euclidean distances."""
    x = np.asarray(embeddings, np.float64)
    return np.linalg.norm(x[..., :, None, :] - x[..., None, :, :], axis=-1)


def label_masks(labels):
    """(..., B, B) positive (same label, not itself) and negative (other label) masks."""
    labels = np.asarray(labels)
    same = labels[..., :, None] == labels[..., None, :]
    return same & ~np.eye(labels.shape[-1], dtype=bool), ~same


def random_batches(count, seed, batch=12, dim=6):
    """``count`` batches: uneven random labels, class-correlated unit embeddings of varied spread.

    Batch 0 has a single label (no anchor has a negative); the noise scale varies from tight,
    well-separated classes (where the hard/semihard rules fall back) to overlapping ones.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=(count, batch)).astype(np.int32)
    labels[0] = 1
    labels[1] = LABELS
    centers = rng.normal(size=(count, 5, dim))
    noise = rng.uniform(0.05, 1.5, size=(count, 1, 1)) * rng.normal(size=(count, batch, dim))
    embeddings = unit_rows(np.take_along_axis(centers, labels[:, :, None], axis=1) + noise)
    return embeddings.astype(np.float32), labels


def tile_seeds(count, seeds_per_batch, first=0):
    """For ``count`` batches × ``seeds_per_batch`` seeds: the batch index of each draw and its (2,) seed."""
    batch_index = np.repeat(np.arange(count), seeds_per_batch)
    seeds = np.stack([np.full(batch_index.size, first), np.arange(batch_index.size)], axis=1)
    return batch_index, seeds


def test_unknown_miner_lists_the_miners():
    with pytest.raises(
        ValueError,
        match=r"^Unknown miner 'hardest'; expected one of \['random', 'semihard', "
        r"'softhard', 'distance', 'rho_distance'\]\.$",
    ):
        mine_triplets(tf.zeros((4, 3)), tf.constant([0, 0, 1, 1]), "hardest")


# rho_distance's (a, a, p) triplets break this rule on purpose; its own tests are at the end of this file.
@pytest.mark.parametrize("miner", [miner for miner in MINERS if miner != "rho_distance"])
def test_every_miner_returns_a_positive_and_a_negative_for_valid_anchors(miner):
    embeddings, labels = random_batches(30, seed=MINERS.index(miner))
    batch_index, seeds = tile_seeds(30, 20)
    x, y = embeddings[batch_index], labels[batch_index]
    positives, negatives, valid = draw_many(x, y, seeds, miner, upper_cutoff=1.4 if miner == "distance" else None)
    positive_mask, negative_mask = label_masks(y)
    has_positive, has_negative = positive_mask.any(axis=2), negative_mask.any(axis=2)
    anchors = np.broadcast_to(np.arange(y.shape[1]), y.shape)
    # valid is False exactly for the anchors without a positive or without a negative
    np.testing.assert_array_equal(valid, has_positive & has_negative)
    assert valid.mean() > 0.5 and (~valid).sum() > 100  # both kinds of anchors occur (singletons, batch 0)
    chosen_positive = np.take_along_axis(positive_mask, positives[..., None], axis=2)[..., 0]
    chosen_negative = np.take_along_axis(negative_mask, negatives[..., None], axis=2)[..., 0]
    # an anchor with a positive gets one (same label, not itself); with a negative, one with another label
    assert chosen_positive[has_positive].all() and chosen_negative[has_negative].all()
    np.testing.assert_array_equal(np.take_along_axis(y, positives, 1)[has_positive], y[has_positive])
    assert (positives != anchors)[has_positive].all()
    assert (np.take_along_axis(y, negatives, 1) != y)[has_negative].all()
    # where there is nothing to choose, the anchor's own index (masked out by the losses through valid)
    np.testing.assert_array_equal(positives[~has_positive], anchors[~has_positive])
    np.testing.assert_array_equal(negatives[~has_negative], anchors[~has_negative])


@pytest.mark.parametrize("miner", MINERS)
def test_draws_are_reproducible_for_a_seed_and_change_with_it(miner, run_mode):
    embeddings, labels = random_batches(2, seed=5)
    x, y = embeddings[1], labels[1]
    mine = run_mode(lambda e, labels, s: mine_triplets(e, labels, miner, seed=s)[1:3])

    def draw(seed, step):
        return np.stack([t.numpy() for t in mine(x, y, mining_seed(seed, step))])

    first = draw(3, 7)
    np.testing.assert_array_equal(draw(3, 7), first)
    # the same draw eagerly and in a graph (a step's triplets do not depend on how the step runs)
    eager = np.stack([t.numpy() for t in mine_triplets(x, y, miner, seed=mining_seed(3, 7))[1:3]])
    np.testing.assert_array_equal(eager, first)
    # ... and in the many-draws harness the other tests use
    positives, negatives, _ = draw_many(x[None], y[None], np.array([[3, 7]]), miner)
    np.testing.assert_array_equal(np.stack([positives[0], negatives[0]]), first)
    for other in [(3, 8), (4, 7)]:
        assert (draw(*other) != first).any(), other


def semihard_case(positive_distance, negative_distances):
    """Anchor 0 and its only positive, 1, at ``positive_distance``; negatives 2.. (one class each) at the distances given.

    Points on the unit circle: a chord of length d spans the angle 2 arcsin(d / 2).
    """
    chords = np.array([0.0, positive_distance, *negative_distances])
    angles = 2 * np.arcsin(chords / 2) * np.where(np.arange(chords.size) % 2, 1, -1)
    embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = np.array([0, 0, *range(1, len(negative_distances) + 1)], np.int32)
    return embeddings, labels


@pytest.mark.parametrize(
    "positive_distance,negative_distances,expected",
    [
        # window (0.5, 0.8): only the negatives at 0.6 and 0.7 (indices 3, 4)
        (0.5, [0.3, 0.6, 0.7, 0.9, 1.5], [3, 4]),
        # no negative in (0.2, 0.5), all farther: fallback to any negative
        (0.2, [1.0, 1.2, 1.5], [2, 3, 4]),
        # no negative in (1.5, 1.8), all nearer than the positive: fallback to any negative
        (1.5, [0.3, 0.6, 1.1], [2, 3, 4]),
    ],
)
def test_semihard_window_and_fallback_on_a_constructed_anchor(positive_distance, negative_distances, expected):
    embeddings, labels = semihard_case(positive_distance, negative_distances)
    np.testing.assert_allclose(distances(embeddings)[0, 1:], [positive_distance, *negative_distances], atol=1e-6)
    draws = 600
    _, negatives, valid = draw_many(
        np.repeat(embeddings[None], draws, 0),
        np.repeat(labels[None], draws, 0),
        np.stack([np.zeros(draws), np.arange(draws)], 1),
        "semihard",
        margin=0.3,
    )
    assert valid[:, 0].all()
    counts = np.bincount(negatives[:, 0], minlength=len(labels))
    assert set(np.flatnonzero(counts)) == set(expected)
    # uniform over the allowed negatives: each count is Binomial(600, 1/k); 5 sigma bounds
    k = len(expected)
    sigma = np.sqrt(draws * (1 / k) * (1 - 1 / k))
    assert np.all(np.abs(counts[expected] - draws / k) < 5 * sigma), counts


def test_semihard_negative_is_in_the_window_whenever_one_exists():
    margin = 0.3
    embeddings, labels = random_batches(40, seed=11)
    batch_index, seeds = tile_seeds(40, 50)
    positives, negatives, valid = draw_many(
        embeddings[batch_index], labels[batch_index], seeds, "semihard", margin=margin
    )
    d = distances(embeddings)[batch_index]
    _, negative_mask = label_masks(labels[batch_index])
    d_positive = np.take_along_axis(d, positives[..., None], axis=2)  # (N, B, 1)
    strict = negative_mask & (d > d_positive + TOL) & (d < d_positive + margin - TOL)
    loose = negative_mask & (d > d_positive - TOL) & (d < d_positive + margin + TOL)
    chosen_in_window = np.take_along_axis(loose, negatives[..., None], axis=2)[..., 0]
    in_window = valid & strict.any(axis=2)
    fallback = valid & ~loose.any(axis=2)
    assert chosen_in_window[in_window].all()
    # the fallback is a random negative, and it does pick negatives outside the window's reach
    chosen_negative = np.take_along_axis(negative_mask, negatives[..., None], axis=2)[..., 0]
    assert chosen_negative[fallback].all()
    assert in_window.sum() > 5000 and fallback.sum() > 1000
    assert (valid & ~in_window & ~fallback).sum() < 10  # a distance within TOL of the window's edge: rare


def test_softhard_follows_its_rule():
    embeddings, labels = random_batches(40, seed=12)
    batch_index, seeds = tile_seeds(40, 50)
    positives, negatives, valid = draw_many(embeddings[batch_index], labels[batch_index], seeds, "softhard")
    d = distances(embeddings)[batch_index]
    positive_mask, negative_mask = label_masks(labels[batch_index])
    nearest_negative = np.where(negative_mask, d, np.inf).min(axis=2, keepdims=True)
    farthest_positive = np.where(positive_mask, d, -np.inf).max(axis=2, keepdims=True)
    rules = [
        # a positive farther than the nearest negative, else any positive
        (
            positives,
            positive_mask & (d > nearest_negative + TOL),
            positive_mask & (d > nearest_negative - TOL),
            positive_mask,
        ),
        # a negative nearer than the farthest positive, else any negative
        (
            negatives,
            negative_mask & (d < farthest_positive - TOL),
            negative_mask & (d < farthest_positive + TOL),
            negative_mask,
        ),
    ]
    for chosen, strict, loose, allowed in rules:
        preferred = valid & strict.any(axis=2)
        fallback = valid & ~loose.any(axis=2)
        assert np.take_along_axis(loose, chosen[..., None], axis=2)[..., 0][preferred].all()
        assert np.take_along_axis(allowed, chosen[..., None], axis=2)[..., 0][fallback].all()
        # the rule restricts something: the preferred set is smaller than all candidates for many anchors
        assert (preferred & (strict.sum(axis=2) < allowed.sum(axis=2))).sum() > 1000
        assert preferred.sum() > 5000 and fallback.sum() > 500
        assert (valid & ~preferred & ~fallback).sum() < 10
        # the fallback covers the candidates: across draws more than one distinct choice per fallback anchor
        assert len(np.unique(chosen[fallback])) > 1


# --- distance-weighted miner ---------------------------------------------------------------------------

# n = 4: log-weights (2 − n) log d − (n − 3)/2 log(1 − d²/4), a ratio of ~8 between d = 0.5 and d = 1.4
DIM = 4
DRAWS = 4000
# Upper 0.1 % points of the chi-square distribution (significance level 0.001) for the degrees of freedom
# of the two checks below (scipy.stats.chi2.ppf(0.999, df), hard-coded: scipy is not a dependency).
CHI2_CRITICAL_0_001 = {98: 147.010, 60: 99.607}


def distance_miner_case():
    """(12, 4) unit embeddings, fixed: class 0 sits near e1, everything else has x0 < −0.1 (> 1.4 away from class 0);
    points 4 (class 1) and 6 (class 2) are 0.2 apart, below the lower cutoff."""
    rng = np.random.default_rng(2024)
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4], np.int32)
    points = rng.normal(size=(12, DIM))
    points[:, 0] = -np.abs(points[:, 0]) - 0.3
    points = unit_rows(points)
    points[:2] = unit_rows([[1.0, 0.1, 0.0, 0.0], [1.0, -0.1, 0.05, 0.0]])
    offset = unit_rows(rng.normal(size=DIM))
    offset -= offset.dot(points[4]) * points[4]
    points[6] = unit_rows(points[4] + 0.2 * offset / np.linalg.norm(offset))
    return points.astype(np.float32), labels


def inverse_density_probabilities(embeddings, labels, lower_cutoff=0.5, upper_cutoff=None, clip=True):
    """(B, B) probability of each negative per anchor: ∝ exp((2 − n) log d_c − (n − 3)/2 log(1 − d_c²/4)),
    d_c = max(d, lower_cutoff), zero beyond upper_cutoff, uniform over the negatives if none is left."""
    d = distances(embeddings)
    n = embeddings.shape[1]
    _, negative_mask = label_masks(labels)
    clipped = np.maximum(d, lower_cutoff) if clip else np.where(negative_mask, d, 1.0)  # (1.0: not a negative)
    clipped = np.minimum(clipped, 2 - 1e-4)
    log_q_inverse = (2 - n) * np.log(clipped) - (n - 3) / 2 * np.log(1 - clipped**2 / 4)
    kept = negative_mask if upper_cutoff is None else negative_mask & (d < upper_cutoff)
    row_maximum = np.where(kept, log_q_inverse, -np.inf).max(axis=1, keepdims=True)
    row_maximum = np.where(np.isfinite(row_maximum), row_maximum, 0.0)  # rows with nothing kept: uniform below
    weights = np.where(kept, np.exp(log_q_inverse - row_maximum), 0.0)
    weights = np.where(kept.any(axis=1, keepdims=True), weights, negative_mask.astype(float))
    return weights / weights.sum(axis=1, keepdims=True)


def chi_square(counts, probabilities, anchors):
    """Pearson's statistic summed over ``anchors`` on the cells of positive probability, and its degrees of freedom."""
    statistic, df = 0.0, 0
    for i in anchors:
        cells = probabilities[i] > 0
        expected = DRAWS * probabilities[i, cells]
        assert expected.min() >= 5  # the chi-square approximation holds
        statistic += float(((counts[i, cells] - expected) ** 2 / expected).sum())
        df += int(cells.sum()) - 1
    return statistic, df


def distance_miner_counts(embeddings, labels, upper_cutoff):
    seeds = np.stack([np.full(DRAWS, 17), np.arange(DRAWS)], axis=1)  # the seed's second component varies
    _, negatives, valid = draw_many(
        np.repeat(embeddings[None], DRAWS, 0),
        np.repeat(labels[None], DRAWS, 0),
        seeds,
        "distance",
        upper_cutoff=upper_cutoff,
    )
    singleton = np.arange(len(labels)) == 11
    np.testing.assert_array_equal(valid, np.broadcast_to(~singleton, valid.shape))
    # (the singleton's negative is drawn by the same rule: it is checked too)
    counts = np.stack([np.bincount(negatives[:, i], minlength=len(labels)) for i in range(len(labels))])
    return counts


def test_distance_miner_draws_negatives_by_the_clipped_inverse_density():
    embeddings, labels = distance_miner_case()
    d = distances(embeddings)
    assert d[4, 6] < 0.5 and d[:2, 2:].min() > 1.4
    counts = distance_miner_counts(embeddings, labels, upper_cutoff=None)
    _, negative_mask = label_masks(labels)
    assert counts[~negative_mask].sum() == 0  # never a positive or the anchor itself
    expected = inverse_density_probabilities(embeddings, labels)
    statistic, df = chi_square(counts, expected, anchors=range(len(labels)))
    assert df == 98
    assert statistic < CHI2_CRITICAL_0_001[df], statistic
    # The check has power: the same counts reject a uniform choice and the unclipped density
    # (point 6 is 0.2 from point 4: weight 1/0.2² instead of 1/0.5²).
    uniform = negative_mask / negative_mask.sum(axis=1, keepdims=True)
    assert chi_square(counts, uniform, range(len(labels)))[0] > 5 * CHI2_CRITICAL_0_001[df]
    unclipped = inverse_density_probabilities(embeddings, labels, clip=False)
    assert chi_square(counts, unclipped, range(len(labels)))[0] > 5 * CHI2_CRITICAL_0_001[df]


def test_distance_miner_upper_cutoff_excludes_far_negatives():
    embeddings, labels = distance_miner_case()
    upper_cutoff = 1.4
    counts = distance_miner_counts(embeddings, labels, upper_cutoff=upper_cutoff)
    d = distances(embeddings)
    _, negative_mask = label_masks(labels)
    near = negative_mask & (d < upper_cutoff)
    # anchors with a negative below the cutoff never draw one beyond it
    has_near = near.any(axis=1)
    assert has_near[2:].all() and not has_near[:2].any()
    assert counts[has_near][~near[has_near]].sum() == 0
    assert (negative_mask & ~near)[has_near].sum() > 10  # there are far negatives to exclude
    # class 0 (all its negatives beyond the cutoff) falls back to a uniformly random negative
    expected = inverse_density_probabilities(embeddings, labels, upper_cutoff=upper_cutoff)
    np.testing.assert_allclose(expected[0][negative_mask[0]], 1 / negative_mask[0].sum())
    statistic, df = chi_square(counts, expected, anchors=range(len(labels)))
    assert df == 60
    assert statistic < CHI2_CRITICAL_0_001[df], statistic


# --- rho_distance: the distance miner with (a, a, p) triplets at probability rho --------------------------------
# (A margin loss's training step with rho_distance: tests/models/test_loss_state.py's margin beta test.)


def rho_and_distance_draws(rho, upper_cutoff=None):
    """(labels, rho_distance draws, distance draws) on the same batches and seeds: each a (positives, negatives, valid).
    The distance miner's draws depend on ``upper_cutoff`` only: drawn once per value for the tests below."""
    y, seeds, x = rho_batches()
    rho_draws = draw_many(x, y, seeds, "rho_distance", upper_cutoff=upper_cutoff, rho=rho)
    return y, rho_draws, distance_draws(upper_cutoff)


def rho_batches(count=30, seeds_per_batch=20):
    """(labels, seeds, embeddings) of the rho_distance tests: ``count`` batches x ``seeds_per_batch`` seeds."""
    embeddings, labels = random_batches(count, seed=21)
    batch_index, seeds = tile_seeds(count, seeds_per_batch)
    return labels[batch_index], seeds, embeddings[batch_index]


@functools.cache
def distance_draws(upper_cutoff):
    """The distance miner's draws on :func:`rho_batches` (read-only: shared by the tests)."""
    y, seeds, x = rho_batches()
    draws = draw_many(x, y, seeds, "distance", upper_cutoff=upper_cutoff)
    for array in draws:
        array.setflags(write=False)
    return draws


@pytest.mark.parametrize("upper_cutoff", [None, 1.4])
def test_rho_distance_with_rho_0_is_the_distance_miner(upper_cutoff):
    _, rho_draws, distance = rho_and_distance_draws(0.0, upper_cutoff=upper_cutoff)
    for rho_part, distance_part in zip(rho_draws, distance):
        np.testing.assert_array_equal(rho_part, distance_part)


def test_rho_distance_with_rho_1_gives_every_anchor_with_a_positive_the_triplet_anchor_anchor_positive():
    y, (positives, negatives, valid), (distance_positives, distance_negatives, distance_valid) = rho_and_distance_draws(
        1.0
    )
    positive_mask, negative_mask = label_masks(y)
    has_positive, has_negative = positive_mask.any(axis=2), negative_mask.any(axis=2)
    anchors = np.broadcast_to(np.arange(y.shape[1]), y.shape)
    # (a, a, p): the positive slot is the anchor, the negative slot a positive of it (same label, not a) ...
    np.testing.assert_array_equal(positives[has_positive], anchors[has_positive])
    assert np.take_along_axis(positive_mask, negatives[..., None], axis=2)[..., 0][has_positive].all()
    # ... the positive the distance miner draws with the same seed
    np.testing.assert_array_equal(negatives[has_positive], distance_positives[has_positive])
    # valid wherever there is a positive, even without a negative (batch 0 has a single label, as the paper's code)
    np.testing.assert_array_equal(valid, has_positive)
    assert (has_positive & ~has_negative).sum() >= 12 * 20
    # an anchor without a positive keeps the distance miner's (invalid) triplet
    np.testing.assert_array_equal(positives[~has_positive], distance_positives[~has_positive])
    np.testing.assert_array_equal(negatives[~has_positive], distance_negatives[~has_positive])
    np.testing.assert_array_equal(valid[~has_positive], distance_valid[~has_positive])


@pytest.mark.parametrize("rho", [0.2, 0.7])
def test_rho_distance_swaps_a_binomial_share_of_the_distance_triplets(rho):
    y, (positives, negatives, valid), (distance_positives, distance_negatives, distance_valid) = rho_and_distance_draws(
        rho
    )
    has_positive = label_masks(y)[0].any(axis=2)
    anchors = np.broadcast_to(np.arange(y.shape[1]), y.shape)
    # Every triplet is the distance miner's (a, p, n) or (a, a, p) with its p; p != a, so positives == a tells them apart.
    swapped = has_positive & (positives == anchors)
    kept = ~swapped
    np.testing.assert_array_equal(negatives[swapped], distance_positives[swapped])
    np.testing.assert_array_equal(positives[kept], distance_positives[kept])
    np.testing.assert_array_equal(negatives[kept], distance_negatives[kept])
    np.testing.assert_array_equal(valid, distance_valid | swapped)
    # Each anchor with a positive is swapped independently with probability rho: the count is Binomial(n, rho);
    # 5 sigma (a false alarm about once in 1.7 million runs). n = 6660 here: rho ± 0.025 (0.2), ± 0.028 (0.7).
    n = int(has_positive.sum())
    sigma = np.sqrt(n * rho * (1 - rho))
    assert abs(int(swapped.sum()) - n * rho) < 5 * sigma, (int(swapped.sum()), n, rho)
    assert 5 * sigma < 0.05 * n  # the bound tells rho from rho ± 0.05


@pytest.mark.parametrize("rho", [-0.1, 1.5, float("nan"), "high"])
def test_rho_outside_0_1_is_refused_naming_rho(rho):
    embeddings, labels = random_batches(2, seed=3)
    with pytest.raises(
        ValueError, match=r"^rho must be a probability in \[0, 1\] .*got .*; the paper's code uses 0\.2\.$"
    ):
        mine_triplets(embeddings[1], labels[1], "rho_distance", rho=rho)
