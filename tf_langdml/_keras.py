"""Bind TensorFlow to Keras 2 (tf-keras) before anything imports TensorFlow.

TensorFlow-Similarity 0.17.1 and TF-Hub 0.16 are Keras-2 libraries: under Keras 3
(the default ``tf.keras`` since TF 2.16) ``MultiSimilarityLoss()`` fails with
``Invalid value for argument reduction``. ``TF_USE_LEGACY_KERAS=1`` routes
``tf.keras`` to tf-keras, but TensorFlow reads it only when ``tf.keras`` is first
touched, so this module must run before that happens (DESIGN.md §1).
"""

import os
import sys
import types

os.environ["TF_USE_LEGACY_KERAS"] = "1"

_HOW_TO_FIX = (
    "Import tf_langdml before anything that touches tf.keras (put `import tf_langdml` "
    "first in your script), or start Python with the variable already set: "
    "`TF_USE_LEGACY_KERAS=1 python your_script.py`. tf-keras must be installed: "
    "`pip install 'tf-keras==2.21.*'`."
)


def _bound_keras_module_name():
    """Name of the module TensorFlow has bound as ``tf.keras``; None if not bound yet."""
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is None:
        return None
    bound = tensorflow.__dict__.get("keras")
    if bound is None:
        return None
    try:
        initialized = object.__getattribute__(bound, "_tfll_initialized")
    except AttributeError:
        initialized = True  # the lazy loader has already replaced itself by the module
    if not initialized:
        return None  # tf.keras will resolve on first use, after our variable is set
    return types.ModuleType.__getattribute__(bound, "__name__")


def check_keras_binding():
    """Raise ImportError if ``tf.keras`` is already Keras 3 (or anything but tf-keras)."""
    name = _bound_keras_module_name()
    if name is not None and not name.startswith("tf_keras"):
        keras3 = sys.modules.get("keras")
        version = getattr(keras3, "__version__", "unknown")
        raise ImportError(
            f"tf_langdml needs Keras 2 (tf-keras), but TensorFlow has already bound "
            f"tf.keras to '{name}' (keras {version}): something used tf.keras before "
            f"tf_langdml was imported, without TF_USE_LEGACY_KERAS=1. {_HOW_TO_FIX}"
        )


check_keras_binding()

try:
    import tf_keras as keras  # noqa: E402
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError(f"tf_langdml needs the tf-keras package (Keras 2). {_HOW_TO_FIX}") from error

import tensorflow as tf  # noqa: E402

check_keras_binding()
if not tf.keras.__name__.startswith("tf_keras"):  # pragma: no cover - defensive
    raise ImportError(f"tf.keras resolved to '{tf.keras.__name__}', not tf-keras. {_HOW_TO_FIX}")

__all__ = ["keras", "tf", "check_keras_binding"]
