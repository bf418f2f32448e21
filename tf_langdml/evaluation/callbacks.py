"""Keras callbacks: retrieval metrics on the unseen classes, and TensorBoard views of language guidance."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

from tf_langdml._keras import keras
from tf_langdml.data.preprocessing import eval_preprocess
from tf_langdml.errors import ArgumentError
from tf_langdml.evaluation.clustering import clustering_metrics
from tf_langdml.evaluation.diagnostics import language_table_statistics, loss_diagnostics
from tf_langdml.evaluation.embedding_space import embedding_space_metrics
from tf_langdml.evaluation.pictures import retrieval_grid, similarity_figure
from tf_langdml.evaluation.retrieval import DEFAULT_KS, normalized_embeddings, split_retrieval_metrics
from tf_langdml.inference import embed_split
from tf_langdml.language.language_table import LanguageTable


class RetrievalEvaluation(keras.callbacks.Callback):
    """Every ``every`` epochs: embed the test split, compute retrieval metrics, put them into ``logs``.

    Keys are ``val_recall@1``, ``val_recall@2``, ..., ``val_map@r``, ``val_map@1000``, the
    embedding-space diagnostics ``val_intra``, ``val_inter``, ``val_intra_over_inter``,
    ``val_rho_spectrum`` (:func:`~tf_langdml.evaluation.embedding_space_metrics`; one that is
    undefined for the split is left out) (and ``val_nmi``, ``val_f1`` with ``clustering=True``),
    so ``ModelCheckpoint(monitor="val_recall@1", mode="max")`` and ``History`` see them; place
    this callback before those in the list. With ``log_dir`` they also go to TensorBoard
    (``<log_dir>/validation``). A split with a gallery mask (``split.gallery``) is evaluated
    with the query / gallery protocol (:func:`~tf_langdml.evaluation.split_retrieval_metrics`),
    the diagnostics and clustering on all its images.
    """

    def __init__(
        self,
        split,
        every=1,
        batch_size=64,
        image_size=224,
        ks=DEFAULT_KS,
        log_dir=None,
        clustering=False,
        prefix="val_",
        verbose=1,
    ):
        super().__init__()
        if every < 1:
            raise ArgumentError(f"every must be >= 1 epoch; got {every}.", argument="every")
        self.split, self.every, self.batch_size, self.image_size = split, int(every), batch_size, image_size
        self.ks, self.clustering, self.prefix, self.verbose = tuple(ks), clustering, prefix, verbose
        self.log_dir = log_dir
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "validation")) if log_dir else None
        self.results = []  # (epoch, metrics) of every evaluation
        self.last_embeddings = None

    def evaluate(self):
        embeddings = embed_split(self.model, self.split, self.batch_size, self.image_size, verbose=self.verbose)
        self.last_embeddings = embeddings  # the split's embeddings of the latest evaluation, for other callbacks
        metrics = split_retrieval_metrics(embeddings, self.split, self.ks)  # query / gallery if marked
        metrics.update(embedding_space_metrics(embeddings, self.split.labels))
        if self.clustering:
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


class RetrievalPictures(keras.callbacks.Callback):
    """After every evaluation of a :class:`RetrievalEvaluation`: its fixed queries' top-k retrievals, in TensorBoard.

    ``num_queries`` query images are chosen once (seeded by ``seed``; from distinct classes
    where possible; only images whose class has another image to retrieve). After each
    evaluation, each query's ``k`` nearest neighbours by cosine similarity of the
    evaluation's own embeddings (``evaluation.last_embeddings``; the split is not embedded
    again) are found leave-one-out (or among the gallery images, for a split with a gallery
    mask), decoded as the split decodes them with eval preprocessing to ``image_size``
    thumbnails, and drawn by :func:`~tf_langdml.evaluation.pictures.retrieval_grid`: the
    image ``retrieval/top5`` (``retrieval/top<k>``) in ``<log_dir>/validation`` at step
    epoch + 1, beside the metrics. ``log_dir`` None: the evaluation's own ``log_dir``.

    List it after ``evaluation`` in the callbacks: an epoch whose evaluation has not run
    by the time this callback is called raises a RuntimeError.
    """

    def __init__(self, evaluation, log_dir=None, num_queries=8, k=5, image_size=128, seed=0):
        super().__init__()
        if not isinstance(evaluation, RetrievalEvaluation):
            raise TypeError(f"evaluation must be a RetrievalEvaluation; got {type(evaluation).__name__}.")
        if int(num_queries) < 1 or int(k) < 1:
            raise ValueError(f"num_queries and k must be >= 1; got {num_queries} and {k}.")
        self.evaluation, self.num_queries, self.k = evaluation, int(num_queries), int(k)
        self.image_size, self.seed = int(image_size), seed
        log_dir = evaluation.log_dir if log_dir is None else log_dir
        if not log_dir:
            raise ValueError("RetrievalPictures needs a log_dir (its own or the evaluation's).")
        self.log_dir = str(log_dir)
        if evaluation.writer is not None and os.path.abspath(str(evaluation.log_dir)) == os.path.abspath(self.log_dir):
            self.writer = evaluation.writer  # one event file for the metrics and their pictures
        else:
            self.writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "validation"))
        self.tag = f"retrieval/top{self.k}"
        self.queries = None  # the fixed query indices into evaluation.split, chosen at the first picture
        self.pictures = []  # (epoch, query indices, (num_queries, k) retrieved indices) of every picture
        self._thumbnails, self._load = {}, None

    def _gallery(self):
        split = self.evaluation.split
        return np.ones(len(split.labels), bool) if split.gallery is None else np.asarray(split.gallery)

    def choose_queries(self):
        """``num_queries`` indices into the split: seeded, distinct classes first, each with something to retrieve."""
        labels = np.asarray(self.evaluation.split.labels).reshape(-1)
        gallery = self._gallery()
        candidates = np.arange(labels.size) if self.evaluation.split.gallery is None else np.flatnonzero(~gallery)
        gallery_counts = np.bincount(labels[gallery], minlength=labels.max() + 1)
        # Another image of the class in the gallery (not counting the query itself).
        eligible = candidates[gallery_counts[labels[candidates]] - gallery[candidates] >= 1]
        if eligible.size == 0:
            eligible = candidates
        eligible = np.random.default_rng(self.seed).permutation(eligible)
        # Round robin over the classes in their (random) order of appearance: the first image of
        # each class, then the second of each, ...
        _, first, inverse = np.unique(labels[eligible], return_index=True, return_inverse=True)
        class_order = np.argsort(np.argsort(first))[inverse.reshape(-1)]
        seen = np.zeros(first.size, np.int64)
        round_number = np.zeros(eligible.size, np.int64)
        for position, label in enumerate(inverse.reshape(-1)):
            round_number[position], seen[label] = seen[label], seen[label] + 1
        chosen = eligible[np.lexsort((class_order, round_number))][: self.num_queries].astype(np.int64)
        return chosen[np.lexsort((chosen, labels[chosen]))]  # shown by class, then index

    def neighbors(self, embeddings):
        """((Q, k) indices into the split, (Q, k) cosine similarities) of each fixed query, itself left out."""
        embeddings = normalized_embeddings(embeddings)
        similarities = embeddings[self.queries] @ embeddings.T  # (Q, N): only a few queries
        similarities[np.arange(self.queries.size), self.queries] = -np.inf
        similarities[:, ~self._gallery()] = -np.inf
        k = min(self.k, int(np.isfinite(similarities).sum(axis=1).min()))
        order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]  # ties -> the lower index
        return order, np.take_along_axis(similarities, order, axis=1)

    def thumbnail(self, index):
        """The split's image ``index`` as the split decodes it, eval-preprocessed to ``image_size``: uint8."""
        image = self._thumbnails.get(index)
        if image is None:
            split = self.evaluation.split
            if self._load is None:
                self._load = tf.function(
                    lambda source: eval_preprocess(split.decode(split.encoded(source)), size=self.image_size),
                    input_signature=[tf.TensorSpec([], tf.string)],
                    autograph=False,
                )  # traced once
            image = self._load(tf.constant(split.sources[index])).numpy().round().astype(np.uint8)
            if len(self._thumbnails) >= 4096:
                self._thumbnails.clear()
            self._thumbnails[index] = image
        return image

    def picture(self, embeddings):
        """(1, H, W, 3) uint8 retrieval grid of the fixed queries for the split's ``embeddings``; and the neighbours."""
        if self.queries is None:
            self.queries = self.choose_queries()
        split = self.evaluation.split
        labels, names = np.asarray(split.labels).reshape(-1), split.class_names
        found, scores = self.neighbors(embeddings)
        grid = retrieval_grid(
            [self.thumbnail(int(query)) for query in self.queries],
            [names[labels[query]] for query in self.queries],
            [[self.thumbnail(int(index)) for index in row] for row in found],
            [[names[labels[index]] for index in row] for row in found],
            labels[found] == labels[self.queries][:, None],
            scores,
        )
        return grid[None], found

    def on_epoch_end(self, epoch, logs=None):
        evaluation = self.evaluation
        if (epoch + 1) % evaluation.every:
            return
        if not evaluation.results or evaluation.results[-1][0] != epoch + 1 or evaluation.last_embeddings is None:
            raise RuntimeError(
                f"RetrievalPictures: the RetrievalEvaluation of epoch {epoch + 1} has not run. List RetrievalPictures "
                "after its RetrievalEvaluation in the callbacks, and pass both to fit."
            )
        image, found = self.picture(evaluation.last_embeddings)
        self.pictures.append((epoch + 1, self.queries.copy(), found))
        with self.writer.as_default():
            tf.summary.image(self.tag, image, step=epoch + 1)
        self.writer.flush()


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
      (right) of one fixed batch, on the same colour scale (-1 blue, 0 white, +1 red) with
      a colour bar and the batch's class names on the axes (``class_names[label]``; the
      label numbers when ``class_names`` is None), so the alignment can be watched
      (:func:`~tf_langdml.evaluation.pictures.similarity_figure`).
    - every ``diagnostics_every`` epochs (None: never), ``diagnostics/<name>`` for each
      value of :func:`~tf_langdml.evaluation.diagnostics.loss_diagnostics` on the fixed
      batch (the gradient-norm ratio of ω·L_match to L_DML, mean same-class and
      other-class image similarity, mean language similarity), also added to the
      epoch's ``logs`` (so ``History`` and ``history.json`` keep them); once at the
      start, the language table's off-class similarity mean and spread.
    - at the end of training (and every ``projector_every`` epochs if set), the embedding
      projector for up to ``projector_size`` test embeddings with class names as metadata.
    """

    def __init__(
        self,
        log_dir,
        fixed_batch=None,
        every=1,
        projector_split=None,
        projector_size=1000,
        projector_every=None,
        image_size=224,
        update_freq=1,
        diagnostics_every=None,
        class_names=None,
    ):
        super().__init__()
        if diagnostics_every is not None and int(diagnostics_every) < 1:
            raise ValueError(f"diagnostics_every must be >= 1 epoch or None; got {diagnostics_every}.")
        self.diagnostics_every = None if diagnostics_every is None else int(diagnostics_every)
        self.log_dir = str(log_dir)
        self.fixed_batch = fixed_batch
        self.class_names = None if class_names is None else tuple(class_names)
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
        """(1, H, W, 3) uint8: S_img beside S_lang for the fixed batch, class names on the axes, a colour bar."""
        images, labels = self.fixed_batch[0], np.asarray(self.fixed_batch[1]).reshape(-1)
        embeddings = np.asarray(self.model(images, training=False), np.float64)
        embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        image_similarity = embeddings @ embeddings.T
        table = getattr(self.model, "language_table", None)
        if table is None:
            language = None
        else:
            sample_ids = self.fixed_batch[2] if len(self.fixed_batch) > 2 else None
            language = table.similarities(
                self.model.table_rows(labels, sample_ids)
            ).numpy()  # the training step's S_lang, same rows
        if self.class_names is None:
            names = [str(label) for label in labels]
        else:
            names = [str(self.class_names[label]) for label in labels]
        return similarity_figure(image_similarity, language, names)[None]

    # -- loss diagnostics ------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        table = getattr(self.model, "language_table", None)
        if self.diagnostics_every is None or table is None:
            return
        with self.writer.as_default():
            for name, value in language_table_statistics(table).items():
                tf.summary.scalar(f"diagnostics/{name}", value, step=0)

    def diagnostics(self):
        """:func:`~tf_langdml.evaluation.diagnostics.loss_diagnostics` of the fixed batch."""
        return loss_diagnostics(self.model, self.fixed_batch)

    def on_epoch_end(self, epoch, logs=None):
        if (
            self.fixed_batch is not None
            and self.diagnostics_every is not None
            and (epoch + 1) % self.diagnostics_every == 0
            and getattr(self.model, "dml_loss", None) is not None
        ):
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
