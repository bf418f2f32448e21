"""What an export leaves on disk: the umask's permissions, nothing in $TMPDIR, and no leftovers of a killed export."""

import os
import pathlib
import signal
import stat
import subprocess
import sys
import tempfile

import pytest
from helpers import quiet_env

from tf_langdml.cache import atomic_directory
from tf_langdml.export import export_embedder
from tf_langdml.models import build_embedder

SIZE = 16

# An export that stops, killed, after tf.saved_model.save has written the version's files but before the rename.
KILLED_EXPORT = """
import pathlib, sys, time
import tf_langdml
import tensorflow as tf
from tf_langdml.export import export_embedder
from tf_langdml.models import build_embedder

save = tf.saved_model.save

def save_then_hang(module, folder, signatures):
    save(module, folder, signatures=signatures)
    print(folder, flush=True)
    time.sleep(600)

tf.saved_model.save = save_then_hang
export_embedder(build_embedder("toy_cnn", weights=None, embed_dim=4, input_shape=(16, 16, 3)), sys.argv[1])
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real ``kill -9`` of an export mid-write, then the next export while another is in progress.

    Both exports use a redirected $TMPDIR; the second runs under umask 022. Returns a
    dict of what was seen; a killed export that never got going is recorded (its tests
    fail), not raised, so the permission tests still run.
    """
    folder = tmp_path_factory.mktemp("files")
    model_dir, temporary_dir = folder / "model", folder / "tmp"
    temporary_dir.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_EXPORT, str(model_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=quiet_env(TMPDIR=str(temporary_dir)),
    )
    try:
        written = process.stdout.readline().strip()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    seen = {
        "folder": folder,
        "model_dir": model_dir,
        "temporary_dir": temporary_dir,
        "killed": pathlib.Path(written) if written else None,
        "killed_stderr": process.stderr.read()[-3000:],
        "after_kill": entries(model_dir) if model_dir.exists() else [],
        "killed_had_saved_model": bool(written) and (pathlib.Path(written) / "saved_model.pb").exists(),
    }
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=4, input_shape=(SIZE, SIZE, 3))
    previous_mask, previous_tempdir = os.umask(0o022), tempfile.tempdir
    tempfile.tempdir = str(temporary_dir)
    try:
        with atomic_directory(model_dir / "7") as live:  # an export of version 7 in progress
            (live / "saved_model.pb").write_bytes(b"being written")
            seen["version"] = export_embedder(embedder, model_dir)
            seen["live"], seen["during_live"] = live, entries(model_dir)
    finally:
        os.umask(previous_mask)
        tempfile.tempdir = previous_tempdir
    seen["after"] = entries(model_dir)
    return seen


def entries(folder):
    return sorted(path.name for path in pathlib.Path(folder).iterdir())


def ours(folder):
    """Entries of a temporary folder except AutoGraph's generated sources (TensorFlow's own, removed at exit)."""
    return [name for name in entries(folder) if not name.startswith("__autograph_generated_file")]


def test_an_export_under_umask_022_is_readable_by_every_user(exported):
    """TF Serving often runs as another user: 0755 folders, 0644 files (the umask's; tests/test_cache.py: others)."""
    folder, version = exported["folder"], exported["version"]
    modes = {
        path.relative_to(folder).as_posix(): stat.S_IMODE(path.stat().st_mode)
        for path in [folder / "model", *version.rglob("*"), version, folder / "model" / "7"]
    }
    assert {
        "model",
        "model/1",
        "model/1/saved_model.pb",
        "model/1/assets/tf_langdml_export.json",
        "model/1/variables",
        "model/7",
    } <= set(modes)
    wrong = {
        name: oct(value) for name, value in modes.items() if value != (0o755 if (folder / name).is_dir() else 0o644)
    }
    assert wrong == {}


def test_an_export_stages_nothing_outside_its_model_folder(exported):
    assert ours(exported["temporary_dir"]) == []  # neither the killed export nor the next one used $TMPDIR
    assert ".staging" not in entries(exported["version"])
    assert "tf_langdml_export.json" in entries(exported["version"] / "assets")


def test_a_killed_export_leaves_its_partial_version_and_lock(exported):
    killed = exported["killed"]
    assert killed is not None, exported["killed_stderr"]
    assert killed.parent == exported["model_dir"] and killed.name.startswith(".1.partial-")
    assert exported["killed_had_saved_model"]  # killed mid-export, after the SavedModel's files were written
    assert exported["after_kill"] == [killed.name, killed.name + ".lock"]


def test_the_next_export_removes_a_killed_export_and_keeps_a_live_one(exported):
    live = exported["live"].name
    assert exported["version"].name == "1"
    assert exported["during_live"] == sorted(["1", live, live + ".lock"])  # the killed one's are gone
    assert exported["after"] == ["1", "7"]
    assert (exported["model_dir"] / "7" / "saved_model.pb").read_bytes() == b"being written"
