"""Registry of DML losses, built by name: TensorFlow-Similarity's and the paper's code's.

Two kinds of loss live here:

- TensorFlow-Similarity ``MetricLoss`` objects (``multisimilarity``, ``tfsim_triplet``,
  ``circle``, ``pn``, ``soft_nearest_neighbor``): ``loss.call(labels, embeddings)``
  gives one value per anchor, shape (B, 1), and the model averages over the B anchors;
- :class:`~tf_langdml.losses.base.BatchLoss` layers (``margin``, ``triplet``,
  ``contrastive``, ``npair``, ``proxy_anchor``, ``proxy_nca``, ``normalized_softmax``,
  ``arcface``, ``s2sd``): ``loss(labels, embeddings, features=None, step=0)`` is the batch
  loss; those with learned state get their variables from ``LanguageGuidedModel.compile``.

Multi-similarity (Wang et al., CVPR 2019) with the paper's names
----------------------------------------------------------------
The paper's code names the hyper-parameters ``pos_weight=2, neg_weight=40,
margin=0.1, thresh=0.5`` and works on cosine similarities s. TF-Similarity works on
cosine *distances* d = 1 - s and calls them ``alpha, beta, epsilon, lmda, center``.
With ``center=1`` its shifted distance is ``d + lmda - center = lmda - s``, so

=====================  =======================  ==============================
paper name             TF-Similarity argument   meaning
=====================  =======================  ==============================
``positive_weight`` 2  ``alpha``                (1/α) log(1 + Σ_p exp(-α (s_p - λ)))
``negative_weight`` 40 ``beta``                 (1/β) log(1 + Σ_n exp( β (s_n - λ)))
``margin`` 0.1         ``epsilon``              keep positives with s_p < max_n s_n + ε
                                                and negatives with s_n > min_p s_p - ε
``threshold`` 0.5      ``lmda``                 λ
(cosine)               ``distance="cosine"``,   d = 1 - s, so ``center=1`` maps back
                       ``center=1``
=====================  =======================  ==============================

An anchor left with no positive or no negative after mining contributes 0, and the
batch loss is the mean over *all* B anchors (TF-Similarity's convention). The
paper's PyTorch code averages over the anchors that survived mining instead; the two
differ by the factor (valid anchors / B), which is 1 early in training.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from tf_langdml._keras import keras  # binds tf.keras to tf-keras first
from tf_langdml.errors import ArgumentError
from tf_langdml.losses.base import BatchLoss
from tf_langdml.losses.proxy_losses import ArcFaceLoss, NormalizedSoftmaxLoss, ProxyAnchorLoss, ProxyNCALoss
from tf_langdml.losses.s2sd import S2SDLoss, head_sizes
from tf_langdml.losses.similarity_package import similarity_losses
from tf_langdml.losses.tuple_losses import ContrastiveLoss, MarginLoss, NPairLoss, TripletLoss


def _multisimilarity(positive_weight=2.0, negative_weight=40.0, margin=0.1, threshold=0.5):
    return similarity_losses().MultiSimilarityLoss(
        distance="cosine",
        alpha=float(positive_weight),
        beta=float(negative_weight),
        epsilon=float(margin),
        lmda=float(threshold),
        center=1.0,
    )


def _mined_pair_loss(class_name):
    """Factory for TF-Similarity's pair losses with positive / negative mining."""

    def build(margin=0.2, positive_mining_strategy="hard", negative_mining_strategy="semi-hard", distance="cosine"):
        return getattr(similarity_losses(), class_name)(
            distance=distance,
            margin=margin,
            positive_mining_strategy=positive_mining_strategy,
            negative_mining_strategy=negative_mining_strategy,
        )

    return build


def _circle(gamma=80.0, margin=0.4, distance="cosine"):
    return similarity_losses().CircleLoss(distance=distance, gamma=gamma, margin=margin)


def _soft_nearest_neighbor(temperature=1.0, distance="sql2"):
    return similarity_losses().SoftNearestNeighborLoss(distance=distance, temperature=temperature)


def _s2sd(
    target="multisimilarity",
    target_arguments=None,
    dims=(1024, 1536, 2048),
    distill_weight=0.0,
    temperature=1.0,
    feature_weight=0.0,
    feature_delay=0,
    feature_pooling="avg+max",
    seed=0,
):
    """S2SD around the loss named ``target``: built here once for the embedding and once per head.

    A target loss that takes a seed gets ``seed + index`` (index 0: the embedding, i: head i), unless
    ``target_arguments`` sets one; the heads' initial weights come from ``seed``.
    """
    if str(target).lower() == "s2sd":
        raise ArgumentError(
            "S2SD's target loss cannot be 's2sd' itself; use e.g. target='multisimilarity'.", argument="target"
        )
    if str(target).lower() not in DML_LOSSES:
        raise ArgumentError(_unknown_loss(target), argument="target")
    dims = head_sizes(dims)
    arguments = dict(target_arguments or {})
    seeded = "seed" in dml_loss_arguments(target) and "seed" not in arguments
    target_losses = [
        build_dml_loss(target, **arguments, **({"seed": int(seed) + index} if seeded else {}))
        for index in range(len(dims) + 1)
    ]
    return S2SDLoss(
        target_losses,
        dims=dims,
        distill_weight=distill_weight,
        temperature=temperature,
        feature_weight=feature_weight,
        feature_delay=feature_delay,
        feature_pooling=feature_pooling,
        seed=seed,
    )


# The BatchLoss layer each of these names builds.
_BATCH_LOSS_CLASSES = {
    "margin": MarginLoss,
    "triplet": TripletLoss,
    "contrastive": ContrastiveLoss,
    "npair": NPairLoss,
    "proxy_anchor": ProxyAnchorLoss,
    "proxy_nca": ProxyNCALoss,
    "normalized_softmax": NormalizedSoftmaxLoss,
    "arcface": ArcFaceLoss,
    "s2sd": S2SDLoss,
}


def _batch_losses() -> dict[str, type[BatchLoss]]:
    """The :class:`BatchLoss` class of each name that builds one."""
    return dict(_BATCH_LOSS_CLASSES)


# TensorFlow-Similarity's losses (MetricLoss objects).
TFSIM_LOSSES = {
    "multisimilarity": _multisimilarity,
    "tfsim_triplet": _mined_pair_loss("TripletLoss"),  # TF-Similarity's: hardest positive, semi-hard negative
    "circle": _circle,
    "pn": _mined_pair_loss("PNLoss"),
    "soft_nearest_neighbor": _soft_nearest_neighbor,
}

# Every loss by name: TF-Similarity's, then the BatchLoss layers (tuple, proxy and S2SD losses): each name's
# factory, whose keyword arguments (and defaults) are the loss's. S2SD's builds its target losses first.
DML_LOSSES: dict[str, Callable[..., Any]] = {**TFSIM_LOSSES, **_BATCH_LOSS_CLASSES, "s2sd": _s2sd}


def dml_loss_arguments(name: str) -> dict[str, Any]:
    """The keyword arguments (with defaults) that ``build_dml_loss(name, ...)`` accepts."""
    factory = _lookup(name)
    return {key: param.default for key, param in inspect.signature(factory).parameters.items()}


def _unknown_loss(name: Any) -> str:
    return f"Unknown DML loss {name!r}; known losses: {sorted(DML_LOSSES)}."


def _lookup(name: str) -> Callable[..., Any]:
    key = str(name).lower()
    if key not in DML_LOSSES:
        raise ArgumentError(_unknown_loss(name), argument="name")
    return DML_LOSSES[key]


def build_dml_loss(
    name: str, xbm_memory_size: int | None = None, xbm_warmup_steps: int = 0, **kwargs: Any
) -> keras.losses.Loss | BatchLoss:
    """Build a TF-Similarity DML loss by name.

    Args:
        name: one of ``DML_LOSSES`` (docs/dml_losses.md lists them with their arguments).
        xbm_memory_size: if set, wrap the loss in cross-batch memory (XBM, Wang et
            al. 2020) holding this many past embeddings (TF-Similarity losses only).
        xbm_warmup_steps: steps before the memory is used.
        **kwargs: the loss's own arguments; see :func:`dml_loss_arguments`.

    Returns:
        A ``tensorflow_similarity.losses.MetricLoss`` (``loss(labels, embeddings)`` is the
        batch mean, ``loss.call(labels, embeddings)`` the per-anchor values) or a
        :class:`~tf_langdml.losses.base.BatchLoss` layer.
    """
    factory = _lookup(name)
    accepted = dml_loss_arguments(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ArgumentError(
            f"Unknown argument(s) {unknown} for DML loss {name!r}; it accepts {sorted(accepted)}.", argument="kwargs"
        )
    if xbm_memory_size is not None and name.lower() not in TFSIM_LOSSES:
        raise ArgumentError(
            f"xbm_memory_size works with TensorFlow-Similarity's losses ({sorted(TFSIM_LOSSES)}), not with {name!r}; "
            f"drop xbm_memory_size or pick one of those.",
            argument="xbm_memory_size",
        )
    loss = factory(**kwargs)
    if xbm_memory_size is not None:
        if int(xbm_memory_size) <= 0:
            raise ArgumentError(
                f"xbm_memory_size must be a positive number of embeddings, got {xbm_memory_size!r}.",
                argument="xbm_memory_size",
            )
        if int(xbm_warmup_steps) < 0:
            raise ArgumentError(
                f"xbm_warmup_steps must be >= 0, got {xbm_warmup_steps!r}.", argument="xbm_warmup_steps"
            )
        loss = similarity_losses().XBM(loss, memory_size=int(xbm_memory_size), warmup_steps=int(xbm_warmup_steps))
    return loss
