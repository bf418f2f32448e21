"""The local cache: offline models built on first use, and cached embeddings.

Everything ``tf_langdml`` builds or computes once lives under one folder:
``cache_dir()`` is the ``cache_dir`` argument when given, else ``$TF_LANGDML_CACHE``,
else ``$XDG_CACHE_HOME/tf_langdml`` (``~/.cache/tf_langdml``). Writes are atomic:
a folder or file appears complete under its final name or not at all.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import threading
import typing
from collections.abc import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock, so leftovers are never judged dead
    fcntl = None

if typing.TYPE_CHECKING:
    import numpy as np

CACHE_ENV = "TF_LANGDML_CACHE"


def cache_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
    """The cache folder (created if missing): ``path``, else ``$TF_LANGDML_CACHE``, else ``~/.cache/tf_langdml``."""
    if path is None:
        path = os.environ.get(CACHE_ENV)
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "tf_langdml")
    path = pathlib.Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"Cannot create the tf_langdml cache folder {path} ({error}). Pass cache_dir= or set "
            f"{CACHE_ENV} to a writable folder."
        ) from error
    return path


def current_umask() -> int:
    """The process's umask, read without changing it.

    From ``/proc/self/status`` (Linux 4.7+), so no other thread ever sees a changed
    umask; elsewhere by setting and restoring it, serialised with every other caller of
    this function (a thread creating files in that instant by other means could see 022).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()
_PARTIAL = ".partial-"
_LOCK_SUFFIX = ".lock"


def _new_locked_partial(parent: pathlib.Path, name: str) -> tuple[int, pathlib.Path]:
    """(descriptor holding an flock on ``.<name>.partial-XXXX.lock``, the matching folder path, not yet created).

    The lock file is created (and locked) before its folder and removed after it, so a
    partial folder whose lock file is missing or unlocked has no living writer.
    """
    while True:
        handle, lock = tempfile.mkstemp(prefix=f".{name}{_PARTIAL}", suffix=_LOCK_SUFFIX, dir=parent)
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            # A cleaner may have locked and deleted the fresh file before this process locked it.
            if os.path.samestat(os.fstat(handle), os.stat(lock)):
                return handle, pathlib.Path(lock[: -len(_LOCK_SUFFIX)])
        except FileNotFoundError:
            pass
        os.close(handle)


def remove_dead_partials(folder: str | os.PathLike, name: str | None = None) -> list[pathlib.Path]:
    """Remove the leftovers of :func:`atomic_directory` writers in ``folder`` that died (``kill -9``, power loss).

    A writer holds an flock on ``.<name>.partial-XXXX.lock`` for as long as it writes
    ``.<name>.partial-XXXX/``; the kernel releases it when the writer dies. A lock file
    this process can lock belongs to a dead writer: it and its folder are removed. A
    partial folder without a lock file is removed too (a writer creates the lock file
    first and deletes it last). A writer still alive, in this or another process, is
    never touched. ``name``: only the leftovers of that final name (default: all).
    Without ``fcntl`` (Windows) nothing is removed, as nothing can tell alive from dead.

    Returns:
        The partial folders (or lone lock files' folder paths) removed.
    """
    folder = pathlib.Path(folder)
    if fcntl is None or not folder.is_dir():
        return []
    pattern = f".{name}{_PARTIAL}*" if name is not None else f".*{_PARTIAL}*"
    removed = []
    for lock in sorted(folder.glob(pattern + _LOCK_SUFFIX)):
        try:
            handle = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # locked: the writer is alive
            try:
                if not os.path.samestat(os.fstat(handle), os.stat(lock)):
                    continue  # a finished writer removed it and a new one took the name
            except FileNotFoundError:
                continue  # the writer finished meanwhile
            partial = lock.with_name(lock.name[: -len(_LOCK_SUFFIX)])
            shutil.rmtree(partial, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed.append(partial)
        finally:
            os.close(handle)
    for partial in sorted(folder.glob(pattern)):
        if partial.name.endswith(_LOCK_SUFFIX) or not partial.is_dir() or partial.is_symlink():
            continue
        if not partial.with_name(partial.name + _LOCK_SUFFIX).exists():
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial)
    return removed


@contextlib.contextmanager
def atomic_directory(final_path: str | os.PathLike, exist_ok: bool = True) -> Iterator[pathlib.Path]:
    """Yield a temporary folder beside ``final_path``; on success it is renamed to ``final_path``.

    On an exception the temporary folder is removed and nothing appears under
    ``final_path``. If ``final_path`` appeared meanwhile (another process built it),
    that one is kept, or with ``exist_ok=False`` a FileExistsError is raised. The
    folder gets the umask's permissions (0755 under umask 022), as ``mkdir`` would
    give it. While it is written, an flock on a lock file beside it marks it as alive;
    dead writers' leftovers for the same name are removed first (:func:`remove_dead_partials`).
    """
    final_path = pathlib.Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(final_path.parent, final_path.name)
    while True:
        handle, temporary = _new_locked_partial(final_path.parent, final_path.name)
        try:
            temporary.mkdir()  # mode 0o777 & ~umask
            break
        except OSError as error:
            pathlib.Path(str(temporary) + _LOCK_SUFFIX).unlink(missing_ok=True)
            os.close(handle)
            if not isinstance(error, FileExistsError):
                raise
            # else a lockless leftover holds that random name: pick another
    try:
        yield temporary
        try:
            os.rename(temporary, final_path)
        except OSError:
            if not final_path.exists():
                raise
            if not exist_ok:
                raise FileExistsError(
                    f"{final_path} appeared while it was being written; it was left as it is."
                ) from None
    finally:
        try:
            if temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)
            pathlib.Path(str(temporary) + _LOCK_SUFFIX).unlink(missing_ok=True)
        finally:
            os.close(handle)


@contextlib.contextmanager
def atomic_file(final_path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yield a temporary file path beside ``final_path``; on success it replaces ``final_path``.

    The file gets the umask's permissions (0644 under umask 022), as ``open`` would
    give a new file, not ``mkstemp``'s 0600.
    """
    final_path = pathlib.Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{final_path.name}.partial-", dir=final_path.parent)
    os.close(handle)
    temporary = pathlib.Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, final_path)
    finally:
        if temporary.exists():
            temporary.unlink()


def json_safe(value: typing.Any) -> typing.Any:
    """JSON-safe copy: numpy scalars to Python numbers, NaN to null (standard JSON has no NaN)."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str | os.PathLike, payload: typing.Any) -> None:
    """Write ``payload`` (made :func:`json_safe`) as indented UTF-8 JSON, atomically."""
    import json

    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(json_safe(payload), indent=1, ensure_ascii=False), encoding="utf-8")


def read_cached_arrays(
    path: str | os.PathLike, check: Callable[[dict[str, np.ndarray]], None], what: str
) -> dict[str, np.ndarray] | None:
    """The arrays of a cached ``.npz`` (a dict), or None when it is missing.

    ``check(arrays)`` raises when the contents do not fit the request; a file that
    cannot be read or fails the check is not trusted: a warning, and None (recompute).
    """
    import warnings

    import numpy as np

    path = pathlib.Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        check(arrays)
        return arrays
    except Exception as error:  # noqa: BLE001  (any damage means: recompute)
        warnings.warn(f"Ignoring damaged {what} cache file {path} ({error}); recomputing it.", stacklevel=3)
        return None


def write_cached_arrays(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write arrays to a ``.npz`` atomically (also for outputs that are not a cache)."""
    import numpy as np

    with atomic_file(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
