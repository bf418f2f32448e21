"""Losses: the language-matching loss and the TF-Similarity DML loss registry."""

from tf_langdml.losses.dml import DML_LOSSES, build_dml_loss, dml_loss_arguments
from tf_langdml.losses.language_matching import (
    DIRECTIONS,
    LanguageMatchingLoss,
    language_matching_loss,
    normalize_language_table,
)

__all__ = [
    "DIRECTIONS",
    "DML_LOSSES",
    "LanguageMatchingLoss",
    "build_dml_loss",
    "dml_loss_arguments",
    "language_matching_loss",
    "normalize_language_table",
]
