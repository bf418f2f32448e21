"""Keras callbacks: retrieval metrics on the unseen classes, and TensorBoard views of language guidance."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

from tf_langdml._keras import keras
from tf_langdml.evaluation.retrieval import DEFAULT_KS, retrieval_metrics
from tf_langdml.inference import embed_split
from tf_langdml.language.table import LanguageTable


class RetrievalEvaluation(keras.callbacks.Callback):
    """Every ``every`` epochs: embed the test split, compute retrieval metrics, put them into ``logs``.

    Keys are ``val_recall@1``, ``val_recall@2``, ..., ``val_map@r``, ``val_map@1000`` (and
    ``val_nmi``, ``val_f1`` with ``clustering=True``), so ``ModelCheckpoint(monitor=
    "val_recall@1", mode="max")`` and ``History`` see them; place this callback before
    those in the list. With ``log_dir`` they also go to TensorBoard (``<log_dir>/validation``).
    """

    def __init__(self, split, every=1, batch_size=64, image_size=224, ks=DEFAULT_KS, log_dir=None,
                 clustering=False, prefix="val_", verbose=1):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be >= 1 epoch; got {every}.")
        self.split, self.every, self.batch_size, self.image_size = split, int(every), batch_size, image_size
        self.ks, self.clustering, self.prefix, self.verbose = tuple(ks), clustering, prefix, verbose
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "validation")) if log_dir else None
        self.results = []  # (epoch, metrics) of every evaluation

    def evaluate(self):
        embeddings = embed_split(self.model, self.split, self.batch_size, self.image_size, verbose=self.verbose)
        metrics = retrieval_metrics(embeddings, self.split.labels, self.ks)
        if self.clustering:
            from tf_langdml.evaluation.clustering import clustering_metrics

            metrics.update(clustering_metrics(embeddings, self.split.labels))
        return metrics

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        metrics = self.evaluate()
        self.results.append((epoch + 1, metrics))
        if logs is not None:
            logs.update({self.prefix + name: value for name, value in metrics.items()})
        if self.writer is not None:
            with self.writer.as_default():
                for name, value in metrics.items():
                    tf.summary.scalar(name, value, step=epoch + 1)
            self.writer.flush()
        if self.verbose:
            shown = "  ".join(f"{self.prefix}{name}: {value:.4f}" for name, value in metrics.items())
            print(f"epoch {epoch + 1}: {shown}")


# A diverging colour scale for similarities in [-1, 1]: blue (-1) - white (0) - red (+1).
_COLOUR_STOPS = np.array([[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]], np.float64)


def similarity_heatmap(matrix, low=-1.0, high=1.0, scale=4):
    """RGB uint8 image of a similarity matrix on a fixed colour scale (each entry a ``scale`` x ``scale`` square)."""
    values = np.clip((np.asarray(matrix, np.float64) - low) / (high - low), 0.0, 1.0) * (len(_COLOUR_STOPS) - 1)
    lower = np.floor(values).astype(int).clip(0, len(_COLOUR_STOPS) - 2)
    fraction = (values - lower)[..., None]
    colours = _COLOUR_STOPS[lower] * (1 - fraction) + _COLOUR_STOPS[lower + 1] * fraction
    image = np.round(colours).astype(np.uint8)
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def side_by_side(left, right, gap=4):
    """Two images with a white gap between them."""
    spacer = np.full((left.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


def language_similarity(table: LanguageTable | ArrayLike, indices: ArrayLike) -> np.ndarray:
    """S_lang of docs/loss.md for table rows ``indices``: (B, B) float32, :meth:`LanguageTable.similarities`.

    ``table`` is a :class:`~tf_langdml.language.LanguageTable`, or an array made into one.
    """
    return LanguageTable.coerce(table).similarities(np.asarray(indices).reshape(-1)).numpy()


class LanguageGuidanceTensorBoard(keras.callbacks.Callback):
    """TensorBoard for language-guided training, one log dir per run.

    - ``<log_dir>/train``: per-step ``loss``, ``dml_loss``, ``language_loss`` (the step's
      own values, recovered from Keras' running epoch means) and ``learning_rate``.
    - every ``every`` epochs (at each evaluation, when ``every`` is the evaluation
      interval), the image ``similarity/image_vs_language``: S_img (left) and S_lang
      (right) of one fixed batch, on the same colour scale (-1 blue, 0 white, +1 red),
      so the alignment can be watched.
    - every ``diagnostics_every`` epochs (None: never), ``diagnostics/<name>`` for each
      value of :func:`~tf_langdml.evaluation.diagnostics.loss_diagnostics` on the fixed
      batch (the gradient-norm ratio of ω·L_match to L_DML, mean same-class and
      other-class image similarity, mean language similarity), also added to the
      epoch's ``logs`` (so ``History`` and ``history.json`` keep them); once at the
      start, the language table's off-class similarity mean and spread.
    - at the end of training (and every ``projector_every`` epochs if set), the embedding
      projector for up to ``projector_size`` test embeddings with class names as metadata.
    """

    def __init__(self, log_dir, fixed_batch=None, every=1, projector_split=None, projector_size=1000,
                 projector_every=None, image_size=224, update_freq=1, diagnostics_every=None):
        super().__init__()
        if diagnostics_every is not None and int(diagnostics_every) < 1:
            raise ValueError(f"diagnostics_every must be >= 1 epoch or None; got {diagnostics_every}.")
        self.diagnostics_every = None if diagnostics_every is None else int(diagnostics_every)
        self.log_dir = str(log_dir)
        self.fixed_batch = fixed_batch
        self.every, self.projector_every, self.update_freq = int(every), projector_every, int(update_freq)
        self.projector_split, self.projector_size, self.image_size = projector_split, projector_size, image_size
        self.writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        self._previous = {}

    # -- per-step scalars ------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._previous = {}

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        step = int(self.model.optimizer.iterations.numpy())
        count = batch + 1
        with self.writer.as_default():
            for name in ("loss", "dml_loss", "language_loss"):
                if name not in logs:
                    continue
                mean = float(logs[name])
                previous_count, previous_mean = self._previous.get(name, (0, 0.0))
                value = (count * mean - previous_count * previous_mean) / max(count - previous_count, 1)
                self._previous[name] = (count, mean)
                if step % self.update_freq == 0:
                    tf.summary.scalar(name, value, step=step)
            if step % self.update_freq == 0:
                tf.summary.scalar("learning_rate", self._learning_rate(), step=step)

    def _learning_rate(self):
        optimizer = self.model.optimizer
        rate = optimizer.learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = rate(optimizer.iterations)
        return float(tf.convert_to_tensor(rate).numpy())

    # -- heat maps -------------------------------------------------------------------------
    def similarity_image(self):
        """(1, H, W, 3) uint8: S_img beside S_lang for the fixed batch."""
        images, labels = self.fixed_batch[0], np.asarray(self.fixed_batch[1]).reshape(-1)
        embeddings = np.asarray(self.model(images, training=False), np.float64)
        embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        image_similarity = embeddings @ embeddings.T
        table = getattr(self.model, "language_table", None)
        if table is None:
            language = np.zeros_like(image_similarity)
        else:
            sample_ids = self.fixed_batch[2] if len(self.fixed_batch) > 2 else None
            language = table.similarities(self.model.table_rows(labels, sample_ids)).numpy()  # the training step's S_lang, same rows
        return side_by_side(similarity_heatmap(image_similarity), similarity_heatmap(language))[None]

    # -- loss diagnostics ------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        table = getattr(self.model, "language_table", None)
        if self.diagnostics_every is None or table is None:
            return
        from tf_langdml.evaluation.diagnostics import language_table_statistics

        with self.writer.as_default():
            for name, value in language_table_statistics(table).items():
                tf.summary.scalar(f"diagnostics/{name}", value, step=0)

    def diagnostics(self):
        """:func:`~tf_langdml.evaluation.diagnostics.loss_diagnostics` of the fixed batch."""
        from tf_langdml.evaluation.diagnostics import loss_diagnostics

        return loss_diagnostics(self.model, self.fixed_batch)

    def on_epoch_end(self, epoch, logs=None):
        if (self.fixed_batch is not None and self.diagnostics_every is not None
                and (epoch + 1) % self.diagnostics_every == 0 and getattr(self.model, "dml_loss", None) is not None):
            values = self.diagnostics()
            with self.writer.as_default():
                for name, value in values.items():
                    tf.summary.scalar(f"diagnostics/{name}", value, step=epoch + 1)
            if logs is not None:
                logs.update({f"diagnostics/{name}": value for name, value in values.items()})
        if self.fixed_batch is not None and (epoch + 1) % self.every == 0:
            with self.writer.as_default():
                tf.summary.image("similarity/image_vs_language", self.similarity_image(), step=epoch + 1)
        if self.projector_every and (epoch + 1) % self.projector_every == 0:
            self.write_projector()
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.projector_split is not None:
            self.write_projector()
        self.writer.flush()

    # -- embedding projector ---------------------------------------------------------------
    def write_projector(self):
        """Checkpoint of a subsample of test embeddings + metadata.tsv + projector_config.pbtxt."""
        split = self.projector_split
        count = len(split.labels)
        chosen = np.sort(np.random.default_rng(0).choice(count, min(count, self.projector_size), replace=False))
        subset = split.subset(chosen)
        embeddings = embed_split(self.model, subset, image_size=self.image_size, verbose=0)
        folder = self.log_dir
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "metadata.tsv"), "w", encoding="utf-8") as handle:
            handle.write("class\tlabel\n")
            for label in subset.labels:
                name = str(split.class_names[label]).replace("\t", " ").replace("\n", " ")
                handle.write(f"{name}\t{label}\n")
        checkpoint = tf.train.Checkpoint(embedding=tf.Variable(embeddings, name="test_embeddings"))
        checkpoint.write(os.path.join(folder, "projector", "embedding.ckpt"))
        config = (
            "embeddings {\n"
            '  tensor_name: "embedding/.ATTRIBUTES/VARIABLE_VALUE"\n'
            '  metadata_path: "metadata.tsv"\n'
            "}\n"
            'model_checkpoint_path: "projector/embedding.ckpt"\n'
        )
        with open(os.path.join(folder, "projector_config.pbtxt"), "w", encoding="utf-8") as handle:
            handle.write(config)
        return embeddings
