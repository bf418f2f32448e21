"""training.deterministic: the same command twice gives bit-identical weights and metrics."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import h5_arrays, quiet_env, tiny_run_overrides, write_colour_folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_colour_folder(tmp_path_factory.mktemp("determinism_folder"), size=20, noise=40)


@pytest.mark.slow  # two training subprocesses, about a minute; make test-slow
def test_two_deterministic_runs_are_bit_identical(image_folder, tmp_path):
    # A subprocess: op determinism is switched on for the rest of a process.
    runs = []
    for attempt in ("first", "second"):
        overrides = [
            *tiny_run_overrides(image_folder, tmp_path / attempt, "run"),
            "language.guidance=none",
            "loss.language_weight=0",
            "optimizer.learning_rate=0.05",
            "training.epochs=2",
            "training.steps_per_epoch=4",
            "training.eval_every=2",
            "training.deterministic=true",
            "evaluation.semantic=false",
            "evaluation.batch_size=16",
        ]
        command = [sys.executable, "-m", "tf_langdml", "train", "--quiet", "--yes"] + [
            f"--set={item}" for item in overrides
        ]
        result = subprocess.run(command, env=quiet_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(tmp_path / attempt / "run")
    first, second = (h5_arrays(run / "embedder.weights.h5") for run in runs)
    assert first.keys() == second.keys() and len(first) > 2
    for name in first:
        assert np.array_equal(first[name], second[name]), name  # bit for bit, not approximately
    metrics = [json.loads((run / "metrics.json").read_text()) for run in runs]
    assert metrics[0] == metrics[1]
    histories = [json.loads((run / "history.json").read_text()) for run in runs]
    assert histories[0] == histories[1]
