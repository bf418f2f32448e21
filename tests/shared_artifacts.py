"""Expensive test artifacts built once per pytest session and shared by every xdist worker of it.

A session fixture runs once per worker process; an artifact built through :func:`build_once`
is built by the first worker that asks for it, under an ``fcntl`` lock on a file in a folder
all workers of the run share, while the others wait and then reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil
from collections.abc import Callable, Iterator

import pytest

DONE = ".built"


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The folder every worker of this pytest run shares (the run's base temp folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    # xdist gives each worker <run's basetemp>/popen-gwN; the run's own folder is its parent. Without xdist the
    # parent is shared with earlier sessions, so the session's own folder is used.
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared_artifacts"
    root.mkdir(exist_ok=True)
    return root


@contextlib.contextmanager
def locked(path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if missing) for the ``with`` block."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """``<shared root>/<name>``, filled by ``build(folder)`` by the first worker to ask; the others wait and reuse it.

    A build that raised leaves no marker, so the next caller clears the folder and builds again (and sees the error).
    """
    folder = shared_root(tmp_path_factory) / name
    with locked(folder.with_name(name + ".lock")):
        if not (folder / DONE).exists():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            (folder / DONE).touch()
    return folder


def copy_of(artifact: pathlib.Path, destination: pathlib.Path) -> pathlib.Path:
    """A private copy of a shared artifact (for a test that writes into it), without the build marker."""
    shutil.copytree(artifact, destination, ignore=shutil.ignore_patterns(DONE))
    return destination
