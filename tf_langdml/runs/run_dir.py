"""A run directory: its layout, its lock, its config identity and the records it keeps.

The resume state (``checkpoints/``) is :mod:`~tf_langdml.runs.checkpoints`; the trained
embedder (``embedder.weights.h5``, saved and restored) is :mod:`~tf_langdml.runs.trained_embedder`.

``<runs_dir>/<name>/``:

- ``config.yaml``: the resolved config (a restart must resolve to the same one);
- ``run.lock``: held (``fcntl.flock``) by the one process training the run, and holding
  its PID; a second ``train`` of the run is refused naming that PID. The kernel releases
  the lock when the process ends, ``kill -9`` included, so no lock outlives its process;
- ``language_table.npy``, ``train_class_names.json`` and, for PLG, ``pseudo_labels.json``;
- ``logs/``: TensorBoard (``train/``, ``validation/``, the embedding projector);
- ``checkpoints/``: the resume state (model, optimizer, step), every
  ``training.checkpoint_every`` optimizer steps and when training ends;
- ``history.json``: per-epoch logs; ``embedder.weights.h5``: the final embedder (written
  atomically), with ``embedder.config.json`` beside it: the resolved config it was
  trained with and that config's SHA-256 (:func:`config_sha256`);
- ``run_log.jsonl``: one line per start of the process, with the optimizer step it
  began at and the dtype policy it computes in (``precision``, ``precision_reason``:
  ``training.precision`` resolved at the first start, ``auto`` included, and kept by
  every restart and by ``evaluate``), the resolved config and its SHA-256
  (``config``, ``config_sha256``), and a ``{"event": "nonfinite", ...}`` line when a step
  is not finite;
- ``metrics.json``: written last, atomically: the run is complete when it exists.

Nothing written holds NaN or Inf: a checkpoint, a ``history.json`` line or
``embedder.weights.h5`` whose values are not all finite is refused with
:class:`~tf_langdml.models.NonFiniteLossError`, and a restart resumes from the newest
checkpoint whose variables are all finite (an older one, or a fresh start, with a
message, when the newest is not).

Config identity: every checkpoint holds the SHA-256 of the config it was trained with (a
string variable, ``config_sha256``, saved with the model), as does
``embedder.config.json``. A resume whose config differs from its checkpoints', and an
``export``, ``evaluate`` or ``index`` whose ``config.yaml`` differs from the one the
embedder was trained with (``config.yaml`` edited afterwards), is refused with a
ConfigError naming the changed keys. Runs written before these records existed are
used without the check.

Order: :func:`check_config` compares an existing ``config.yaml`` before anything is
written; :func:`open_run` creates the folder, takes the lock and writes ``config.yaml``;
``train`` calls it only once the data has loaded, so a start that fails on its config or
its data leaves no folder behind.

A file of the run that cannot be written (permissions, a full disk, a path through a
regular file) raises OSError carrying that file's path (a checkpoint:
:class:`RunDirectoryError` naming the folder); the command line prints it as one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import pathlib
import time
import typing
from collections.abc import Iterator, Sequence

import numpy as np

from tf_langdml._keras import keras
from tf_langdml.cache import atomic_file, json_safe, write_json
from tf_langdml.models.learning_rates import base_learning_rate
from tf_langdml.models.nonfinite import NonFiniteLossError
from tf_langdml.runs.schema import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    read_yaml,
)

if typing.TYPE_CHECKING:
    from tf_langdml.language.language_table import LanguageTable

LOCK_FILE = "run.lock"
EMBEDDER_CONFIG = "embedder.config.json"
CLASS_NAMES_FILE = "train_class_names.json"
RUN_FILES = (
    "config.yaml",
    "language_table.npy",
    CLASS_NAMES_FILE,
    "history.json",
    "embedder.weights.h5",
    "metrics.json",
)
PSEUDO_LABELS = "pseudo_labels.json"


def _flatten(values, prefix=""):
    flat = {}
    for key, value in (values or {}).items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class RunDirectoryError(Exception):
    """A run directory that cannot be used as asked (in use by another process, not writable); names it and the fix."""


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError that carries no file name (a failed write, ENOSPC) with ``path`` as its file name."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno is not None:
            raise OSError(
                error.errno, error.strerror, str(path)
            ) from error  # (the errno's subclass, e.g. PermissionError)
        raise


def run_folder(config: ExperimentConfig) -> pathlib.Path:
    """``<runs_dir>/<name>`` (not created)."""
    return pathlib.Path(config.runs_dir) / config.name


def config_sha256(values: dict) -> str:
    """SHA-256 (hex) of a resolved config's nested dict, in canonical JSON (sorted keys): the config's identity."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def changed_keys(old: dict | None, new: dict | None) -> list[str]:
    """The dotted keys whose values differ between two nested config dicts, or that only one has (sorted)."""
    before, after = _flatten(old), _flatten(new)
    return [key for key in sorted(set(before) | set(after)) if key not in before or before[key] != after.get(key)]


def blocking_keys(old: dict | None, new: dict) -> list[str]:
    """The changed keys from a run's recorded config ``old`` to ``new`` that refuse a resume (sorted).

    A key absent from ``old`` whose value in ``new`` is the schema's default does not: it was
    added since the run started and left at its default (the run trained as if it had it).
    """
    defaults, before, after = _flatten(config_to_dict(ExperimentConfig())), _flatten(old), _flatten(new)
    return [
        key
        for key in changed_keys(old, new)
        if key in before or key not in defaults or key not in after or after[key] != defaults[key]
    ]


def check_config(config: ExperimentConfig) -> tuple[pathlib.Path, bool]:
    """Raise ConfigError when ``<runs_dir>/<name>/config.yaml`` holds another config; writes nothing.

    A ``config.yaml`` written before keys were added, which lacks only keys now at their
    default (:func:`blocking_keys`), is the same config; it stays as written.
    Returns the run folder and whether its ``config.yaml`` exists.
    """
    folder = run_folder(config)
    existing = folder / "config.yaml"
    if not existing.exists():
        return folder, False
    previous = read_yaml(existing)  # the config loader: bounded, no aliases, regular files only
    if blocking_keys(previous, config_to_dict(config)):
        raise ConfigError(
            f"Run directory {folder} holds a run with another config "
            f"(changed: {', '.join(blocking_keys(previous, config_to_dict(config)))}). "
            "Restart with the same config to resume it, or give this run another name (--set name=...)."
        )
    return folder, True


@contextlib.contextmanager
def lock_run(folder: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Hold ``<folder>/run.lock`` (``fcntl.flock``, exclusive) with this process's PID in it, or refuse.

    A second holder (another process, or another open of the file in this one) gets a
    RunDirectoryError naming the PID the file holds. Released when the block ends or
    the process dies; the file stays (the kernel lock, not the file, is what counts).
    """
    path = pathlib.Path(folder) / LOCK_FILE
    with naming(path):
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "(PID not yet written)"
            raise RunDirectoryError(
                f"Run directory {folder} is in use by process {holder} (it holds {path}); wait for it to end or stop "
                f"it (kill {holder}), then run this command again."
            ) from None
        with naming(path):
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(descriptor)  # releases the lock


@contextlib.contextmanager
def open_run(config: ExperimentConfig) -> Iterator[pathlib.Path]:
    """Create ``<runs_dir>/<name>``, hold its lock, and write ``config.yaml`` (once); yields the folder.

    The config is compared again under the lock: another process may have started the
    run between :func:`check_config` and here.
    """
    folder = run_folder(config)
    with naming(folder):
        folder.mkdir(parents=True, exist_ok=True)
    with lock_run(folder):
        _, exists = check_config(config)
        if not exists:
            with naming(folder / "config.yaml"), atomic_file(folder / "config.yaml") as temporary:
                temporary.write_text(config_to_yaml(config), encoding="utf-8")
        yield folder


def prepare(config: ExperimentConfig) -> pathlib.Path:
    """``<runs_dir>/<name>``, created with ``config.yaml``; a different config already there is an error.

    Takes no lock (:func:`open_run` does); for callers that only need the folder.
    """
    check_config(config)
    with open_run(config) as folder:
        return folder


def read_config(folder: str | os.PathLike) -> ExperimentConfig:
    """The :class:`~tf_langdml.runs.schema.ExperimentConfig` of a run directory."""
    return config_from_dict(read_yaml(pathlib.Path(folder) / "config.yaml"))


def read_metrics(folder: str | os.PathLike) -> dict | None:
    """The contents of ``metrics.json``; None while the run is not complete."""
    path = pathlib.Path(folder) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_metrics(folder: str | os.PathLike, metrics: dict) -> dict:
    """Write ``metrics.json`` (atomically; NaN as null) and return what it holds: the run is complete."""
    metrics = json_safe(metrics)
    with naming(pathlib.Path(folder) / "metrics.json"):
        write_json(pathlib.Path(folder) / "metrics.json", metrics)
    return metrics


def write_class_names(folder: str | os.PathLike, class_names: Sequence[str]) -> None:
    """``train_class_names.json``: the training classes' names, by label (read by :func:`train_class_names`)."""
    with naming(pathlib.Path(folder) / CLASS_NAMES_FILE):
        write_json(pathlib.Path(folder) / CLASS_NAMES_FILE, list(class_names))


def train_class_names(folder: str | os.PathLike) -> list[str] | None:
    """The training classes a run directory recorded (``train_class_names.json``), or None."""
    names_file = pathlib.Path(folder) / CLASS_NAMES_FILE
    return json.loads(names_file.read_text()) if names_file.exists() else None


def write_language_table(folder: str | os.PathLike, table: np.ndarray | LanguageTable) -> None:
    """``language_table.npy``: the (C|N, K, D) float32 rows (of an array or a LanguageTable)."""
    path = pathlib.Path(folder) / "language_table.npy"
    with naming(path), atomic_file(path) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, np.asarray(getattr(table, "rows", table), dtype=np.float32))


def log_event(folder: str | os.PathLike, record: dict) -> None:
    """Append one line to ``run_log.jsonl``."""
    path = pathlib.Path(folder) / "run_log.jsonl"
    with naming(path), open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**record, "time": time.time()}) + "\n")


def _log_records(folder):
    path = pathlib.Path(folder) / "run_log.jsonl"
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue


def recorded_precision(folder: str | os.PathLike) -> tuple[str, str] | None:
    """``(policy, reason)`` the run's first start recorded in ``run_log.jsonl``; None before that (or for an older run)."""
    for record in _log_records(folder):
        if record.get("event") == "start" and record.get("precision"):
            return record["precision"], record.get("precision_reason", "")
    return None


def recorded_config(folder: str | os.PathLike, sha256: str) -> dict | None:
    """The resolved config whose SHA-256 is ``sha256``, from a start line of ``run_log.jsonl`` (None if absent)."""
    for record in _log_records(folder):
        if record.get("event") == "start" and record.get("config_sha256") == sha256 and "config" in record:
            return record["config"]
    return None


def refuse_other_config(
    folder: str | os.PathLike, what: str, recorded_sha256: str, recorded_values: dict | None, values: dict, fix: str
) -> typing.NoReturn:
    """Raise ConfigError: ``what`` in ``folder`` was trained with another config (changed keys, else its SHA-256).

    The keys named are :func:`blocking_keys` (those added since at their default only if no other)."""
    changed = None
    if recorded_values is not None:  # (keys added at their default only if nothing else changed)
        changed = blocking_keys(recorded_values, values) or changed_keys(recorded_values, values)
    keys = ", ".join(changed) if changed else f"not recorded; it had config SHA-256 {recorded_sha256[:12]}"
    raise ConfigError(
        f"{what} in {folder} was trained with another config than config.yaml now holds (changed: {keys}). {fix}"
    )


def log_nonfinite(folder: str | os.PathLike, model: keras.Model, error: NonFiniteLossError) -> None:
    """The ``{"event": "nonfinite", "optimizer_step": N, ...}`` line of a NonFiniteLossError."""
    step = error.step if error.step is not None else int(model.optimizer.iterations.numpy())
    values = {
        key: value if not isinstance(value, float) or math.isfinite(value) else str(value)
        for key, value in error.values.items()
    }
    log_event(
        folder,
        {
            "event": "nonfinite",
            "optimizer_step": int(step),
            **values,
            "learning_rate": error.learning_rate,
            "message": str(error),
        },
    )


class HistoryFile(keras.callbacks.Callback):
    """``history.json``: the logs of each finished epoch, keyed by epoch (a repeated epoch overwrites).

    Under a learning-rate schedule (``optimizer.schedule: step``) also ``learning_rate``: the base
    rate of the epoch's last optimizer step (what TensorBoard's per-step ``learning_rate`` shows for it).
    """

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__()
        self.path = path
        self.epochs = json.loads(path.read_text()) if path.exists() else {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        line = {key: float(value) for key, value in (logs or {}).items()}
        if isinstance(base_learning_rate(self.model.optimizer), keras.optimizers.schedules.LearningRateSchedule):
            line["learning_rate"] = float(self.model.optimizer.learning_rate)  # the last applied step's
        bad = sorted(key for key, value in line.items() if not math.isfinite(value))
        if bad:
            step = int(self.model.optimizer.iterations.numpy())
            raise NonFiniteLossError(
                f"Not writing epoch {epoch + 1} to {self.path.name}: {', '.join(bad)} "
                f"{'is' if len(bad) == 1 else 'are'} NaN or Inf (optimizer step {step}).",
                step=step,
            )
        self.epochs[str(epoch + 1)] = line
        with naming(self.path):
            write_json(self.path, self.epochs)
