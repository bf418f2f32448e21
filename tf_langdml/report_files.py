"""The files ``tf-langdml report`` reads, read within bounds: a run's or sweep's JSON and config, its event files.

Only regular files are opened; a JSON or YAML file above :data:`MAX_JSON_BYTES` is
refused; an event file is read one record at a time, a record above
:data:`MAX_RECORD_BYTES` is skipped unread, at most :data:`MAX_EVENT_BYTES` of each file
and :data:`MAX_EVENT_FILES` files per log folder are read (the notes say when it stopped
early), and only the newest picture of each image tag is kept. TensorFlow is not
imported: the event files are read as TFRecord frames and parsed with TensorBoard's
protobuf classes. The page made from them: :mod:`tf_langdml.report`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import stat
import struct
from collections.abc import Iterator
from typing import Any

MAX_JSON_BYTES = 16 << 20  # metrics.json is < 1 KB; history.json ~1 KB per epoch; sweep.json ~1 KB per run
MAX_RECORD_BYTES = 64 << 20  # one of our pictures is < 1 MB of PNG; a larger record is skipped, not read
MAX_EVENT_BYTES = 2 << 30  # per event file: a 150-epoch run writes ~1 MB of pictures per epoch
MAX_EVENT_FILES = 32  # per log folder (one per process start of the run)
MAX_PICTURE_PIXELS = 64 << 20  # width x height of an embedded picture (ours: ~2 megapixels)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEADER = struct.Struct("<QI")  # TFRecord frame: uint64 length, uint32 masked CRC of the length


class ReportError(ValueError):
    """A folder or file the report cannot use; names it and what to give instead."""


@dataclasses.dataclass
class Picture:
    """The newest image summary of one tag: its PNG bytes, step and size."""

    tag: str
    step: int
    png: bytes
    width: int
    height: int


@dataclasses.dataclass
class EventScan:
    """What was read from one log folder: the newest picture per image tag and notes on what was skipped."""

    pictures: dict
    notes: list


def _regular_size(path):
    """The size of the regular file ``path``; a FIFO, device or folder is refused before it is opened."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise ReportError(
            f"{path} is not a regular file (a FIFO, device or folder); remove it or replace it with "
            "the file the run wrote."
        )
    return status.st_size


def _open_regular(path):
    """A binary handle on ``path``, opened non-blocking and checked again to be a regular file after opening."""
    _regular_size(path)
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ReportError(f"{path} stopped being a regular file while it was opened; remove it.")
    return os.fdopen(descriptor, "rb")


def read_json(path: str | os.PathLike, limit: int | None = None) -> Any:
    """The JSON value in ``path`` (at most ``limit`` bytes, default :data:`MAX_JSON_BYTES`); ReportError naming it."""
    limit = MAX_JSON_BYTES if limit is None else limit
    size = _regular_size(path)
    if size > limit:
        raise ReportError(
            f"{path} is {size} bytes, more than the {limit} a report reads; it is not a file the run "
            "wrote: move it away."
        )
    with _open_regular(path) as handle:
        data = handle.read(limit + 1)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ReportError(f"{path} is not valid JSON ({error}); rerun the command that wrote it.") from error


def folder_kind(folder: str | os.PathLike) -> str:
    """``"run"`` (it has ``config.yaml``) or ``"sweep"`` (``sweep.json``); anything else is refused in one line."""
    folder = pathlib.Path(folder)
    if not os.path.lexists(folder):
        raise FileNotFoundError(
            f"{folder} does not exist; give a run directory (runs/<name>) or a sweep folder (runs/<name>_sweep)."
        )
    if not folder.is_dir():
        raise ReportError(
            f"{folder} is not a folder; give a run directory (runs/<name>) or a sweep folder (runs/<name>_sweep)."
        )
    if (folder / "sweep.json").exists():
        return "sweep"
    if (folder / "config.yaml").exists():
        return "run"
    runs = sorted(child.name for child in _bounded_children(folder) if (child / "config.yaml").exists())
    if runs:
        raise ReportError(
            f"{folder} has runs but no sweep.json: the sweep has not finished (rerun the sweep command "
            f"to finish it), or report one of its runs, e.g. {folder / runs[0]}."
        )
    raise ReportError(
        f"{folder} is neither a run directory (no config.yaml) nor a sweep folder (no sweep.json); "
        "give runs/<name> or runs/<name>_sweep."
    )


def _bounded_children(folder, limit=1000):
    children = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                children.append(pathlib.Path(entry.path))
            if len(children) >= limit:
                break
    return children


def _records(path: pathlib.Path, notes: list[str]) -> Iterator[bytes]:
    """The serialized events of one TFRecord file, one at a time, within the byte and record bounds."""
    size = _regular_size(path)
    with _open_regular(path) as handle:
        position = 0
        while True:
            if position + _HEADER.size > min(size, MAX_EVENT_BYTES):
                if size > MAX_EVENT_BYTES and position < size:
                    notes.append(f"{path.name}: read the first {MAX_EVENT_BYTES >> 20} MiB of {size >> 20} MiB.")
                return
            header = handle.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return
            length, _ = _HEADER.unpack(header)
            end = position + _HEADER.size + length + 4
            if end > size:
                return  # the last record is still being written (or the file was cut): stop there
            if length > MAX_RECORD_BYTES:
                notes.append(f"{path.name}: skipped a record of {length} bytes (more than {MAX_RECORD_BYTES}).")
                handle.seek(end)
            else:
                data = handle.read(length)
                handle.seek(4, os.SEEK_CUR)
                yield data
            position = end


def _picture(tag, step, tensor):
    """A Picture from an image summary's string tensor ``[width, height, png, ...]``, or None if it is not one."""
    values = tensor.string_val
    if len(values) < 3 or not values[2].startswith(PNG_SIGNATURE):
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(values[2])) as image:  # reads the header only
            width, height = image.size
    except Exception:  # noqa: BLE001  (a PNG that PIL cannot read is left out, not reported as a bug)
        return None
    if width * height > MAX_PICTURE_PIXELS:
        return None
    return Picture(tag, int(step), bytes(values[2]), width, height)


def read_pictures(log_folder: str | os.PathLike) -> EventScan:
    """The newest picture of every image tag in the event files of ``log_folder`` (read as the bounds allow)."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    log_folder = pathlib.Path(log_folder)
    pictures, notes = {}, []
    if not log_folder.is_dir():
        return EventScan(pictures, notes)
    paths = sorted(path for path in log_folder.iterdir() if path.name.startswith("events.out.tfevents."))
    if len(paths) > MAX_EVENT_FILES:
        notes.append(f"{log_folder.name}: read the newest {MAX_EVENT_FILES} of {len(paths)} event files.")
        paths = paths[-MAX_EVENT_FILES:]
    for path in paths:
        for data in _records(path, notes):
            try:
                event = event_pb2.Event.FromString(data)
            except DecodeError:
                notes.append(f"{path.name}: stopped at a record that is not an event.")
                break
            for value in event.summary.value:
                if value.WhichOneof("value") != "tensor" or value.tensor.dtype != 7:  # 7: DT_STRING
                    continue
                previous = pictures.get(value.tag)
                if previous is None or event.step >= previous.step:
                    picture = _picture(value.tag, event.step, value.tensor)
                    if picture is not None:
                        pictures[value.tag] = picture
    return EventScan(pictures, notes)


def read_optional_json(path: pathlib.Path, notes: list[str]) -> dict | None:
    """The JSON object in ``path``; None (and a note) when the run has not written it yet."""
    if not path.exists():
        notes.append(f"{path.name} is not there yet.")
        return None
    value = read_json(path)
    if not isinstance(value, dict):
        raise ReportError(f"{path} holds a JSON {type(value).__name__}, not the object the run writes; move it away.")
    return value


def read_config_text(folder: pathlib.Path) -> str:
    """The text of ``<folder>/config.yaml`` (at most :data:`MAX_JSON_BYTES`; undecodable bytes replaced)."""
    path = folder / "config.yaml"
    size = _regular_size(path)
    if size > MAX_JSON_BYTES:
        raise ReportError(f"{path} is {size} bytes, more than the {MAX_JSON_BYTES} a report reads; move it away.")
    with _open_regular(path) as handle:
        return handle.read(MAX_JSON_BYTES).decode("utf-8", "replace")


__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_EVENT_FILES",
    "MAX_JSON_BYTES",
    "MAX_PICTURE_PIXELS",
    "MAX_RECORD_BYTES",
    "EventScan",
    "Picture",
    "ReportError",
    "folder_kind",
    "read_config_text",
    "read_json",
    "read_optional_json",
    "read_pictures",
]
