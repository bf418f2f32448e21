"""Shared fixtures: tiny backbones, a synthetic retrieval problem, eager/graph modes."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tf_langdml  # noqa: E402,F401  (binds tf.keras to tf-keras before TensorFlow loads)
import tensorflow as tf  # noqa: E402


@pytest.fixture(params=["eager", "graph"])
def run_mode(request):
    """Wrap a function so a test runs it eagerly and inside a tf.function."""

    def wrap(function):
        return function if request.param == "eager" else tf.function(function)

    return wrap
