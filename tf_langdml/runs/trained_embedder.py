"""The trained embedder of a run: ``embedder.weights.h5`` saved with the config it was trained with, and restored.

``embedder.weights.h5`` is written atomically, never with a weight that is not finite, and
after ``embedder.config.json`` (the resolved config and its SHA-256): weights never appear
without the config they were trained with. An ``export``, ``evaluate`` or ``index`` whose
``config.yaml`` differs from that config (edited after training) is refused with a
ConfigError naming the changed keys; runs written before the record existed are used
without the check. The rest of the run directory: :mod:`~tf_langdml.runs.run_dir`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from tf_langdml._keras import keras
from tf_langdml.cache import atomic_file, write_json
from tf_langdml.models.precision import precision_policy
from tf_langdml.runs import builders
from tf_langdml.runs.checkpoints import refuse_nonfinite
from tf_langdml.runs.run_dir import (
    EMBEDDER_CONFIG,
    config_sha256,
    log_nonfinite,
    naming,
    read_config,
    recorded_precision,
    refuse_other_config,
)
from tf_langdml.runs.schema import ExperimentConfig, read_yaml


def save_embedder(folder: str | os.PathLike, model: keras.Model, step: int, config_values: dict | None = None) -> None:
    """``embedder.weights.h5`` (atomic) and, with ``config_values``, ``embedder.config.json`` beside it.

    Refused (NonFiniteLossError, logged to run_log.jsonl) when a weight is not finite.
    The config record is written first: weights never appear without the config they
    were trained with.
    """
    try:
        refuse_nonfinite(model.embedder.variables, step, "embedder.weights.h5")
    except FloatingPointError as error:  # NonFiniteLossError
        log_nonfinite(folder, model, error)
        raise
    folder = pathlib.Path(folder)
    if config_values is not None:
        with naming(folder / EMBEDDER_CONFIG):
            write_json(
                folder / EMBEDDER_CONFIG,
                {"config_sha256": config_sha256(config_values), "optimizer_step": int(step), "config": config_values},
            )
    path = folder / "embedder.weights.h5"
    with naming(path), atomic_file(path) as temporary:
        staging = temporary.with_name(temporary.name + ".weights.h5")  # Keras picks the file format by this suffix
        try:
            model.embedder.save_weights(str(staging))
            os.replace(staging, temporary)
        finally:
            staging.unlink(missing_ok=True)


def check_embedder_config(folder: str | os.PathLike) -> None:
    """Raise ConfigError when ``config.yaml`` differs from the config ``embedder.weights.h5`` was trained with.

    Compares the YAML as written (not re-resolved through today's schema, whose
    defaults may have grown). Runs without ``embedder.config.json`` pass unchecked.
    """
    folder = pathlib.Path(folder)
    record_path = folder / EMBEDDER_CONFIG
    if not record_path.exists():
        return
    record = json.loads(record_path.read_text(encoding="utf-8"))
    values = read_yaml(folder / "config.yaml")
    if config_sha256(values) != record["config_sha256"]:
        refuse_other_config(
            folder,
            "embedder.weights.h5",
            record["config_sha256"],
            record.get("config"),
            values,
            f"Put config.yaml back as it was ({EMBEDDER_CONFIG} holds it); a run trained with "
            "other values is a new run (train it under another name).",
        )


def check_finished_run(folder: str | os.PathLike) -> None:
    """FileNotFoundError telling apart a folder that does not exist, one that is not a run, and an unfinished run."""
    folder = pathlib.Path(folder)
    if not folder.exists():
        raise FileNotFoundError(
            f"{folder} does not exist; give a run directory, <runs_dir>/<name> (the folder "
            "`tf-langdml train` printed and wrote)."
        )
    if not (folder / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{folder} is not a run directory (it has no config.yaml); give the folder "
            "`tf-langdml train` wrote, <runs_dir>/<name>."
        )
    if not (folder / "embedder.weights.h5").exists():
        raise FileNotFoundError(
            f"{folder} has not finished (no embedder.weights.h5 yet); finish it with "
            f"`tf-langdml train --config {folder / 'config.yaml'}` (it resumes from its last "
            "checkpoint), then try again."
        )


def run_policy(
    folder: str | os.PathLike, config: ExperimentConfig, probe: Any = None, measure: Any = None
) -> tuple[str, str, bool]:
    """``(policy, reason, recorded)``: the Keras dtype policy run ``folder`` computes in.

    What its first start recorded (:func:`~tf_langdml.runs.run_dir.recorded_precision`;
    ``recorded`` True), else ``config``'s ``training.precision`` resolved on this machine for
    its model and data (:func:`~tf_langdml.runs.builders.precision`; ``probe`` and ``measure``
    for tests).
    """
    recorded = recorded_precision(folder)
    if recorded:
        return recorded[0], recorded[1], True
    return (*builders.precision(config.training, config.model, config.data, probe, measure), False)


def restore_embedder(folder: str | os.PathLike, policy: str = "float32") -> tuple[ExperimentConfig, keras.Model]:
    """(config, embedder) of a finished run directory (config.yaml + embedder.weights.h5).

    Refused (ConfigError naming the keys) when ``config.yaml`` was edited after training
    (:func:`check_embedder_config`); a folder without ``config.yaml`` is not a run.

    ``policy``: the Keras dtype policy the rebuilt embedder's layers compute in (its
    variables are float32 either way); ``"run"``: the one the run trained in
    (:func:`run_policy`).
    """
    folder = pathlib.Path(folder)
    weights = folder / "embedder.weights.h5"
    check_finished_run(folder)
    check_embedder_config(folder)
    config = read_config(folder)
    if policy == "run":
        policy = run_policy(folder, config)[0]
    with precision_policy(policy):
        embedder = builders.embedder(config.model, config.data.image_size, weights=None)
    embedder.load_weights(str(weights))
    return config, embedder
