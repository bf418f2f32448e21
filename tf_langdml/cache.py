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
import typing
from collections.abc import Callable, Iterator

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


@contextlib.contextmanager
def atomic_directory(final_path: str | os.PathLike, exist_ok: bool = True) -> Iterator[pathlib.Path]:
    """Yield a temporary folder beside ``final_path``; on success it is renamed to ``final_path``.

    On an exception the temporary folder is removed and nothing appears under
    ``final_path``. If ``final_path`` appeared meanwhile (another process built it),
    that one is kept, or with ``exist_ok=False`` a FileExistsError is raised.
    """
    final_path = pathlib.Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = pathlib.Path(tempfile.mkdtemp(prefix=f".{final_path.name}.partial-", dir=final_path.parent))
    try:
        yield temporary
        try:
            os.rename(temporary, final_path)
        except OSError:
            if not final_path.exists():
                raise
            if not exist_ok:
                raise FileExistsError(f"{final_path} appeared while it was being written; it was left as it is.")
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final_path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yield a temporary file path beside ``final_path``; on success it replaces ``final_path``."""
    final_path = pathlib.Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{final_path.name}.partial-", dir=final_path.parent)
    os.close(handle)
    temporary = pathlib.Path(temporary)
    try:
        yield temporary
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
