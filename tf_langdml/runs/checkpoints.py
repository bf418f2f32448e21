"""A run's resume state: the training checkpoints in ``<run>/checkpoints/`` and what they may hold.

Model, optimizer and step are saved every ``training.checkpoint_every`` optimizer steps
and when training ends (:class:`ResumeCheckpoints`); the newest two are kept. Every
checkpoint holds the SHA-256 of the config it was trained with (a string variable,
``config_sha256``): a resume whose config differs is refused naming the changed keys
(:func:`check_checkpoints`). Nothing NaN or Inf is written (:func:`refuse_nonfinite`), and a
restart resumes from the newest checkpoint whose tensors are all finite
(:func:`latest_finite_checkpoint`). The run directory itself: :mod:`~tf_langdml.runs.run_dir`.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.models.nonfinite import NonFiniteLossError, nonfinite_variables
from tf_langdml.runs.run_dir import (
    RunDirectoryError,
    blocking_keys,
    config_sha256,
    recorded_config,
    refuse_other_config,
)
from tf_langdml.runs.schema import ExperimentConfig, config_to_dict

# What TensorFlow raises when a checkpoint cannot be written (a folder that is a file, no permission, a full disk).
_UNWRITABLE = (
    tf.errors.PermissionDeniedError,
    tf.errors.FailedPreconditionError,
    tf.errors.ResourceExhaustedError,
    tf.errors.NotFoundError,
    tf.errors.AlreadyExistsError,
)
CONFIG_VARIABLE = "config_sha256/.ATTRIBUTES/VARIABLE_VALUE"


class ResumeCheckpoints(keras.callbacks.Callback):
    """Saves model + optimizer every ``every`` optimizer steps and when ``fit`` ends (a tf.train.CheckpointManager).

    Not at every epoch end: a checkpoint of a whole model with its optimizer state costs
    about a second of Python work, which on a small dataset (a few steps per epoch) was
    a fifth of a run's time. Resume does not need epoch boundaries.
    """

    def __init__(self, manager: tf.train.CheckpointManager, every: int) -> None:
        super().__init__()
        self.manager, self.every, self.last_saved = manager, int(every), None

    def _save(self):
        step = int(self.model.optimizer.iterations.numpy())
        if step != self.last_saved:
            refuse_nonfinite(
                self.model.variables + list(self.model.optimizer.variables), step, f"checkpoint ckpt-{step}"
            )
            save_checkpoint(self.manager, step)
            self.last_saved = step

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if int(self.model.optimizer.iterations.numpy()) % self.every == 0:
            self._save()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._save()


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> None:
    """``manager.save`` numbered by optimizer step; an unwritable folder is a one-line RunDirectoryError naming it."""
    try:
        manager.save(checkpoint_number=step)
    except _UNWRITABLE as error:
        raise RunDirectoryError(
            f"Cannot write checkpoint ckpt-{step} to {manager.directory}: {error.message.splitlines()[0]}; "
            "make that folder writable (and give its disk free space), then run the same command again."
        ) from error


def checkpoint_manager(
    model: keras.Model, folder: str | os.PathLike, config_sha256: str | None = None
) -> tuple[tf.train.Checkpoint, tf.train.CheckpointManager]:
    """(checkpoint, manager) of the model and its optimizer in ``<folder>/checkpoints`` (the newest two kept).

    ``config_sha256``: saved in every checkpoint as a string variable, so that a
    checkpoint names the config it was trained with (:func:`check_checkpoints`).
    """
    objects = {"model": model, "optimizer": model.optimizer}
    if config_sha256 is not None:
        objects["config_sha256"] = tf.Variable(config_sha256, trainable=False, dtype=tf.string)
    checkpoint = tf.train.Checkpoint(**objects)
    manager = tf.train.CheckpointManager(checkpoint, str(pathlib.Path(folder) / "checkpoints"), max_to_keep=2)
    return checkpoint, manager


def checkpoint_config_sha256(path: str | os.PathLike) -> str | None:
    """The config SHA-256 a checkpoint was saved with; None for a checkpoint written before they were recorded."""
    reader = tf.train.load_checkpoint(str(path))
    if not reader.has_tensor(CONFIG_VARIABLE):
        return None
    return reader.get_tensor(CONFIG_VARIABLE).decode("ascii")


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str, model: keras.Model) -> None:
    """Restore model and optimizer from ``path`` (one without a config record: the older layout, without it)."""
    if checkpoint_config_sha256(path) is None:
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    checkpoint.restore(path).assert_existing_objects_matched()


def check_checkpoints(folder: str | os.PathLike, config: ExperimentConfig) -> None:
    """Raise ConfigError when a checkpoint of the run was trained with another config than ``config``.

    ``config.yaml`` already matches ``config`` (:func:`~tf_langdml.runs.run_dir.check_config`); a
    difference here means ``config.yaml`` was edited after the checkpoints were written. A
    checkpoint whose config (a start line of ``run_log.jsonl``) lacks only keys added since,
    now at their default (:func:`~tf_langdml.runs.run_dir.blocking_keys`), is accepted.
    """
    state = tf.train.get_checkpoint_state(str(pathlib.Path(folder) / "checkpoints"))
    if state is None:
        return
    values = config_to_dict(config)
    expected = config_sha256(values)
    for path in state.all_model_checkpoint_paths:
        if not tf.io.gfile.exists(path + ".index"):
            continue
        recorded = checkpoint_config_sha256(path)
        if recorded is None or recorded == expected:
            continue
        recorded_values = recorded_config(folder, recorded)
        if recorded_values is None or blocking_keys(recorded_values, values):
            refuse_other_config(
                folder,
                f"Checkpoint {pathlib.Path(path).name}",
                recorded,
                recorded_values,
                values,
                "Put config.yaml back as it was (run_log.jsonl's start lines hold it) and run that config to resume, "
                "or train the new config under another name (--set name=...).",
            )


def _nonfinite_tensors(path):
    """Names of a checkpoint's floating-point tensors holding NaN or Inf."""
    reader = tf.train.load_checkpoint(path)
    return [
        name
        for name, dtype in sorted(reader.get_variable_to_dtype_map().items())
        if dtype.is_floating and not np.isfinite(reader.get_tensor(name)).all()
    ]


def latest_finite_checkpoint(manager: tf.train.CheckpointManager) -> str | None:
    """The newest of the manager's checkpoints whose tensors are all finite (None if none), with a message per skipped one."""
    for path in reversed(manager.checkpoints):
        bad = _nonfinite_tensors(path)
        if not bad:
            return path
        print(
            f"tf_langdml: checkpoint {path} holds NaN or Inf ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
            "not resuming from it.",
            file=sys.stderr,
        )
    if manager.checkpoints:
        print("tf_langdml: no checkpoint with finite values; starting this run from scratch.", file=sys.stderr)
    return None


def refuse_nonfinite(variables: Sequence[tf.Variable], step: int, what: str) -> None:
    """NonFiniteLossError instead of writing ``what`` when a variable holds NaN or Inf."""
    bad = nonfinite_variables(variables)
    if bad:
        raise NonFiniteLossError(
            f"Not writing {what}: after optimizer step {step} variable(s) {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''} hold NaN or Inf (an update overflowed: lower the learning rate, "
            "or check mixed precision without loss scaling, the language table and the input images).",
            step=step,
        )
