"""tf_langdml: language guidance for deep metric learning in TensorFlow / Keras 2.

Implements Roth, Vinyals, Akata, "Integrating Language Guidance into Vision-based
Deep Metric Learning", CVPR 2022. Importing this package sets
``TF_USE_LEGACY_KERAS=1`` before TensorFlow loads, so ``tf.keras`` is tf-keras.

The names below load on first use (PEP 562), so ``import tf_langdml`` itself does not
import TensorFlow; ``tf_langdml.keras``, ``tf_langdml.LanguageGuidedModel`` and the
rest import their submodule (and TensorFlow, bound to tf-keras) when first touched.
"""

import importlib as _importlib

from tf_langdml import _keras  # noqa: F401  (first: sets TF_USE_LEGACY_KERAS, refuses an already bound Keras 3)

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "keras": "tf_langdml._keras",
    "LanguageGuidedModel": "tf_langdml.models",
    "build_embedder": "tf_langdml.models",
    "LanguageMatchingLoss": "tf_langdml.losses",
    "build_dml_loss": "tf_langdml.losses",
    "language_matching_loss": "tf_langdml.losses",
    "build_text_encoder": "tf_langdml.language",
    "expert_language_table": "tf_langdml.language",
    "pseudo_label_table": "tf_langdml.language",
}
_SUBPACKAGES = ("data", "evaluation", "language", "losses", "models", "runs")

__all__ = sorted([*_EXPORTS, "language", "losses", "models"])


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBPACKAGES:
        value = _importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS, *_SUBPACKAGES})
