"""A training run from a config: checks, run directory, language table, model.fit with resume, final metrics.

:func:`train` first runs every check that needs neither data nor weights
(:func:`preflight`) and compares an existing ``config.yaml``, then loads the data; only
then does it create the run directory (:mod:`~tf_langdml.runs.run_dir` describes its
files), take its lock (one process per run) and train. A start that fails on its config
or its data leaves no folder behind; the corrected command then runs.

A run killed at any point and restarted with the same command resumes from its last
checkpoint: the data pipeline's batch b depends only on (seed, b), so it restarts at
the restored optimizer step, and a partial epoch is finished before the next begins;
the run ends with the same epochs and optimizer steps as an unbroken one.

NaN or Inf: a step whose loss or gradients are not finite is not applied and stops the
run with :class:`~tf_langdml.models.NonFiniteLossError` (see
``LanguageGuidedModel.train_step``), at that step; ``run_log.jsonl`` gets a line
``{"event": "nonfinite", "optimizer_step": N, ...}`` before the error propagates, and
no file of the run directory takes a non-finite value (see :mod:`~tf_langdml.runs.run_dir`).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable

import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.evaluation import language_table_statistics
from tf_langdml.models import NonFiniteLossError
from tf_langdml.models.precision import DeviceCapabilities
from tf_langdml.models.precision_probe import ProbedModel
from tf_langdml.runs import builders, checkpoints, run_dir, trained_embedder
from tf_langdml.runs.console import fit_console
from tf_langdml.runs.schema import ExperimentConfig, config_to_dict

# What metrics.json holds besides the evaluation metrics (which evaluate() recomputes).
RUN_INFO_KEYS = (
    "epochs",
    "optimizer_steps",
    "steps_per_epoch",
    "evaluated_on",
    "evaluated_classes",
    "evaluated_images",
    "training_classes",
    "table_similarity_mean",
    "table_similarity_std",
    "precision",
)


def preflight(config: ExperimentConfig) -> None:
    """The library's checks of every section that need neither data nor weights (ConfigError naming the key)."""
    builders.check_data(config.data)
    builders.check_embedder(config.model, config.data.image_size)
    builders.check_model(config.loss, config.optimizer, config.training)
    builders.check_language(config.language)
    builders.check_evaluation(config.evaluation, config.training)


def _fit(model, folder, *args, **kwargs):
    """``model.fit``; a NonFiniteLossError is logged to ``run_log.jsonl`` before it propagates."""
    try:
        return model.fit(*args, **kwargs)
    except NonFiniteLossError as error:
        run_dir.log_nonfinite(folder, model, error)
        raise


def run_precision(
    folder: str | os.PathLike,
    config: ExperimentConfig,
    verbose: int = 1,
    probe: Callable[[], DeviceCapabilities] | None = None,
    measure: Callable[[ProbedModel], dict[str, float]] | None = None,
) -> tuple[str, str]:
    """``(policy, reason)`` of the run: what its first start recorded, else ``training.precision`` resolved now.

    ``auto`` is resolved once per run: a restart (on another machine too) and
    :func:`evaluate` keep the policy the run began with. Resolving it may time the run's
    model under both policies (:mod:`~tf_langdml.models.precision_probe`), which draws from
    the global random state: :func:`train` resolves before it seeds. ``verbose``: print
    :func:`precision_message` (training prints it once per start, after the checks
    that can fail on the data). ``probe``, ``measure``: for tests (see
    :func:`~tf_langdml.models.precision.resolve_precision`).
    """
    policy, reason, recorded = trained_embedder.run_policy(folder, config, probe, measure)
    if verbose:
        print(precision_message(policy, reason, recorded), file=sys.stderr)
    return policy, reason


def precision_message(policy: str, reason: str, recorded: bool) -> str:
    """``tf_langdml: computing in float32: precision float32 set explicitly.`` (``recorded``: kept from the first start)."""
    kept = " (recorded at this run's first start)" if recorded else ""
    return f"tf_langdml: computing in {policy}: {reason}{kept}."


def train(config: ExperimentConfig, verbose: int = 1) -> dict:
    """Train (or resume) the run a config describes; returns the final ``metrics.json`` contents.

    Raises ConfigError (a config or data problem, a config that differs from the run's
    ``config.yaml`` or checkpoints), RunDirectoryError (the run is in use by another
    process; a checkpoint cannot be written) or OSError naming the file that cannot be
    written.
    """
    preflight(config)
    folder, _ = run_dir.check_config(config)  # before anything is written
    metrics = _complete(folder, verbose)
    if metrics is not None:
        return metrics
    # Before seeding: auto's probe builds models, which draw from the global random state; so a run
    # starts from the same weights whether its decision was probed now or read from the cache.
    resolved = run_precision(folder, config, verbose=0)
    keras.utils.set_random_seed(config.training.seed)
    if config.training.deterministic:
        enable_determinism()
    data = builders.dataset(config.data, config.evaluation.split)
    split = data.train_split
    scored_split = builders.evaluation_split(config.evaluation, data)
    builders.check_ks(config.evaluation, scored_split)  # no k above what a query of that split can retrieve
    index = builders.table_index(config.language)
    # Built now (not iterated until later) so that the sampler checks the batch against the split first.
    fixed_batches = builders.train_batches(
        config.data, split, seed=config.training.seed + 1, with_sample_ids=index == "sample_id"
    )
    with run_dir.open_run(config) as folder:  # created now: the config and the data are good
        metrics = _complete(folder, verbose)  # (another process may have finished it meanwhile)
        if metrics is not None:
            return metrics
        checkpoints.check_checkpoints(folder, config)
        return _train_locked(config, folder, split, scored_split, index, fixed_batches, resolved, verbose)


def _complete(folder, verbose):
    """The metrics of a complete run (its embedder's config checked against config.yaml), else None."""
    metrics = run_dir.read_metrics(folder)
    if metrics is None:
        return None
    trained_embedder.check_embedder_config(folder)
    if verbose:
        print(f"tf_langdml: run {folder} is complete; its metrics are in {folder / 'metrics.json'}.")
    return metrics


def _train_locked(config, folder, split, scored_split, index, fixed_batches, resolved, verbose):
    """The body of :func:`train` once ``folder`` exists, is locked and matches ``config``; ``resolved``: the
    ``(policy, reason)`` :func:`run_precision` gave before the lock (another process may have recorded one since)."""
    recorded = run_dir.recorded_precision(folder)
    policy, policy_reason = recorded or resolved  # printed once the table and model are built
    config_values = config_to_dict(config)
    config_sha256 = run_dir.config_sha256(config_values)
    run_dir.write_class_names(folder, split.class_names)
    encoder = builders.text_encoder(config.language) if config.language.guidance != "none" else None
    table = builders.language_table(
        config.language,
        split,
        encoder,
        config.evaluation.batch_size,
        folder / run_dir.PSEUDO_LABELS,
        verbose,
        policy=policy,
    )
    if table is not None:
        run_dir.write_language_table(folder, table)
    steps_per_epoch = config.training.steps_per_epoch or max(1, len(split.labels) // config.data.batch_size)
    model = builders.guided_model(
        config.model,
        config.data.image_size,
        config.loss,
        config.optimizer,
        config.training,
        table,
        index,
        num_classes=split.num_classes,
        policy=policy,
        steps_per_epoch=steps_per_epoch,
    )
    if verbose:  # not before an error of the text encoder, the table or the model: those name their own fix
        print(precision_message(policy, policy_reason, recorded is not None), file=sys.stderr)
    checkpoint, manager = checkpoints.checkpoint_manager(model, folder, config_sha256)
    resume_from = checkpoints.latest_finite_checkpoint(manager)
    if resume_from:
        checkpoints.restore_checkpoint(checkpoint, resume_from, model)
        if verbose:
            print(f"tf_langdml: resuming {folder} from optimizer step {int(model.optimizer.iterations.numpy())}.")
    total_steps = steps_per_epoch * config.training.epochs
    step = int(model.optimizer.iterations.numpy())
    run_dir.log_event(
        folder,
        {
            "event": "start",
            "optimizer_step": step,  # one line per (re)start
            "precision": policy,
            "precision_reason": policy_reason,
            "config_sha256": config_sha256,
            "config": config_values,
        },
    )
    log_dir = str(folder / "logs")
    callbacks = builders.callbacks(
        config.training,
        config.evaluation,
        config.data.image_size,
        scored_split,
        log_dir,
        fixed_batch=next(iter(fixed_batches)),
        fixed_batch_class_names=split.class_names,
    )
    callbacks += [
        run_dir.HistoryFile(folder / "history.json"),
        checkpoints.ResumeCheckpoints(manager, config.training.checkpoint_every),
    ]
    # After the evaluation callback, whose recall@1 they show; the full logs still reach history.json and TensorBoard.
    fit_verbose, console = fit_console(verbose, config.training.epochs, language=table is not None)
    callbacks += console
    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        train_data = builders.train_batches(
            config.data, split, seed=config.training.seed, start_batch=step, with_sample_ids=index == "sample_id"
        )
        # A partial epoch first (after a resume), then whole epochs.
        last_epoch = epoch + 1 if done_in_epoch else config.training.epochs
        _fit(
            model,
            folder,
            train_data,
            initial_epoch=epoch,
            epochs=last_epoch,
            steps_per_epoch=steps_per_epoch - done_in_epoch if done_in_epoch else steps_per_epoch,
            callbacks=callbacks,
            verbose=fit_verbose,
        )
        step = int(model.optimizer.iterations.numpy())
    trained_embedder.save_embedder(folder, model, step, config_values)
    metrics = builders.evaluation_metrics(
        config.evaluation,
        config.data,
        config.language,
        config.training.seed,
        model,
        scored_split,
        encoder=encoder,
        verbose=verbose,
    )
    metrics.update(
        {
            "epochs": math.ceil(step / steps_per_epoch),
            "optimizer_steps": step,
            "steps_per_epoch": steps_per_epoch,
            "evaluated_on": config.evaluation.split,
            "evaluated_classes": scored_split.num_classes,
            "evaluated_images": len(scored_split.labels),
            "training_classes": split.num_classes,
            "precision": policy,
        }
    )
    if table is not None:
        metrics.update(language_table_statistics(table))
    metrics = run_dir.write_metrics(folder, metrics)  # what metrics.json holds (NaN -> None), also on a later call
    if verbose:
        print(f"tf_langdml: run {folder} done; TensorBoard logs: tensorboard --logdir {log_dir}", file=sys.stderr)
    return metrics


def evaluate(folder: str | os.PathLike, verbose: int = 1) -> dict:
    """Metrics of a finished run's embedder on its evaluation split (``evaluation.split``; recomputed).

    The embedder computes in the dtype policy the run trained in (``run_log.jsonl``), so
    the metrics are those training reported.
    """
    config, embedder = trained_embedder.restore_embedder(folder, policy="run")
    scored_split = builders.evaluation_split(config.evaluation, builders.dataset(config.data, config.evaluation.split))
    builders.check_ks(config.evaluation, scored_split)  # the data may have changed since training
    return builders.evaluation_metrics(
        config.evaluation, config.data, config.language, config.training.seed, embedder, scored_split, verbose=verbose
    )


def enable_determinism() -> None:
    """TensorFlow op determinism for the rest of the process (bit-identical reruns; see docs/runs.md).

    ``tf.config.experimental.enable_op_determinism`` makes every op choose a
    deterministic kernel (or raise where none exists); the seeds are set by
    ``keras.utils.set_random_seed``, and the data pipelines are deterministic by
    construction (stateless per-image seeds, ordered parallel maps).
    """
    tf.config.experimental.enable_op_determinism()
