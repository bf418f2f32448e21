"""training.deterministic: the same command twice gives bit-identical weights and metrics."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import deterministic_run_overrides, h5_arrays, quiet_env, write_colour_folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_colour_folder(tmp_path_factory.mktemp("determinism_folder"), size=20, noise=40)


@pytest.mark.slow  # two training subprocesses, about a minute; make test-slow
def test_two_deterministic_runs_are_bit_identical(image_folder, tmp_path):
    # A subprocess: op determinism is switched on for the rest of a process.
    runs = []
    for attempt in ("first", "second"):
        overrides = deterministic_run_overrides(image_folder, tmp_path / attempt)
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
