"""Importing tf_langdml binds tf.keras to tf-keras, or says exactly what to do."""

import helpers
import pytest


def run_python(code, returncode=0):
    """``code`` in a fresh interpreter that has not chosen a Keras binding (no TF_USE_LEGACY_KERAS).

    The exit status is asserted unless ``returncode`` is None.
    """
    return helpers.run_python(
        code, env=helpers.quiet_env(drop=["TF_USE_LEGACY_KERAS"]), timeout=300, returncode=returncode
    )


def test_import_sets_legacy_keras_before_tensorflow_loads():
    result = run_python(
        "import os, sys\n"
        "import tf_langdml, tensorflow as tf, tf_keras\n"
        "assert os.environ['TF_USE_LEGACY_KERAS'] == '1'\n"
        "assert tf.keras.__name__.startswith('tf_keras'), tf.keras.__name__\n"
        "assert tf_langdml.keras is tf_keras\n"
        "from tensorflow_similarity.losses import MultiSimilarityLoss\n"
        "assert MultiSimilarityLoss.__mro__[2].__module__.startswith('tf_keras'), MultiSimilarityLoss.__mro__\n"
        "MultiSimilarityLoss()\n"
        "print('ok')\n"
    )
    assert result.stdout.strip().endswith("ok")


def test_tensorflow_imported_first_without_the_variable_is_an_import_error():
    # TensorFlow fixes where `import tensorflow.keras.X` looks when it is imported.
    result = run_python("import tensorflow as tf\nimport tf_langdml\n", returncode=None)
    assert result.returncode != 0
    assert "TensorFlow was imported before tf_langdml without TF_USE_LEGACY_KERAS=1" in result.stderr
    assert "TF_USE_LEGACY_KERAS=1 python your_script.py" in result.stderr


def test_tensorflow_imported_first_with_the_variable_set_is_fine():
    run_python(
        "import os\nos.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
        "import tensorflow as tf\n"
        "import tf_langdml\n"
        "from tensorflow_similarity.losses import MultiSimilarityLoss\n"
        "assert MultiSimilarityLoss.__mro__[2].__module__.startswith('tf_keras'), MultiSimilarityLoss.__mro__\n"
        "assert tf.keras.layers.Layer.__module__.startswith('tf_keras'), tf.keras.layers.Layer\n"
        "import importlib, tf_langdml._keras as binding\n"
        "importlib.reload(binding)  # importing again after TF-Similarity is still fine\n"
    )


def test_keras3_already_bound_is_an_import_error_that_says_what_to_do():
    result = run_python("import tensorflow as tf\ntf.keras.layers.Dense\nimport tf_langdml\n", returncode=None)
    assert result.returncode != 0
    assert "ImportError: tf_langdml needs Keras 2 (tf-keras)" in result.stderr
    assert "keras 3." in result.stderr
    assert "TF_USE_LEGACY_KERAS=1 python your_script.py" in result.stderr
    assert "Import tf_langdml before anything that touches tf.keras" in result.stderr


@pytest.mark.parametrize("module", ["tf_langdml.losses", "tf_langdml.models"])
def test_subpackages_bind_keras_too(module):
    run_python(f"import {module}\nimport tensorflow as tf\nassert tf.keras.__name__.startswith('tf_keras')\n")
