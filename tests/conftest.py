"""Shared fixtures: tiny backbones, a synthetic retrieval problem, eager/graph modes."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `make test` runs two xdist workers on two cores, and many tests start a TensorFlow child process besides. With
# TensorFlow's default pools (one thread per core for ops, more between ops) two busy workers put 4+ spinning threads
# on 2 cores; one of each per process leaves the cores to the processes (test_experiment.py with export/test_search.py
# side by side: 190 s -> 113 s). Children inherit it through helpers.quiet_env / user_env (os.environ copies).
# setdefault: a machine that wants other numbers sets them.
for _variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import tf_langdml  # noqa: E402,F401  (after the variables above; binds tf.keras to tf-keras before TensorFlow loads)

# isort: split
import pytest  # noqa: E402  (after tf_langdml)
import tensorflow as tf  # noqa: E402  (after tf_langdml)
from shared_artifacts import locked, shared_root  # noqa: E402  (after tf_langdml)

TESTS = pathlib.Path(__file__).resolve().parent

# The longest test files (make test's durations, 2026-12-05; test_demo's after its toy_cnn budget), longest
# first. `make test` hands whole files to two workers in collection order (--dist loadfile
# --no-loadscope-reorder); a long file handed out last keeps one worker busy while the other idles, so these go
# first and the many short files fill in at the end.
LONGEST_FIRST = [
    "test_experiment.py",
    "export/test_search.py",
    "runs/test_sweep.py",
    "test_demo.py",
    "export/test_export.py",
    "test_keras_binding.py",
    "test_progress_lines.py",
    "data/test_image_folder.py",
    "test_nonfinite_training.py",
    "models/test_learning_rates.py",
    "models/test_loss_state.py",
    "export/test_bad_requests.py",
    "models/test_embedder.py",
    "runs/test_run_dir_lifecycle.py",
    "export/test_export_precision.py",
    "distribute/test_mirrored.py",
    "models/test_language_guided_model.py",
    "data/test_preprocessing.py",
    "test_cli.py",
    "test_report.py",
    "distribute/test_multi_worker.py",
]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Longest files first (:data:`LONGEST_FIRST`), the rest in collection order; each file's tests keep theirs."""
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}

    def file_rank(item):
        path = pathlib.Path(item.path)
        name = path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else str(path)
        return rank.get(name, len(rank))

    items.sort(key=file_rank)  # stable


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
