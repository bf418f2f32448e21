"""Atomic writes: the umask's permissions, and leftovers of dead writers removed while live ones are kept."""

import os
import pathlib
import signal
import stat
import subprocess
import sys

import pytest

from tf_langdml import cache
from tf_langdml.cache import atomic_directory, atomic_file, current_umask, remove_dead_partials, write_json

# A writer in another process: it prints its partial folder, then waits for its stdin to close (and then
# finishes normally) or for a kill -9. Importing tf_langdml.cache does not load TensorFlow.
WRITER = """
import sys
from tf_langdml.cache import atomic_directory
with atomic_directory(sys.argv[1]) as temporary:
    (temporary / "part.bin").write_bytes(b"x" * 1000)
    print(temporary, flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def umask():
    """Set the process umask for one test (``umask(0o022)``) and restore the previous one afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def entries(folder):
    return sorted(path.name for path in pathlib.Path(folder).iterdir())


def start_writer(final_path):
    """(process, its partial folder) once the writer is inside atomic_directory."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(final_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline().strip()
    assert line, f"the writer of {final_path} exited with {process.wait()} before writing"
    return process, pathlib.Path(line)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_current_umask_reads_the_umask_without_changing_it(umask, mask):
    umask(mask)
    assert current_umask() == mask
    assert os.umask(mask) == mask  # still set as it was


@pytest.mark.parametrize(
    "mask,folder_mode,file_mode",
    [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640), (0o002, 0o775, 0o664), (0o077, 0o700, 0o600)],
)
def test_atomic_writes_get_the_permissions_of_the_umask(umask, tmp_path, mask, folder_mode, file_mode):
    umask(mask)
    with atomic_directory(tmp_path / "built") as temporary:
        (temporary / "inside.txt").write_text("x")
    write_json(tmp_path / "metrics.json", {"a": 1})
    with atomic_file(tmp_path / "table.npy") as temporary:
        temporary.write_bytes(b"\0")
    assert mode(tmp_path / "built") == folder_mode
    assert mode(tmp_path / "built" / "inside.txt") == file_mode
    assert mode(tmp_path / "metrics.json") == mode(tmp_path / "table.npy") == file_mode
    assert entries(tmp_path) == ["built", "metrics.json", "table.npy"]  # no partial or lock file left


def test_a_failed_write_leaves_neither_folder_nor_lock(tmp_path):
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_directory(tmp_path / "built") as temporary:
            (temporary / "inside.txt").write_text("x")
            raise RuntimeError("half way")
    assert entries(tmp_path) == []


def test_a_killed_writer_is_removed_and_a_live_one_kept(tmp_path):
    dead, dead_partial = start_writer(tmp_path / "1")
    live, live_partial = start_writer(tmp_path / "2")
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert (dead_partial / "part.bin").exists()  # kill -9 left the folder and its lock file
        assert entries(tmp_path) == sorted(
            [dead_partial.name, dead_partial.name + ".lock", live_partial.name, live_partial.name + ".lock"]
        )
        with atomic_directory(tmp_path / "3") as in_this_process:  # a live writer in this process too
            assert remove_dead_partials(tmp_path) == [dead_partial]
            assert remove_dead_partials(tmp_path) == []
        assert entries(tmp_path) == sorted(["3", live_partial.name, live_partial.name + ".lock"])
        assert not in_this_process.exists()
    finally:
        live.stdin.close()
        assert live.wait(timeout=60) == 0
    assert (tmp_path / "2" / "part.bin").read_bytes() == b"x" * 1000  # the live writer finished its folder
    assert entries(tmp_path) == ["2", "3"]


def test_leftovers_without_a_writer_are_removed(tmp_path):
    (tmp_path / ".4.partial-old").mkdir()  # no lock file: written before locks, or its writer is gone
    (tmp_path / ".4.partial-old" / "saved_model.pb").write_bytes(b"x")
    (tmp_path / ".5.partial-renamed.lock").write_bytes(b"")  # killed between the rename and the unlink
    (tmp_path / ".6.partial-file").write_bytes(b"x")  # an atomic_file temporary: not a folder, not touched
    (tmp_path / "7").mkdir()
    removed = remove_dead_partials(tmp_path)
    assert sorted(path.name for path in removed) == [".4.partial-old", ".5.partial-renamed"]
    assert entries(tmp_path) == [".6.partial-file", "7"]


def test_atomic_directory_removes_only_its_own_name_s_dead_leftovers(tmp_path):
    for name in (".model.partial-a", ".model.partial-b", ".model2.partial-c", ".other.partial-d"):
        (tmp_path / name).mkdir()
    with atomic_directory(tmp_path / "model") as temporary:
        (temporary / "weights").write_bytes(b"w")
    assert entries(tmp_path) == [".model2.partial-c", ".other.partial-d", "model"]


def test_a_lock_file_taken_by_a_cleaner_before_it_was_locked_is_replaced(tmp_path, monkeypatch):
    """The window between creating a lock file and locking it: a cleaner may lock and delete it first."""
    real_flock, calls = cache.fcntl.flock, []

    class CleanerFirst:
        LOCK_EX, LOCK_NB = cache.fcntl.LOCK_EX, cache.fcntl.LOCK_NB

        @staticmethod
        def flock(handle, operation):
            calls.append(operation)
            if len(calls) == 1:  # the writer's first lock file: a cleaner gets there first and deletes it
                for lock in tmp_path.glob(".built.partial-*.lock"):
                    lock.unlink()
            return real_flock(handle, operation)

    monkeypatch.setattr(cache, "fcntl", CleanerFirst)
    with atomic_directory(tmp_path / "built") as temporary:
        locks = list(tmp_path.glob(".built.partial-*.lock"))
        assert locks == [pathlib.Path(str(temporary) + ".lock")]  # a second, locked file was made
        assert len(calls) == 2
        monkeypatch.setattr(cache, "fcntl", sys.modules["fcntl"])
        assert remove_dead_partials(tmp_path) == []  # and it is really held
    assert entries(tmp_path) == ["built"]
