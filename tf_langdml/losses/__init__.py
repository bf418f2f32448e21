"""Losses: the language-matching loss, the DML loss registry (TF-Similarity's, tuple, proxy and S2SD losses), miners."""

from tf_langdml.losses.base import BatchLoss, LearningRateGroup
from tf_langdml.losses.dml import DML_LOSSES, TFSIM_LOSSES, build_dml_loss, dml_loss_arguments
from tf_langdml.losses.language_matching import (
    DIRECTIONS,
    LanguageMatchingLoss,
    language_matching_loss,
    normalize_language_table,
)
from tf_langdml.losses.miners import MINERS, mine_triplets
from tf_langdml.losses.proxy_losses import ArcFaceLoss, NormalizedSoftmaxLoss, ProxyAnchorLoss, ProxyNCALoss
from tf_langdml.losses.s2sd import S2SDLoss, similarity_distillation
from tf_langdml.losses.tuple_losses import ContrastiveLoss, MarginLoss, NPairLoss, TripletLoss

__all__ = [
    "ArcFaceLoss",
    "BatchLoss",
    "ContrastiveLoss",
    "LearningRateGroup",
    "MINERS",
    "MarginLoss",
    "NPairLoss",
    "NormalizedSoftmaxLoss",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "S2SDLoss",
    "TFSIM_LOSSES",
    "TripletLoss",
    "mine_triplets",
    "similarity_distillation",
    "DIRECTIONS",
    "DML_LOSSES",
    "LanguageMatchingLoss",
    "build_dml_loss",
    "dml_loss_arguments",
    "language_matching_loss",
    "normalize_language_table",
]
