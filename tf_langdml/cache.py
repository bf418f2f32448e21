"""The local cache: offline models built on first use, and cached embeddings.

Everything ``tf_langdml`` builds or computes once lives under one folder:
``cache_dir()`` is the ``cache_dir`` argument when given, else ``$TF_LANGDML_CACHE``,
else ``$XDG_CACHE_HOME/tf_langdml`` (``~/.cache/tf_langdml``). Writes are atomic:
a folder or file appears complete under its final name or not at all.
"""

import contextlib
import os
import pathlib
import shutil
import tempfile

CACHE_ENV = "TF_LANGDML_CACHE"


def cache_dir(path=None):
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
def atomic_directory(final_path):
    """Yield a temporary folder beside ``final_path``; on success it is renamed to ``final_path``.

    On an exception the temporary folder is removed and nothing appears under
    ``final_path``. If ``final_path`` appeared meanwhile (another process built it),
    that one is kept.
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
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final_path):
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


def read_cached_arrays(path, check, what):
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


def write_cached_arrays(path, **arrays):
    """Write arrays to a ``.npz`` atomically."""
    import numpy as np

    with atomic_file(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
