"""tf_langdml: language guidance for deep metric learning in TensorFlow / Keras 2.

Implements Roth, Vinyals, Akata, "Integrating Language Guidance into Vision-based
Deep Metric Learning", CVPR 2022. Importing this package sets
``TF_USE_LEGACY_KERAS=1`` before TensorFlow loads, so ``tf.keras`` is tf-keras.
"""

from tf_langdml._keras import keras  # noqa: F401  (must run before TensorFlow loads)
from tf_langdml import language, losses, models
from tf_langdml.language import build_text_encoder, expert_language_table, pseudo_label_table
from tf_langdml.losses import LanguageMatchingLoss, build_dml_loss, language_matching_loss
from tf_langdml.models import LanguageGuidedModel, build_embedder

__version__ = "0.1.0"

__all__ = [
    "LanguageGuidedModel",
    "LanguageMatchingLoss",
    "build_dml_loss",
    "build_embedder",
    "build_text_encoder",
    "expert_language_table",
    "keras",
    "language",
    "language_matching_loss",
    "losses",
    "models",
    "pseudo_label_table",
]
