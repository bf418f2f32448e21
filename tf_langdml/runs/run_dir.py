"""A run directory: its layout, its resume state, and the trained embedder it holds.

``<runs_dir>/<name>/``:

- ``config.yaml``: the resolved config (a restart must resolve to the same one);
- ``language_table.npy``, ``train_class_names.json`` and, for PLG, ``pseudo_labels.json``;
- ``logs/``: TensorBoard (``train/``, ``validation/``, the embedding projector);
- ``checkpoints/``: the resume state (model, optimizer, step), every
  ``training.checkpoint_every`` optimizer steps and when training ends;
- ``history.json``: per-epoch logs; ``embedder.weights.h5``: the final embedder;
- ``run_log.jsonl``: one line per start of the process, with the optimizer step it
  began at and the dtype policy it computes in (``precision``, ``precision_reason``:
  ``training.precision`` resolved at the first start, ``auto`` included, and kept by
  every restart and by ``evaluate``), and a ``{"event": "nonfinite", ...}`` line when
  a step is not finite;
- ``metrics.json``: written last, atomically: the run is complete when it exists.

Nothing written holds NaN or Inf: a checkpoint, a ``history.json`` line or
``embedder.weights.h5`` whose values are not all finite is refused with
:class:`~tf_langdml.models.NonFiniteLossError`, and a restart resumes from the newest
checkpoint whose variables are all finite (an older one, or a fresh start, with a
message, when the newest is not).
"""

import json
import math
import pathlib
import sys
import time

import numpy as np
import tensorflow as tf
import yaml

from tf_langdml._keras import keras
from tf_langdml.cache import atomic_file, json_safe, write_json
from tf_langdml.runs.schema import ConfigError, config_from_yaml, config_to_dict, config_to_yaml

RUN_FILES = ("config.yaml", "language_table.npy", "train_class_names.json", "history.json", "embedder.weights.h5",
             "metrics.json")
PSEUDO_LABELS = "pseudo_labels.json"


def _flatten(values, prefix=""):
    flat = {}
    for key, value in (values or {}).items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def prepare(config):
    """``<runs_dir>/<name>``, created with ``config.yaml``; a different config already there is an error."""
    folder = pathlib.Path(config.runs_dir) / config.name
    folder.mkdir(parents=True, exist_ok=True)
    resolved = config_to_dict(config)
    existing = folder / "config.yaml"
    if existing.exists():
        previous = yaml.safe_load(existing.read_text(encoding="utf-8"))
        if previous != resolved:
            old, new = _flatten(previous), _flatten(resolved)
            changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
            raise ConfigError(
                f"Run directory {folder} holds a run with another config (changed: {', '.join(changed)}). "
                "Restart with the same config to resume it, or give this run another name (--set name=...)."
            )
    else:
        with atomic_file(existing) as temporary:
            temporary.write_text(config_to_yaml(config), encoding="utf-8")
    return folder


def read_config(folder):
    """The :class:`~tf_langdml.runs.schema.ExperimentConfig` of a run directory."""
    return config_from_yaml((pathlib.Path(folder) / "config.yaml").read_text(encoding="utf-8"))


def read_metrics(folder):
    """The contents of ``metrics.json``; None while the run is not complete."""
    path = pathlib.Path(folder) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_metrics(folder, metrics):
    """Write ``metrics.json`` (atomically; NaN as null) and return what it holds: the run is complete."""
    metrics = json_safe(metrics)
    write_json(pathlib.Path(folder) / "metrics.json", metrics)
    return metrics


def write_class_names(folder, class_names):
    write_json(pathlib.Path(folder) / "train_class_names.json", list(class_names))


def write_language_table(folder, table):
    """``language_table.npy``: the (C|N, K, D) float32 rows (of an array or a LanguageTable)."""
    with atomic_file(pathlib.Path(folder) / "language_table.npy") as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, np.asarray(getattr(table, "rows", table), dtype=np.float32))


# -- resume state ------------------------------------------------------------------------------


class ResumeCheckpoints(keras.callbacks.Callback):
    """Saves model + optimizer every ``every`` optimizer steps and when ``fit`` ends (a tf.train.CheckpointManager).

    Not at every epoch end: a checkpoint of a whole model with its optimizer state costs
    about a second of Python work, which on a small dataset (a few steps per epoch) was
    a fifth of a run's time. Resume does not need epoch boundaries.
    """

    def __init__(self, manager, every):
        super().__init__()
        self.manager, self.every, self.last_saved = manager, int(every), None

    def _save(self):
        step = int(self.model.optimizer.iterations.numpy())
        if step != self.last_saved:
            refuse_nonfinite(self.model.variables + list(self.model.optimizer.variables), step,
                             f"checkpoint ckpt-{step}")
            self.manager.save(checkpoint_number=step)  # numbered by optimizer step
            self.last_saved = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) % self.every == 0:
            self._save()

    def on_train_end(self, logs=None):
        self._save()


def checkpoint_manager(model, folder):
    """(checkpoint, manager) of the model and its optimizer in ``<folder>/checkpoints`` (the newest two kept)."""
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(checkpoint, str(pathlib.Path(folder) / "checkpoints"), max_to_keep=2)
    return checkpoint, manager


def _nonfinite_tensors(path):
    """Names of a checkpoint's floating-point tensors holding NaN or Inf."""
    reader = tf.train.load_checkpoint(path)
    return [name for name, dtype in sorted(reader.get_variable_to_dtype_map().items())
            if dtype.is_floating and not np.isfinite(reader.get_tensor(name)).all()]


def latest_finite_checkpoint(manager):
    """The newest of the manager's checkpoints whose tensors are all finite (None if none), with a message per skipped one."""
    for path in reversed(manager.checkpoints):
        bad = _nonfinite_tensors(path)
        if not bad:
            return path
        print(f"tf_langdml: checkpoint {path} holds NaN or Inf ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
              "not resuming from it.", file=sys.stderr)
    if manager.checkpoints:
        print("tf_langdml: no checkpoint with finite values; starting this run from scratch.", file=sys.stderr)
    return None


def refuse_nonfinite(variables, step, what):
    """NonFiniteLossError instead of writing ``what`` when a variable holds NaN or Inf."""
    from tf_langdml.models.language_guided_model import NonFiniteLossError, nonfinite_variables

    bad = nonfinite_variables(variables)
    if bad:
        raise NonFiniteLossError(
            f"Not writing {what}: after optimizer step {step} variable(s) {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''} hold NaN or Inf (an update overflowed: lower the learning rate, "
            "or check mixed precision without loss scaling, the language table and the input images).", step=step)


def log_event(folder, record):
    """Append one line to ``run_log.jsonl``."""
    with open(pathlib.Path(folder) / "run_log.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**record, "time": time.time()}) + "\n")


def recorded_precision(folder):
    """``(policy, reason)`` the run's first start recorded in ``run_log.jsonl``; None before that (or for an older run)."""
    path = pathlib.Path(folder) / "run_log.jsonl"
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("event") == "start" and record.get("precision"):
            return record["precision"], record.get("precision_reason", "")
    return None


def log_nonfinite(folder, model, error):
    """The ``{"event": "nonfinite", "optimizer_step": N, ...}`` line of a NonFiniteLossError."""
    step = error.step if error.step is not None else int(model.optimizer.iterations.numpy())
    values = {key: value if not isinstance(value, float) or math.isfinite(value) else str(value)
              for key, value in error.values.items()}
    log_event(folder, {"event": "nonfinite", "optimizer_step": int(step), **values,
                       "learning_rate": error.learning_rate, "message": str(error)})


class HistoryFile(keras.callbacks.Callback):
    """``history.json``: the logs of each finished epoch, keyed by epoch (a repeated epoch overwrites)."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.epochs = json.loads(path.read_text()) if path.exists() else {}

    def on_epoch_end(self, epoch, logs=None):
        line = {key: float(value) for key, value in (logs or {}).items()}
        bad = sorted(key for key, value in line.items() if not math.isfinite(value))
        if bad:
            from tf_langdml.models import NonFiniteLossError

            step = int(self.model.optimizer.iterations.numpy())
            raise NonFiniteLossError(f"Not writing epoch {epoch + 1} to {self.path.name}: {', '.join(bad)} "
                                     f"{'is' if len(bad) == 1 else 'are'} NaN or Inf (optimizer step {step}).",
                                     step=step)
        self.epochs[str(epoch + 1)] = line
        write_json(self.path, self.epochs)


# -- the trained embedder ----------------------------------------------------------------------


def save_embedder(folder, model, step):
    """``embedder.weights.h5``; refused (NonFiniteLossError, logged to run_log.jsonl) when a weight is not finite."""
    try:
        refuse_nonfinite(model.embedder.variables, step, "embedder.weights.h5")
    except FloatingPointError as error:  # NonFiniteLossError
        log_nonfinite(folder, model, error)
        raise
    model.embedder.save_weights(str(pathlib.Path(folder) / "embedder.weights.h5"))


def restore_embedder(folder, policy="float32"):
    """(config, embedder) of a finished run directory (config.yaml + embedder.weights.h5).

    ``policy``: the Keras dtype policy the rebuilt embedder's layers compute in (its
    variables are float32 either way); ``"run"``: the one the run trained in
    (:func:`recorded_precision`, else ``training.precision`` resolved here).
    """
    from tf_langdml.models.precision import precision_policy
    from tf_langdml.runs import builders

    folder = pathlib.Path(folder)
    weights = folder / "embedder.weights.h5"
    if not weights.exists():
        raise FileNotFoundError(f"{folder} has no embedder.weights.h5: the run has not finished (run train again).")
    config = read_config(folder)
    if policy == "run":
        policy = (recorded_precision(folder) or builders.precision(config.training))[0]
    with precision_policy(policy):
        embedder = builders.embedder(config.model, config.data.image_size, weights=None)
    embedder.load_weights(str(weights))
    return config, embedder
