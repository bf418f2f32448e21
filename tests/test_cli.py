"""The command line starts without TensorFlow, and is quiet unless --verbose.

Wall time is measured by benchmarks/cli_startup.py (no clock limits in unit tests);
here only the property behind it: --help and config errors never import TensorFlow.
"""

import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
from helpers import CLI_PROBE

ROOT = pathlib.Path(__file__).resolve().parents[1]


def environment():
    return {
        key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "TF_USE_LEGACY_KERAS")
    }


@pytest.mark.parametrize(
    "argv,code",
    [
        (["--help"], 0),
        (["train", "--help"], 0),
        (["demo", "--help"], 0),
        (["train", "--config", "configs/cub200_plg_128.yaml", "--set", "training.epoch=3"], 2),
        (["demo", "--set", "training.epochs=ten"], 2),
    ],
    ids=["help", "train-help", "demo-help", "train-config-error", "demo-config-error"],
)
def test_help_and_config_errors_do_not_import_tensorflow(argv, code):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CLI_PROBE, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment(),
        timeout=120,
    )
    print(f"tf-langdml {' '.join(argv)}: {time.perf_counter() - start:.2f} s wall")  # benchmarks/cli_startup.py
    assert result.stdout.strip().splitlines()[-1] == f"exit {code} tensorflow False", result.stderr[-3000:]
    if code:
        assert "did you mean 'training.epochs'" in result.stderr or "must be an integer" in result.stderr


TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)  # TensorFlow's C++ (absl) log format


def run_train_on_a_missing_folder(tmp_path, *flags):
    """``train`` that loads TensorFlow and TF-Similarity (the config checks), then stops: the image folder is missing."""
    command = [
        sys.executable,
        "-m",
        "tf_langdml",
        *flags,
        "train",
        "--yes",
        "--set",
        f"runs_dir={tmp_path}",
        "--set",
        "data.dataset=folder",
        "--set",
        f"data.data_dir={tmp_path / 'missing'}",
        "--set",
        "model.backbone=toy_cnn",
        "--set",
        "model.weights=null",
        "--set",
        "data.image_size=16",
        "--set",
        "data.batch_size=8",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment(), timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "tf-langdml train: Image folder" in result.stderr and "does not exist" in result.stderr
    return result.stderr


def test_quiet_by_default_and_verbose_shows_tensorflow_s_log(tmp_path):
    quiet = run_train_on_a_missing_folder(tmp_path)
    assert "NMSLIB" not in quiet and "nmslib" not in quiet
    assert not TF_LOG_LINE.search(quiet), quiet
    verbose = run_train_on_a_missing_folder(tmp_path, "--verbose")
    assert TF_LOG_LINE.search(verbose), verbose


def test_export_evaluate_and_index_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    for argv in (["export", "--name", "x"], ["evaluate"], ["index", "--gallery", "test", "--name", "x"]):
        from tf_langdml.cli import main

        assert main([argv[0], "--run", str(tmp_path / "photos"), *argv[1:]]) == 2
        error = capsys.readouterr().err
        assert (
            error == f"tf-langdml {argv[0]}: {tmp_path / 'photos'} is not a run directory (it has no config.yaml); "
            "give the folder `tf-langdml train` wrote, <runs_dir>/<name>.\n"
        )


def test_verbose_adds_the_traceback_and_bugs_propagate(tmp_path, capsys, monkeypatch):
    import errno

    from tf_langdml.cli import main

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))  # --verbose sets it
    assert main(["--verbose", "evaluate", "--run", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("Traceback") and error.endswith(
        f"tf-langdml evaluate: {tmp_path} is not a run directory "
        "(it has no config.yaml); give the folder `tf-langdml "
        "train` wrote, <runs_dir>/<name>.\n"
    )
    # Not something a user can fix: the exception itself, with its traceback (an I/O error of the disk, a bug).
    for bug in (
        RuntimeError("a bug"),
        OSError(errno.EIO, "Input/output error", str(tmp_path / "x")),
        KeyError("missing"),
    ):

        def train(config, verbose=1, bug=bug):
            raise bug

        monkeypatch.setattr("tf_langdml.runs.train.train", train)
        with pytest.raises(type(bug)) as raised:
            main(["train", "--yes", "--set", f"runs_dir={tmp_path}"])
        assert raised.value is bug
    # A permission error names the path and what to do (chmod does not stop root, so it is raised here).
    monkeypatch.setattr(
        "tf_langdml.runs.train.train",
        lambda config, verbose=1: (_ for _ in ()).throw(
            PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "runs"))
        ),
    )
    assert main(["train", "--yes", "--set", f"runs_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err == (
        f"tf-langdml train: {tmp_path / 'runs'}: Permission denied; make it writable "
        "for this user, or choose another location.\n"
    )
