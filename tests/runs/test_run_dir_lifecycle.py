"""Run directories: created only once config and data are good, one process per run, the config a checkpoint and
the embedder were trained with, atomic weights, one-line errors for files that cannot be written."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml
from helpers import quiet_env, tiny_run_overrides, write_colour_folder

from tf_langdml.cli import main
from tf_langdml.runs import run_dir, trained_embedder
from tf_langdml.runs.checkpoints import CONFIG_VARIABLE, ResumeCheckpoints
from tf_langdml.runs.run_dir import RunDirectoryError
from tf_langdml.runs.schema import ConfigError, config_to_yaml, load_config
from tf_langdml.runs.train import train

NAME = "tiny"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """8 classes x 4 noisy solid-colour 16 x 16 PNGs (4 train classes, 4 test classes)."""
    return write_colour_folder(tmp_path_factory.mktemp("lifecycle_folder"), noise=30, class_name="{0:02d}.class_{0}")


def overrides(folder, runs_dir="runs", steps=3, *extra):
    """A tiny run: toy CNN on 16 x 16 images, no language, a checkpoint every step. ``runs_dir`` relative by default,
    so that a copied tree of runs is the same run in another working directory."""
    return [
        *tiny_run_overrides(folder, runs_dir, NAME),
        "language.guidance=none",
        "loss.language_weight=0",
        "optimizer.learning_rate=0.01",
        "training.epochs=1",
        f"training.steps_per_epoch={steps}",
        "training.eval_every=5",
        "training.checkpoint_every=1",
        "evaluation.batch_size=16",
        "evaluation.semantic=false",
        "evaluation.clustering=false",
        *extra,
    ]


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def runs(image_folder, tmp_path_factory):
    """The history of one run name, trained once per module (tests work on copies):

    1. two starts with a missing ``data.data_dir``: what each raised and what they left (recorded in
       ``<base>/failed_starts.json``, asserted by a test: the fixture never stops on them);
    2. the corrected command, stopped after optimizer step 2 (checkpoints 1, 2): ``<base>/stopped/runs/tiny``;
    3. the same command again, resumed to the end (3 steps): ``<base>/done/runs/tiny``.
    """
    base = tmp_path_factory.mktemp("lifecycle_runs")
    save = ResumeCheckpoints.on_train_batch_end

    def stop_after_step_2(self, batch, logs=None):
        save(self, batch, logs)
        if int(self.model.optimizer.iterations.numpy()) == 2:
            raise _Stop

    previous = os.getcwd()
    os.chdir(base)
    try:
        failed = []
        for _ in range(2):
            try:
                train(load_config(None, overrides(base / "missing")), verbose=0)
                failed.append({"raised": None})
            except Exception as error:  # noqa: BLE001  (recorded; the test says what was expected)
                failed.append({"raised": type(error).__name__, "message": str(error)})
            failed[-1]["left"] = sorted(str(path.relative_to(base)) for path in base.rglob("*"))
        (base / "failed_starts.json").write_text(json.dumps(failed))
        config = load_config(None, overrides(image_folder))
        ResumeCheckpoints.on_train_batch_end = stop_after_step_2
        try:
            with pytest.raises(_Stop):
                train(config, verbose=0)
        finally:
            ResumeCheckpoints.on_train_batch_end = save
        shutil.copytree(base / "runs", base / "stopped" / "runs")
        train(config, verbose=0)
        shutil.move(base / "runs", base / "done" / "runs")
    finally:
        os.chdir(previous)
    return base


def working_copy(runs, which, tmp_path, monkeypatch):
    """A copy of the fixture's ``which`` tree of runs as ``tmp_path/runs``, with ``tmp_path`` the working directory."""
    shutil.copytree(runs / which / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "runs" / NAME


def edit_config(folder, section, key, value):
    path = folder / "config.yaml"
    values = yaml.safe_load(path.read_text())
    values[section][key] = value
    path.write_text(yaml.safe_dump(values, sort_keys=False))


def snapshot(folder):
    """Every file of a run directory (but the lock) and its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != run_dir.LOCK_FILE
    }


# -- creation order ----------------------------------------------------------------------------


def test_a_failed_start_leaves_no_folder_and_the_corrected_command_runs(runs):
    failed = json.loads((runs / "failed_starts.json").read_text())
    assert len(failed) == 2
    for attempt in failed:  # the image folder is missing: refused after the preflight, at the data load
        assert attempt["raised"] == "FileNotFoundError" and "does not exist" in attempt["message"], attempt
        assert attempt["left"] == [], attempt  # no runs/ folder, no runs/tiny/
    # The corrected command, same name, then ran from optimizer step 0 (its first start) to the end.
    folder = runs / "done" / "runs" / NAME
    starts = [json.loads(line)["optimizer_step"] for line in (folder / "run_log.jsonl").read_text().splitlines()]
    assert starts == [0, 2] and json.loads((folder / "metrics.json").read_text())["optimizer_steps"] == 3


# -- the lock ----------------------------------------------------------------------------------

# Another process holding a run's lock as lock_run does (flock on run.lock, its PID inside), without importing
# TensorFlow (seconds per process); that lock_run itself holds against another holder is checked below.
HOLD_THE_LOCK = (
    "import fcntl, os, sys\n"
    "descriptor = os.open(os.path.join(sys.argv[1], 'run.lock'), os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "os.ftruncate(descriptor, 0)\n"
    "os.write(descriptor, f'{os.getpid()}\\n'.encode())\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_second_process_is_refused_naming_the_first_and_kill_9_frees_the_run(image_folder, tmp_path, capsys):
    folder = tmp_path / "runs" / NAME
    folder.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=quiet_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert (folder / run_dir.LOCK_FILE).read_text() == f"{holder.pid}\n"
        with pytest.raises(RunDirectoryError, match=rf"in use by process {holder.pid} .*kill {holder.pid}"):
            with run_dir.lock_run(folder):
                pass
        # The same through `tf-langdml train`: one line, status 2, and nothing of the run is written.
        argv = ["train", "--quiet", "--yes"] + [f"--set={item}" for item in overrides(image_folder, tmp_path / "runs")]
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"is in use by process {holder.pid}" in error, error
        assert sorted(path.name for path in folder.iterdir()) == [run_dir.LOCK_FILE]
    finally:
        holder.kill()  # SIGKILL: the holder cannot release anything itself
        holder.wait()
    assert holder.returncode == -9
    with run_dir.lock_run(folder):  # the kernel released the dead process's lock
        assert (folder / run_dir.LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunDirectoryError, match=f"in use by process {os.getpid()}"):
            with run_dir.lock_run(folder):  # a second holder in this process is refused as well
                pass
    with run_dir.lock_run(folder):  # released at the end of the block
        pass


# -- config identity ---------------------------------------------------------------------------


def sha256_of(values):
    return hashlib.sha256(json.dumps(values, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_the_config_sha256_is_recorded_at_start_in_each_checkpoint_and_beside_the_weights(runs):
    folder = runs / "done" / "runs" / NAME
    values = yaml.safe_load((folder / "config.yaml").read_text())
    expected = sha256_of(values)  # computed here independently of run_dir.config_sha256
    starts = [json.loads(line) for line in (folder / "run_log.jsonl").read_text().splitlines()]
    assert [(start["optimizer_step"], start["config_sha256"]) for start in starts] == [(0, expected), (2, expected)]
    assert all(start["config"] == values for start in starts)
    checkpoints = sorted((folder / "checkpoints").glob("ckpt-*.index"))
    assert [path.name for path in checkpoints] == ["ckpt-2.index", "ckpt-3.index"]
    for path in checkpoints:
        reader = tf.train.load_checkpoint(str(path).removesuffix(".index"))
        assert reader.get_tensor(CONFIG_VARIABLE).decode() == expected
    record = json.loads((folder / run_dir.EMBEDDER_CONFIG).read_text())
    assert record == {"config_sha256": expected, "optimizer_step": 3, "config": values}


def test_a_resume_with_an_edited_config_yaml_is_refused_naming_the_keys(runs, image_folder, tmp_path, monkeypatch):
    folder = working_copy(runs, "stopped", tmp_path, monkeypatch)
    edit_config(folder, "optimizer", "learning_rate", 0.5)
    edit_config(folder, "training", "checkpoint_every", 7)
    before = snapshot(folder)
    edited = load_config(
        None, overrides(image_folder, "runs", 3, "optimizer.learning_rate=0.5", "training.checkpoint_every=7")
    )
    with pytest.raises(
        ConfigError,
        match=r"Checkpoint ckpt-\d.*changed: optimizer.learning_rate, "
        r"training.checkpoint_every\)",
    ):
        train(edited, verbose=0)
    assert snapshot(folder) == before  # refused before anything was written


def test_a_finished_run_with_an_edited_config_yaml_is_refused(runs, image_folder, tmp_path, monkeypatch):
    folder = working_copy(runs, "done", tmp_path, monkeypatch)
    unedited = train(load_config(None, overrides(image_folder)), verbose=0)
    assert unedited == json.loads((folder / "metrics.json").read_text())
    edit_config(folder, "optimizer", "learning_rate", 0.5)
    with pytest.raises(ConfigError, match=r"embedder.weights.h5 .*changed: optimizer.learning_rate\)"):
        train(load_config(None, overrides(image_folder, "runs", 3, "optimizer.learning_rate=0.5")), verbose=0)


# Keys added with optimizer.head_learning_rate (issue 28 item 1); a run started before has none of them.
ADDED_KEYS = [
    "optimizer.head_learning_rate",
    "optimizer.schedule",
    "optimizer.decay_epochs",
    "optimizer.decay_factor",
    "training.warmup_epochs",
]


def as_if_written_before(folder, keys, yaml_too=True):
    """Rewrite a run as one written before ``keys`` existed: its config without them in run_log.jsonl's start lines
    and (``yaml_too``) config.yaml, and that config's SHA-256 in the start lines and in every checkpoint."""
    values = yaml.safe_load((folder / "config.yaml").read_text())
    for key in keys:
        section, name = key.split(".")
        del values[section][name]
    sha = sha256_of(values)
    if yaml_too:
        (folder / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    log = folder / "run_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    for record in records:
        if record.get("event") == "start":
            record.update(config=values, config_sha256=sha)
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    for index in (folder / "checkpoints").glob("ckpt-*.index"):
        prefix = str(index).removesuffix(".index")
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_shape_map())
        tensors = [tf.constant(sha) if name == CONFIG_VARIABLE else reader.get_tensor(name) for name in names]
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
        assert tf.train.load_checkpoint(prefix).get_tensor(CONFIG_VARIABLE).decode() == sha


def test_a_run_started_before_keys_were_added_resumes_with_them_at_their_defaults(
    runs, image_folder, tmp_path, monkeypatch
):
    folder = working_copy(runs, "stopped", tmp_path, monkeypatch)
    as_if_written_before(folder, ADDED_KEYS)
    train(load_config(None, overrides(image_folder)), verbose=0)
    assert sorted(path.name for path in (folder / "checkpoints").glob("ckpt-*.index"))[-1] == "ckpt-3.index"


@pytest.mark.parametrize("where", ["config.yaml", "checkpoint"])
def test_a_run_started_before_a_key_now_set_off_its_default_is_refused_naming_it(
    runs, image_folder, tmp_path, monkeypatch, where
):
    """config.yaml without the key: check_config refuses; config.yaml edited to the new value (the start lines
    and the checkpoints without the key): check_checkpoints refuses. Either names only that key."""
    folder = working_copy(runs, "stopped", tmp_path, monkeypatch)
    as_if_written_before(folder, ADDED_KEYS, yaml_too=where == "config.yaml")
    if where == "checkpoint":
        edit_config(folder, "optimizer", "head_learning_rate", 0.02)
    before = snapshot(folder)
    edited = load_config(None, overrides(image_folder, "runs", 3, "optimizer.head_learning_rate=0.02"))
    what = "Run directory" if where == "config.yaml" else r"Checkpoint ckpt-\d"
    with pytest.raises(ConfigError, match=what + r".*\(changed: optimizer.head_learning_rate\)"):
        train(edited, verbose=0)
    assert snapshot(folder) == before


HEAD = "head_learning_rate"  # the schema's optimizer.head_learning_rate defaults to None


@pytest.mark.parametrize(
    ("old", "new", "blocking"),
    [
        ({"lr": 1}, {"lr": 1, HEAD: None}, []),  # added since, at its default
        ({"lr": 1}, {"lr": 1, "schedule": "constant", "decay_epochs": []}, []),  # more of them
        ({"lr": 1}, {"lr": 1, "schedule": "step"}, ["schedule"]),  # added since, set
        ({"lr": 1}, {"lr": 1, HEAD: 0.1}, [HEAD]),  # added since, set
        ({HEAD: 0.1}, {HEAD: None}, [HEAD]),  # changed
        ({"lr": 1, "y": 2}, {"lr": 1}, ["y"]),  # removed
        ({"lr": 1}, {"lr": 1, "unknown": None}, ["unknown"]),  # not a schema key
    ],
)
def test_blocking_keys_leave_out_only_keys_added_at_their_default(old, new, blocking):
    keys = run_dir.blocking_keys({"optimizer": old}, {"optimizer": new})
    assert keys == [f"optimizer.{key}" for key in blocking]


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--name", "x", "--saved-models", "saved"],
        ["evaluate"],
        ["index", "--gallery", "test", "--name", "x", "--saved-models", "saved"],
    ],
)
def test_export_evaluate_and_index_refuse_an_edited_image_size(runs, tmp_path, monkeypatch, capsys, command):
    folder = working_copy(runs, "done", tmp_path, monkeypatch)
    edit_config(folder, "data", "image_size", 32)
    assert main([command[0], "--run", str(folder), *command[1:]]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "changed: data.image_size)" in error, error
    assert not (tmp_path / "saved").exists()


# -- atomic weights ----------------------------------------------------------------------------


class _EmbedderHolder:
    def __init__(self, embedder):
        self.embedder = embedder


def test_embedder_weights_are_written_atomically(tmp_path):
    from tf_langdml.models import build_embedder

    embedder = build_embedder("toy_cnn", weights=None, embed_dim=4, input_shape=(16, 16, 3))
    trained_embedder.save_embedder(tmp_path, _EmbedderHolder(embedder), 5)
    weights = tmp_path / "embedder.weights.h5"
    reloaded = build_embedder("toy_cnn", weights=None, embed_dim=4, input_shape=(16, 16, 3))
    reloaded.load_weights(str(weights))
    for saved, loaded in zip(embedder.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(saved, loaded)
    complete = weights.read_bytes()

    def dies_half_way(path, **kwargs):  # a kill or a full disk in the middle of writing
        with open(path, "wb") as handle:
            handle.write(complete[: len(complete) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    embedder.save_weights = dies_half_way
    with pytest.raises(OSError, match="No space left") as error:
        trained_embedder.save_embedder(tmp_path, _EmbedderHolder(embedder), 6)
    assert error.value.filename == str(weights)  # named for the one-line message
    assert weights.read_bytes() == complete  # the previous file, whole
    assert sorted(path.name for path in tmp_path.iterdir()) == ["embedder.weights.h5"]


# -- one-line errors for what cannot be written -------------------------------------------------


def test_a_runs_dir_that_cannot_be_created_is_one_line(image_folder, tmp_path, capsys):
    # A path below a regular file: refused by the kernel for every user, root included (chmod 0o500 is not: the
    # tests may run as root, for whom permission bits do not stop writes).
    (tmp_path / "a_file").write_text("not a folder")
    runs_dir = tmp_path / "a_file" / "runs"
    argv = ["train", "--quiet", "--yes"] + [f"--set={item}" for item in overrides(image_folder, runs_dir, 1)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert error.startswith(f"tf-langdml train: {runs_dir}") and "a part of that path is a file" in error


def test_a_checkpoints_folder_that_cannot_be_written_is_one_line(image_folder, tmp_path, capsys):
    config = load_config(None, overrides(image_folder, tmp_path / "runs", 1))
    folder = tmp_path / "runs" / NAME
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config_to_yaml(config))
    (folder / "checkpoints").write_text("a file where the checkpoints folder goes")
    argv = ["train", "--quiet", "--yes"] + [f"--set={item}" for item in overrides(image_folder, tmp_path / "runs", 1)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert f"Cannot write checkpoint ckpt-1 to {folder / 'checkpoints'}" in error
    assert not (folder / "metrics.json").exists()


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    # A real ENOSPC from the kernel (/dev/full), raised by a write that names no file; run_dir.naming adds the path.
    target = tmp_path / "runs" / NAME / "metrics.json"

    def fills_the_disk(config, verbose=1):
        with run_dir.naming(target), open("/dev/full", "w") as handle:
            handle.write("{}")
        return {}

    monkeypatch.setattr("tf_langdml.runs.train.train", fills_the_disk)
    assert main(["train", "--yes", "--set", f"runs_dir={tmp_path / 'runs'}", "--set", f"name={NAME}"]) == 2
    error = capsys.readouterr().err
    assert (
        error == f"tf-langdml train: {target}: No space left on device; free space on that disk, or choose a "
        "location on another one.\n"
    )


def test_a_planted_config_yaml_goes_through_the_config_loader(tmp_path):
    """A run folder's config.yaml is read like a config file: an alias bomb there is refused at once, not expanded."""
    import time

    config = load_config(None, [f"name={NAME}", f"runs_dir={tmp_path}"])
    folder = tmp_path / NAME
    folder.mkdir()
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
    )
    (folder / "config.yaml").write_text(bomb)  # 10**9 leaves if expanded
    for read in (
        lambda: run_dir.check_config(config),
        lambda: run_dir.read_config(folder),
        lambda: trained_embedder.check_embedder_config(folder),
    ):
        (folder / run_dir.EMBEDDER_CONFIG).write_text(json.dumps({"config_sha256": "0" * 64, "config": {}}))
        started = time.perf_counter()
        with pytest.raises(ConfigError, match="anchor"):
            read()
        assert time.perf_counter() - started < 1.0
