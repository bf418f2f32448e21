"""A training run from a config: run directory, language table, model.fit with resume, final metrics.

Run directory ``<runs_dir>/<name>/``:

- ``config.yaml``: the resolved config (a restart must resolve to the same one);
- ``language_table.npy``, ``train_class_names.json`` and, for PLG, ``pseudo_labels.json``;
- ``logs/``: TensorBoard (``train/``, ``validation/``, the embedding projector);
- ``checkpoints/``: the resume state (model, optimizer, step), every
  ``training.checkpoint_every`` optimizer steps and at every epoch end;
- ``history.json``: per-epoch logs; ``embedder.weights.h5``: the final embedder;
- ``run_log.jsonl``: one line per start of the process, with the optimizer step it began at;
- ``metrics.json``: written last, atomically: the run is complete when it exists.

A run killed at any point and restarted with the same command resumes from its last
checkpoint: the data pipeline's batch b depends only on (seed, b), so it restarts at
the restored optimizer step, and a partial epoch is finished before the next begins;
the run ends with the same epochs and optimizer steps as an unbroken one.

NaN or Inf: a step whose loss or gradients are not finite is not applied and stops the
run with :class:`~tf_langdml.models.NonFiniteLossError` (see
``LanguageGuidedModel.train_step``), at that step; ``run_log.jsonl`` gets a line
``{"event": "nonfinite", "optimizer_step": N, ...}`` before the error propagates.
Nothing written holds NaN or Inf: a checkpoint, a ``history.json`` line or
``embedder.weights.h5`` whose values are not all finite is refused (the same error). A
restart resumes from the newest checkpoint whose variables are all finite (an older one,
or a fresh start, with a message, when the newest is not).
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
from tf_langdml.config import ConfigError, config_to_dict

RUN_FILES = ("config.yaml", "language_table.npy", "train_class_names.json", "history.json", "embedder.weights.h5",
             "metrics.json")


def _flatten(values, prefix=""):
    flat = {}
    for key, value in (values or {}).items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_directory(config):
    """``<runs_dir>/<name>``, created; a different config already there is an error."""
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
            temporary.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    return folder


def load_data(config):
    """The :class:`~tf_langdml.data.SplitDataset` a config names."""
    from tf_langdml.data import load_benchmark, load_demo, load_image_folder

    data = config.data
    decoding = {"background": data.background, "max_pixels": data.max_pixels}
    if data.dataset == "demo":
        return load_demo(**decoding)
    if data.dataset == "folder":
        return load_image_folder(data.data_dir, test_fraction=data.test_fraction, **decoding)
    return load_benchmark(data.dataset, data_dir=data.data_dir, manual_dir=data.manual_dir, **decoding)


def build_language_table(config, data, folder, verbose=1):
    """The (C|N, K, D) table of ELG / PLG (None for the baseline), saved in the run directory."""
    from tf_langdml.language import build_text_encoder, expert_language_table, pseudo_label_table
    from tf_langdml.models import build_imagenet_classifier

    language = config.language
    if language.guidance == "none":
        return None
    path = folder / "language_table.npy"
    encoder = build_text_encoder(language.encoder, output_key=language.output_key)
    if language.guidance == "elg":
        table = expert_language_table(data.train_class_names, encoder, language.template, verbose=bool(verbose))
    else:
        classifier = build_imagenet_classifier(language.classifier, weights=language.classifier_weights,
                                               image_size=language.classifier_image_size)
        table, _ = pseudo_label_table(
            classifier, data.train_split, encoder, k=language.top_k, level=language.level, template=language.template,
            batch_size=config.evaluation.batch_size, output_path=folder / "pseudo_labels.json", verbose=bool(verbose),
        )
    with atomic_file(path) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, table)
    return table


def build_model(config, table):
    """The compiled LanguageGuidedModel (under ``training.mixed_precision``: mixed_float16 layers)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16" if config.training.mixed_precision else "float32")
    try:
        return _build_model(config, table)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_config_embedder(config, weights):
    """The embedder the ``model`` and ``data.image_size`` sections describe, with ``weights``."""
    from tf_langdml.models import build_embedder

    model_config, image_size = config.model, config.data.image_size
    return build_embedder(
        model_config.backbone, weights=weights, embed_dim=model_config.embed_dim, pooling=model_config.pooling,
        freeze_bn_statistics=model_config.freeze_bn_statistics, input_shape=(image_size, image_size, 3),
    )


def _build_model(config, table):
    from tf_langdml.models import LanguageGuidedModel

    embedder = build_config_embedder(config, config.model.weights)
    index = "sample_id" if config.language.guidance == "plg" and config.language.level == "sample" else "label"
    model = LanguageGuidedModel(embedder, language_table=table, table_index=index)
    optimizer_config = config.optimizer
    optimizer = (keras.optimizers.Adam if optimizer_config.name == "adam" else keras.optimizers.SGD)(
        learning_rate=optimizer_config.learning_rate
    )
    loss = config.loss
    model.compile(
        optimizer=optimizer,
        dml_loss={"name": loss.dml, **loss.dml_arguments},
        language_weight=loss.language_weight if table is not None else 0.0,
        language_shift=loss.shift,
        language_temperature=loss.temperature,
        language_delay=loss.delay,
        language_direction=loss.direction,
        weight_decay=optimizer_config.weight_decay,
        jit_compile=config.training.jit_compile,
    )
    optimizer.build(model.trainable_variables)
    return model


class ResumeCheckpoints(keras.callbacks.Callback):
    """Saves model + optimizer every ``every`` optimizer steps and at each epoch end (a tf.train.CheckpointManager)."""

    def __init__(self, manager, every):
        super().__init__()
        self.manager, self.every, self.last_saved = manager, int(every), None

    def _save(self):
        step = int(self.model.optimizer.iterations.numpy())
        if step != self.last_saved:
            _refuse_nonfinite(self.model.variables + list(self.model.optimizer.variables), step,
                              f"checkpoint ckpt-{step}")
            self.manager.save(checkpoint_number=step)  # numbered by optimizer step
            self.last_saved = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) % self.every == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()


def _checkpoint_manager(model, folder):
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(checkpoint, str(folder / "checkpoints"), max_to_keep=2)
    return checkpoint, manager


def _nonfinite_tensors(path):
    """Names of a checkpoint's floating-point tensors holding NaN or Inf."""
    reader = tf.train.load_checkpoint(path)
    return [name for name, dtype in sorted(reader.get_variable_to_dtype_map().items())
            if dtype.is_floating and not np.isfinite(reader.get_tensor(name)).all()]


def _latest_finite_checkpoint(manager):
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


def _refuse_nonfinite(variables, step, what):
    """NonFiniteLossError instead of writing ``what`` when a variable holds NaN or Inf."""
    from tf_langdml.models.language_guided_model import NonFiniteLossError, nonfinite_variables

    bad = nonfinite_variables(variables)
    if bad:
        raise NonFiniteLossError(
            f"Not writing {what}: after optimizer step {step} variable(s) {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''} hold NaN or Inf (an update overflowed: lower the learning rate, "
            "or check mixed precision without loss scaling, the language table and the input images).", step=step)


def _log_event(folder, record):
    with open(folder / "run_log.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**record, "time": time.time()}) + "\n")


def _fit(model, folder, *args, **kwargs):
    """``model.fit``; a NonFiniteLossError is logged to ``run_log.jsonl`` before it propagates."""
    from tf_langdml.models import NonFiniteLossError

    try:
        return model.fit(*args, **kwargs)
    except NonFiniteLossError as error:
        _log_nonfinite(folder, model, error)
        raise


def _log_nonfinite(folder, model, error):
    step = error.step if error.step is not None else int(model.optimizer.iterations.numpy())
    values = {key: value if not isinstance(value, float) or math.isfinite(value) else str(value)
              for key, value in error.values.items()}
    _log_event(folder, {"event": "nonfinite", "optimizer_step": int(step), **values,
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


def final_metrics(config, model, data, verbose=1):
    """Retrieval, clustering and semantic-consistency metrics on the test split."""
    from tf_langdml.evaluation import (clustering_metrics, embed_split, make_recall_at_1, nearest_neighbors,
                                       retrieval_metrics, semantic_consistency)

    split = data.test_split
    embeddings = embed_split(model, split, config.evaluation.batch_size, config.data.image_size, verbose=verbose)
    metrics = retrieval_metrics(embeddings, split.labels, config.evaluation.ks)
    if config.evaluation.clustering:
        metrics.update(clustering_metrics(embeddings, split.labels, seed=config.training.seed))
    if config.evaluation.semantic:
        neighbors = nearest_neighbors(embeddings, k=1)[0][:, 0]
        from tf_langdml.language import build_text_encoder

        encoder = build_text_encoder(config.language.encoder, output_key=config.language.output_key)
        metrics.update(semantic_consistency(embeddings, split.labels, split.class_names, encoder,
                                            config.language.template, neighbors=neighbors))
        if config.data.dataset == "cars196":
            metrics["make_recall@1"] = make_recall_at_1(embeddings, split.labels, split.class_names, neighbors)
    return metrics


def train(config, verbose=1):
    """Train (or resume) the run a config describes; returns the final ``metrics.json`` contents."""
    from tf_langdml.data import make_train_dataset
    from tf_langdml.evaluation import LanguageGuidanceTensorBoard, RetrievalEvaluation

    folder = run_directory(config)
    if (folder / "metrics.json").exists():
        if verbose:
            print(f"tf_langdml: run {folder} is complete; its metrics are in {folder / 'metrics.json'}.")
        return json.loads((folder / "metrics.json").read_text())
    keras.utils.set_random_seed(config.training.seed)
    data = load_data(config)
    split = data.train_split
    batch_size, per_class = config.data.batch_size, config.data.examples_per_class
    if batch_size // per_class > split.num_classes:
        raise ConfigError(
            f"data.batch_size {batch_size} / examples_per_class {per_class} = {batch_size // per_class} classes per "
            f"batch, but the training split has only {split.num_classes}; lower data.batch_size."
        )
    write_json(folder / "train_class_names.json", list(split.class_names))
    table = build_language_table(config, data, folder, verbose)
    model = build_model(config, table)
    checkpoint, manager = _checkpoint_manager(model, folder)
    resume_from = _latest_finite_checkpoint(manager)
    if resume_from:
        checkpoint.restore(resume_from).assert_existing_objects_matched()
        if verbose:
            print(f"tf_langdml: resuming {folder} from optimizer step {int(model.optimizer.iterations.numpy())}.")
    steps_per_epoch = config.training.steps_per_epoch or max(1, len(split.labels) // batch_size)
    total_steps = steps_per_epoch * config.training.epochs
    step = int(model.optimizer.iterations.numpy())
    _log_event(folder, {"event": "start", "optimizer_step": step})  # one line per (re)start
    sample_ids = model.table_index == "sample_id"
    log_dir = str(folder / "logs")
    fixed_batch = next(iter(make_train_dataset(split, batch_size, per_class, seed=config.training.seed + 1,
                                               image_size=config.data.image_size, with_sample_ids=sample_ids)))
    callbacks = [
        RetrievalEvaluation(data.test_split, every=config.training.eval_every, batch_size=config.evaluation.batch_size,
                            image_size=config.data.image_size, ks=config.evaluation.ks, log_dir=log_dir, verbose=0),
        LanguageGuidanceTensorBoard(log_dir, fixed_batch=fixed_batch, every=config.training.eval_every,
                                    projector_split=data.test_split, image_size=config.data.image_size),
        HistoryFile(folder / "history.json"),
        ResumeCheckpoints(manager, config.training.checkpoint_every),
    ]
    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        train_data = make_train_dataset(split, batch_size, per_class, seed=config.training.seed,
                                        image_size=config.data.image_size, with_sample_ids=sample_ids,
                                        start_batch=step, antialias=config.data.antialias)
        # A partial epoch first (after a resume), then whole epochs.
        last_epoch = epoch + 1 if done_in_epoch else config.training.epochs
        _fit(model, folder, train_data, initial_epoch=epoch, epochs=last_epoch,
             steps_per_epoch=steps_per_epoch - done_in_epoch if done_in_epoch else steps_per_epoch,
             callbacks=callbacks, verbose=2 if verbose else 0)
        step = int(model.optimizer.iterations.numpy())
    try:
        _refuse_nonfinite(model.embedder.variables, step, "embedder.weights.h5")
    except FloatingPointError as error:  # NonFiniteLossError
        _log_nonfinite(folder, model, error)
        raise
    model.embedder.save_weights(str(folder / "embedder.weights.h5"))
    metrics = final_metrics(config, model, data, verbose=verbose)
    metrics.update({"epochs": math.ceil(step / steps_per_epoch), "optimizer_steps": step,
                    "steps_per_epoch": steps_per_epoch})
    metrics = json_safe(metrics)  # what metrics.json holds (NaN -> None), also on a later call
    write_json(folder / "metrics.json", metrics)
    if verbose:
        print(f"tf_langdml: run {folder} done; TensorBoard logs: tensorboard --logdir {log_dir}", file=sys.stderr)
    return metrics


def restore_embedder(folder):
    """The trained embedder of a finished run directory (config + embedder.weights.h5)."""
    from tf_langdml.config import config_from_dict

    folder = pathlib.Path(folder)
    weights = folder / "embedder.weights.h5"
    if not weights.exists():
        raise FileNotFoundError(f"{folder} has no embedder.weights.h5: the run has not finished (run train again).")
    config = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    embedder = build_config_embedder(config, weights=None)
    embedder.load_weights(str(weights))
    return config, embedder


def evaluate(folder, verbose=1):
    """Metrics of a finished run's embedder on its test split (recomputed)."""
    config, embedder = restore_embedder(folder)
    return final_metrics(config, embedder, load_data(config), verbose)

