"""Shared fixtures: tiny backbones, a synthetic retrieval problem, eager/graph modes."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tf_langdml  # noqa: E402,F401  (binds tf.keras to tf-keras before TensorFlow loads)
import tensorflow as tf  # noqa: E402

from shared_artifacts import locked, shared_root  # noqa: E402


@pytest.fixture(params=["eager", "graph"])
def run_mode(request):
    """Wrap a function so a test runs it eagerly and inside a tf.function."""

    def wrap(function):
        return function if request.param == "eager" else tf.function(function)

    return wrap


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Every test writes models and embeddings to a throw-away cache, never to ~/.cache.

    One cache for the whole run, shared by the xdist workers (the cache's writes are atomic), so a model
    built into it (MiniLM, the converted EfficientNet-Lite) is built once, not once per worker.
    """
    path = shared_root(tmp_path_factory) / "tf_langdml_cache"
    path.mkdir(exist_ok=True)
    previous = os.environ.get("TF_LANGDML_CACHE")
    os.environ["TF_LANGDML_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("TF_LANGDML_CACHE", None)
    else:
        os.environ["TF_LANGDML_CACHE"] = previous


@pytest.fixture(scope="session")
def minilm_encoder(isolated_cache):
    """The offline MiniLM encoder, built once per test run into the shared cache (other workers wait, then load it)."""
    from tf_langdml.language import build_text_encoder

    encoder = build_text_encoder("minilm")
    with locked(isolated_cache / "minilm.lock"):
        encoder.encode(["warm"])  # builds the SavedModel on the first call (a complete folder, or waits for one)
    return encoder
