"""What the xdist workers of one pytest run share: a folder, and an ``fcntl`` lock to build into it once.

A session fixture runs once per worker process; to build an expensive artifact once per run, a
fixture builds it into :func:`shared_root` while holding :func:`locked` on a file there, and a
worker that finds it built (after waiting for the lock) reuses it (tests/conftest.py: the cache).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
from collections.abc import Iterator

import pytest


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
