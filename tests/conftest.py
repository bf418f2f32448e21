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


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Every test writes models and embeddings to a throw-away cache, never to ~/.cache."""
    path = tmp_path_factory.mktemp("tf_langdml_cache")
    previous = os.environ.get("TF_LANGDML_CACHE")
    os.environ["TF_LANGDML_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("TF_LANGDML_CACHE", None)
    else:
        os.environ["TF_LANGDML_CACHE"] = previous


@pytest.fixture(scope="session")
def minilm_encoder(isolated_cache):
    """The offline MiniLM encoder, built once per test session into the isolated cache."""
    from tf_langdml.language import build_text_encoder

    return build_text_encoder("minilm")
