"""A training run from a config: checks, run directory, language table, model.fit with resume, final metrics.

:func:`train` first runs every check that needs neither data nor weights
(:func:`preflight`), then writes the run directory (:mod:`~tf_langdml.runs.run_dir`
describes its files) and trains.

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

import math
import sys

from tf_langdml._keras import keras
from tf_langdml.runs import builders, run_dir

# What metrics.json holds besides the evaluation metrics (which evaluate() recomputes).
RUN_INFO_KEYS = ("epochs", "optimizer_steps", "steps_per_epoch", "evaluated_on", "evaluated_classes",
                 "evaluated_images", "training_classes", "table_similarity_mean", "table_similarity_std", "precision")


def preflight(config):
    """The library's checks of every section that need neither data nor weights (ConfigError naming the key)."""
    builders.check_data(config.data)
    builders.check_embedder(config.model, config.data.image_size)
    builders.check_model(config.loss, config.optimizer, config.training)
    builders.check_language(config.language)
    builders.check_evaluation(config.evaluation, config.training)


def _fit(model, folder, *args, **kwargs):
    """``model.fit``; a NonFiniteLossError is logged to ``run_log.jsonl`` before it propagates."""
    from tf_langdml.models import NonFiniteLossError

    try:
        return model.fit(*args, **kwargs)
    except NonFiniteLossError as error:
        run_dir.log_nonfinite(folder, model, error)
        raise


def run_precision(folder, config, verbose=1, probe=None):
    """``(policy, reason)`` of the run: what its first start recorded, else ``training.precision`` resolved now.

    ``auto`` is resolved once per run: a restart (on another machine too) and
    :func:`evaluate` keep the policy the run began with. Printed once per start.
    """
    recorded = run_dir.recorded_precision(folder)
    policy, reason = recorded if recorded else builders.precision(config.training, probe)
    if verbose:
        kept = " (recorded at this run's first start)" if recorded else ""
        print(f"tf_langdml: computing in {policy}: {reason}{kept}.", file=sys.stderr)
    return policy, reason


def train(config, verbose=1):
    """Train (or resume) the run a config describes; returns the final ``metrics.json`` contents."""
    preflight(config)
    folder = run_dir.prepare(config)
    metrics = run_dir.read_metrics(folder)
    if metrics is not None:
        if verbose:
            print(f"tf_langdml: run {folder} is complete; its metrics are in {folder / 'metrics.json'}.")
        return metrics
    policy, policy_reason = run_precision(folder, config, verbose)
    keras.utils.set_random_seed(config.training.seed)
    if config.training.deterministic:
        enable_determinism()
    data = builders.dataset(config.data, config.evaluation.split)
    split = data.train_split
    scored_split = builders.evaluation_split(config.evaluation, data)
    index = builders.table_index(config.language)
    # Built now (not iterated until later) so that the sampler checks the batch against the split first.
    fixed_batches = builders.train_batches(config.data, split, seed=config.training.seed + 1,
                                           with_sample_ids=index == "sample_id")
    run_dir.write_class_names(folder, split.class_names)
    encoder = builders.text_encoder(config.language) if config.language.guidance != "none" else None
    table = builders.language_table(config.language, split, encoder, config.evaluation.batch_size,
                                    folder / run_dir.PSEUDO_LABELS, verbose, policy=policy)
    if table is not None:
        run_dir.write_language_table(folder, table)
    model = builders.guided_model(config.model, config.data.image_size, config.loss, config.optimizer,
                                  config.training, table, index, num_classes=split.num_classes, policy=policy)
    checkpoint, manager = run_dir.checkpoint_manager(model, folder)
    resume_from = run_dir.latest_finite_checkpoint(manager)
    if resume_from:
        checkpoint.restore(resume_from).assert_existing_objects_matched()
        if verbose:
            print(f"tf_langdml: resuming {folder} from optimizer step {int(model.optimizer.iterations.numpy())}.")
    steps_per_epoch = config.training.steps_per_epoch or max(1, len(split.labels) // config.data.batch_size)
    total_steps = steps_per_epoch * config.training.epochs
    step = int(model.optimizer.iterations.numpy())
    run_dir.log_event(folder, {"event": "start", "optimizer_step": step,  # one line per (re)start
                               "precision": policy, "precision_reason": policy_reason})
    log_dir = str(folder / "logs")
    callbacks = builders.callbacks(config.training, config.evaluation, config.data.image_size, scored_split, log_dir,
                                   fixed_batch=next(iter(fixed_batches)), fixed_batch_class_names=split.class_names)
    callbacks += [run_dir.HistoryFile(folder / "history.json"),
                  run_dir.ResumeCheckpoints(manager, config.training.checkpoint_every)]
    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        train_data = builders.train_batches(config.data, split, seed=config.training.seed, start_batch=step,
                                            with_sample_ids=index == "sample_id")
        # A partial epoch first (after a resume), then whole epochs.
        last_epoch = epoch + 1 if done_in_epoch else config.training.epochs
        _fit(model, folder, train_data, initial_epoch=epoch, epochs=last_epoch,
             steps_per_epoch=steps_per_epoch - done_in_epoch if done_in_epoch else steps_per_epoch,
             callbacks=callbacks, verbose=2 if verbose else 0)
        step = int(model.optimizer.iterations.numpy())
    run_dir.save_embedder(folder, model, step)
    metrics = builders.evaluation_metrics(config.evaluation, config.data, config.language, config.training.seed,
                                          model, scored_split, encoder=encoder, verbose=verbose)
    metrics.update({"epochs": math.ceil(step / steps_per_epoch), "optimizer_steps": step,
                    "steps_per_epoch": steps_per_epoch, "evaluated_on": config.evaluation.split,
                    "evaluated_classes": scored_split.num_classes, "evaluated_images": len(scored_split.labels),
                    "training_classes": split.num_classes, "precision": policy})
    if table is not None:
        from tf_langdml.evaluation import language_table_statistics

        metrics.update(language_table_statistics(table))
    metrics = run_dir.write_metrics(folder, metrics)  # what metrics.json holds (NaN -> None), also on a later call
    if verbose:
        print(f"tf_langdml: run {folder} done; TensorBoard logs: tensorboard --logdir {log_dir}", file=sys.stderr)
    return metrics


def evaluate(folder, verbose=1):
    """Metrics of a finished run's embedder on its evaluation split (``evaluation.split``; recomputed).

    The embedder computes in the dtype policy the run trained in (``run_log.jsonl``), so
    the metrics are those training reported.
    """
    config, embedder = run_dir.restore_embedder(folder, policy="run")
    scored_split = builders.evaluation_split(config.evaluation, builders.dataset(config.data, config.evaluation.split))
    return builders.evaluation_metrics(config.evaluation, config.data, config.language, config.training.seed,
                                       embedder, scored_split, verbose=verbose)


def enable_determinism():
    """TensorFlow op determinism for the rest of the process (bit-identical reruns; see docs/runs.md).

    ``tf.config.experimental.enable_op_determinism`` makes every op choose a
    deterministic kernel (or raise where none exists); the seeds are set by
    ``keras.utils.set_random_seed``, and the data pipelines are deterministic by
    construction (stateless per-image seeds, ordered parallel maps).
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
