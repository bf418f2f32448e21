"""Bind TensorFlow to Keras 2 (tf-keras) before anything imports TensorFlow.

TensorFlow-Similarity 0.17.1 and TF-Hub 0.16 are Keras-2 libraries: under Keras 3
(the default ``tf.keras`` since TF 2.16) ``MultiSimilarityLoss()`` fails with
``Invalid value for argument reduction``. ``TF_USE_LEGACY_KERAS=1`` routes
``tf.keras`` to tf-keras, but TensorFlow reads it only when ``tf.keras`` is first
touched, so this module must run before that happens (docs/README.md, "Keras 2 and import order").

Importing this module sets the variable and checks that nothing has bound Keras 3
yet, without importing TensorFlow; its ``keras`` and ``tf`` attributes import tf-keras
and TensorFlow on first use (and check again).
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


def _bound_keras_module():
    """(name, is_tf_keras) of the module TensorFlow has bound as ``tf.keras``; None if unbound."""
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
    name = types.ModuleType.__getattribute__(bound, "__name__")
    # After `from tensorflow.keras import X` the module is named "tensorflow.keras"
    # whichever Keras it is, so look at where its file lives.
    path = bound.__dict__.get("__file__") or ""
    return name, name.startswith("tf_keras") or f"{os.sep}tf_keras{os.sep}" in path


def check_keras_binding():
    """Raise ImportError if ``tf.keras`` is, or will resolve to, anything but tf-keras."""
    bound = _bound_keras_module()
    if bound is not None and not bound[1]:
        keras3 = sys.modules.get("keras")
        version = getattr(keras3, "__version__", "unknown")
        raise ImportError(
            f"tf_langdml needs Keras 2 (tf-keras), but TensorFlow has already bound "
            f"tf.keras to '{bound[0]}' (keras {version}): something used tf.keras before "
            f"tf_langdml was imported, without TF_USE_LEGACY_KERAS=1. {_HOW_TO_FIX}"
        )
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None and tensorflow.__dict__.get("_tf_uses_legacy_keras") is False:
        # TensorFlow decides at import time where `import tensorflow.keras.X` looks
        # (TF-Similarity imports that way), so setting the variable now is too late.
        raise ImportError(
            "tf_langdml needs Keras 2 (tf-keras), but TensorFlow was imported before "
            "tf_langdml without TF_USE_LEGACY_KERAS=1, so `tensorflow.keras` already resolves "
            f"to Keras 3. {_HOW_TO_FIX}"
        )


check_keras_binding()


def _load():
    """Import tf-keras and TensorFlow (bound to it), then check the binding again."""
    global keras, tf
    try:
        import tf_keras as keras
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(f"tf_langdml needs the tf-keras package (Keras 2). {_HOW_TO_FIX}") from error

    import tensorflow as tf

    check_keras_binding()


def __getattr__(name):
    # PEP 562: importing this module binds the variable and checks what is already
    # loaded, without loading TensorFlow; ``from tf_langdml._keras import keras`` (or
    # ``tf``) loads tf-keras and TensorFlow then, after the variable is set.
    if name in ("keras", "tf"):
        _load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["keras", "tf", "check_keras_binding"]
