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

import inspect
from typing import Any

from tf_langdml._keras import keras  # noqa: F401  (binds tf.keras to tf-keras first)


def _tfsim_losses():
    # Imported lazily: tensorflow_similarity pulls in several heavy modules.
    from tensorflow_similarity import losses

    return losses


def _multisimilarity(positive_weight=2.0, negative_weight=40.0, margin=0.1, threshold=0.5):
    return _tfsim_losses().MultiSimilarityLoss(
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
        return getattr(_tfsim_losses(), class_name)(
            distance=distance,
            margin=margin,
            positive_mining_strategy=positive_mining_strategy,
            negative_mining_strategy=negative_mining_strategy,
        )

    return build


def _circle(gamma=80.0, margin=0.4, distance="cosine"):
    return _tfsim_losses().CircleLoss(distance=distance, gamma=gamma, margin=margin)


def _soft_nearest_neighbor(temperature=1.0, distance="sql2"):
    return _tfsim_losses().SoftNearestNeighborLoss(distance=distance, temperature=temperature)


def _batch_losses():
    from tf_langdml.losses.proxy_losses import ArcFaceLoss, NormalizedSoftmaxLoss, ProxyAnchorLoss, ProxyNCALoss
    from tf_langdml.losses.s2sd import S2SDLoss
    from tf_langdml.losses.tuple_losses import ContrastiveLoss, MarginLoss, NPairLoss, TripletLoss

    return {"margin": MarginLoss, "triplet": TripletLoss, "contrastive": ContrastiveLoss, "npair": NPairLoss,
            "proxy_anchor": ProxyAnchorLoss, "proxy_nca": ProxyNCALoss, "normalized_softmax": NormalizedSoftmaxLoss,
            "arcface": ArcFaceLoss, "s2sd": S2SDLoss}


# TensorFlow-Similarity's losses (MetricLoss objects).
TFSIM_LOSSES = {
    "multisimilarity": _multisimilarity,
    "tfsim_triplet": _mined_pair_loss("TripletLoss"),  # TF-Similarity's: hardest positive, semi-hard negative
    "circle": _circle,
    "pn": _mined_pair_loss("PNLoss"),
    "soft_nearest_neighbor": _soft_nearest_neighbor,
}

# Every loss by name: TF-Similarity's, then the BatchLoss layers (tuple, proxy and S2SD losses).
DML_LOSSES = {**TFSIM_LOSSES, **_batch_losses()}


def dml_loss_arguments(name: str) -> dict[str, Any]:
    """The keyword arguments (with defaults) that ``build_dml_loss(name, ...)`` accepts."""
    factory = _lookup(name)
    return {key: param.default for key, param in inspect.signature(factory).parameters.items()}


def _lookup(name):
    key = str(name).lower()
    if key not in DML_LOSSES:
        raise ValueError(f"Unknown DML loss {name!r}; known losses: {sorted(DML_LOSSES)}.")
    return DML_LOSSES[key]


def build_dml_loss(name: str, xbm_memory_size: int | None = None, xbm_warmup_steps: int = 0, **kwargs: Any) -> keras.losses.Loss:
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
        raise ValueError(
            f"Unknown argument(s) {unknown} for DML loss {name!r}; it accepts {sorted(accepted)}."
        )
    if xbm_memory_size is not None and name.lower() not in TFSIM_LOSSES:
        raise ValueError(
            f"xbm_memory_size works with TensorFlow-Similarity's losses ({sorted(TFSIM_LOSSES)}), not with {name!r}; "
            f"drop xbm_memory_size or pick one of those."
        )
    loss = factory(**kwargs)
    if xbm_memory_size is not None:
        if int(xbm_memory_size) <= 0:
            raise ValueError(f"xbm_memory_size must be a positive number of embeddings, got {xbm_memory_size!r}.")
        if int(xbm_warmup_steps) < 0:
            raise ValueError(f"xbm_warmup_steps must be >= 0, got {xbm_warmup_steps!r}.")
        loss = _tfsim_losses().XBM(loss, memory_size=int(xbm_memory_size), warmup_steps=int(xbm_warmup_steps))
    return loss
