"""LanguageGuidedModel: a Keras model whose train_step adds language guidance to DML."""

import math

import numpy as np
import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.losses.dml import build_dml_loss
from tf_langdml.losses.language_matching import LanguageMatchingLoss

TABLE_INDEXES = ("label", "sample_id")


def prepare_language_table(language_table):
    """Validate a language table and return it as float32 (C, K, D) with unit rows.

    Raises:
        ValueError: wrong rank, NaN/Inf values or all-zero rows (named by index).
    """
    table = np.asarray(language_table, dtype=np.float32)
    if table.ndim == 2:
        table = table[:, np.newaxis, :]
    elif table.ndim != 3:
        raise ValueError(
            f"language_table must be (C, D) for expert labels or (C, K, D) for top-k "
            f"pseudo-labels; got shape {table.shape}."
        )
    if table.shape[0] == 0 or table.shape[1] == 0 or table.shape[2] == 0:
        raise ValueError(f"language_table is empty (shape {table.shape}).")
    bad_rows = np.flatnonzero(~np.isfinite(table).all(axis=(1, 2)))
    if bad_rows.size:
        raise ValueError(
            f"language_table has NaN or Inf values in row(s) {bad_rows[:10].tolist()}"
            f"{' ...' if bad_rows.size > 10 else ''}; recompute the language embeddings."
        )
    norms = np.linalg.norm(table, axis=-1, keepdims=True)
    zero_rows = np.flatnonzero((norms == 0).any(axis=(1, 2)))
    if zero_rows.size:
        raise ValueError(
            f"language_table has all-zero embedding(s) in row(s) {zero_rows[:10].tolist()}; "
            f"a zero vector has no direction, so its cosine similarities are undefined."
        )
    return table / norms


@keras.utils.register_keras_serializable(package="tf_langdml")
class LanguageGuidedModel(keras.Model):
    """An embedder trained with a DML loss plus language guidance (DESIGN.md §3).

    ``call`` returns the embedder's embeddings. ``fit`` takes datasets of
    ``(images, labels)`` or ``(images, labels, sample_ids)``; the table is indexed by
    label (class-level ELG / PLG) or, with ``table_index="sample_id"``, by the sample
    ids (sample-level PLG). The table is a constant: never trained, never saved.

    Args:
        embedder: a ``keras.Model`` mapping images to L2-normalised embeddings,
            such as :func:`~tf_langdml.models.build_embedder` returns.
        language_table: None (plain DML), (C, D) or (C, K, D) language embeddings.
        table_index: ``"label"`` or ``"sample_id"``.
    """

    def __init__(self, embedder, language_table=None, table_index="label", **kwargs):
        super().__init__(**kwargs)
        if table_index not in TABLE_INDEXES:
            raise ValueError(f"Unknown table_index {table_index!r}; expected one of {list(TABLE_INDEXES)}.")
        self.embedder = embedder
        self.table_index = table_index
        self._language_table = None
        if language_table is not None:
            self.set_language_table(language_table)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.dml_loss_tracker = keras.metrics.Mean(name="dml_loss")
        self.language_loss_tracker = keras.metrics.Mean(name="language_loss")
        self.dml_loss = None
        self.language_matching = None
        self.language_weight = 0.0
        self.language_delay = 0
        self.weight_decay = 0.0

    @property
    def language_table(self):
        """The (C, K, D) float32 table with unit rows, or None."""
        return self._language_table

    def set_language_table(self, language_table):
        """Replace the language table (validated; see :func:`prepare_language_table`)."""
        self._language_table = tf.constant(prepare_language_table(language_table))

    def compile(
        self,
        optimizer="adam",
        dml_loss="multisimilarity",
        language_weight=0.0,
        language_shift=1.0,
        language_temperature=1.0,
        language_delay=0,
        language_direction="image_to_language",
        weight_decay=0.0,
        **kwargs,
    ):
        """Configure training.

        Args:
            optimizer: any Keras optimizer (the paper: Adam, learning rate 1e-5).
            dml_loss: a name of :data:`~tf_langdml.losses.DML_LOSSES`, a dict
                ``{"name": ..., **arguments}`` for :func:`~tf_langdml.losses.build_dml_loss`,
                or a TF-Similarity ``MetricLoss``.
            language_weight: ω, the weight of the language-matching loss.
            language_shift: γ; language_temperature: T; language_direction: see
                :func:`~tf_langdml.losses.language_matching_loss`.
            language_delay: optimizer steps before the language loss switches on.
            weight_decay: coupled L2 decay as in PyTorch's ``Adam(weight_decay=...)``,
                which the paper used (4e-4): ``weight_decay * w`` is added to the
                gradient of every trainable variable before the optimizer step, so
                Adam rescales it (unlike the decoupled AdamW). It is not part of the
                reported ``loss``.
            **kwargs: passed to ``keras.Model.compile`` (``loss`` is not accepted;
                use ``dml_loss``).
        """
        if "loss" in kwargs:
            raise ValueError(
                "LanguageGuidedModel computes its own loss: pass dml_loss=... (a name such as "
                "'multisimilarity' or a TF-Similarity loss) instead of loss=..."
            )
        if kwargs.get("metrics") or kwargs.get("weighted_metrics"):
            raise ValueError(
                "LanguageGuidedModel reports loss, dml_loss and language_loss; Keras metrics on "
                "(labels, embeddings) are not meaningful. Measure retrieval (Recall@k, mAP@R) on "
                "held-out classes instead, and drop metrics=... from compile()."
            )
        language_weight = float(language_weight)
        if not math.isfinite(language_weight) or language_weight < 0:
            raise ValueError(f"language_weight must be a finite number >= 0, got {language_weight!r}.")
        if int(language_delay) != language_delay or language_delay < 0:
            raise ValueError(f"language_delay must be a whole number of steps >= 0, got {language_delay!r}.")
        weight_decay = float(weight_decay)
        if not math.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r} (the paper: 4e-4).")
        self.language_matching = LanguageMatchingLoss(
            shift=language_shift, temperature=language_temperature, direction=language_direction
        )
        if isinstance(dml_loss, str):
            dml_loss = build_dml_loss(dml_loss)
        elif isinstance(dml_loss, dict):
            arguments = dict(dml_loss)
            if "name" not in arguments:
                raise ValueError(f"A dml_loss dict needs a 'name' key (for example 'multisimilarity'); got {dml_loss}.")
            dml_loss = build_dml_loss(arguments.pop("name"), **arguments)
        elif not callable(getattr(dml_loss, "call", None)):
            raise ValueError(
                f"dml_loss must be a loss name, a dict for build_dml_loss or a TF-Similarity "
                f"MetricLoss; got {dml_loss!r}."
            )
        super().compile(optimizer=optimizer, **kwargs)
        self.dml_loss = dml_loss
        self.language_weight = language_weight
        self.language_delay = int(language_delay)
        self.weight_decay = weight_decay

    @property
    def metrics(self):
        return [self.loss_tracker, self.dml_loss_tracker, self.language_loss_tracker]

    def call(self, inputs, training=None):
        return self.embedder(inputs, training=training)

    def _unpack(self, data):
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            raise ValueError(
                "LanguageGuidedModel expects batches of (images, labels) or (images, labels, sample_ids); "
                f"got {type(data).__name__} of length {len(data) if isinstance(data, (tuple, list)) else 1}."
            )
        images, labels = data[0], data[1]
        sample_ids = data[2] if len(data) == 3 else None
        if self._language_table is not None and self.table_index == "sample_id" and sample_ids is None:
            raise ValueError(
                "table_index='sample_id' needs batches of (images, labels, sample_ids); "
                "the dataset yields (images, labels)."
            )
        return images, tf.reshape(labels, [-1]), sample_ids

    def _dml_loss_per_anchor(self, labels, embeddings, training):
        loss = self.dml_loss
        if not training:
            from tensorflow_similarity.losses import XBM

            if isinstance(loss, XBM):
                loss = loss.loss  # cross-batch memory must only remember training batches
        # TF-Similarity's losses branch in Python on tensors; AutoGraph converts them,
        # exactly as keras.losses.Loss.__call__ does, so they also work in a tf.function.
        call = tf.__internal__.autograph.tf_convert(loss.call, tf.__internal__.autograph.control_status_ctx())
        # Labels as (B, 1): TF-Similarity reshapes rank-1 labels under `if tf.rank(...) == 1`,
        # a cond whose branches differ in rank, which XLA (jit_compile) cannot compile.
        return call(tf.reshape(labels, [-1, 1]), embeddings)

    def compute_losses(self, data, training):
        """Return (total, dml, language) for one batch; shared by train and test steps."""
        if self.dml_loss is None:
            raise RuntimeError("Call compile() before fit/evaluate.")
        images, labels, sample_ids = self._unpack(data)
        embeddings = tf.cast(self(images, training=training), tf.float32)
        embeddings, labels, sample_ids = _gather_global_batch(embeddings, labels, sample_ids)
        dml = tf.reduce_mean(self._dml_loss_per_anchor(labels, embeddings, training))
        if self._language_table is None:
            language = tf.zeros([], tf.float32)
            total = dml
        else:
            indices = labels if self.table_index == "label" else tf.reshape(sample_ids, [-1])
            language = self.language_matching(embeddings, labels, self._language_table, table_indices=indices)
            # Graph-safe gate: the optimizer's step counter, not a Python counter.
            gate = tf.cast(self.optimizer.iterations >= self.language_delay, tf.float32)
            total = dml + self.language_weight * gate * language
        if self.losses:
            total += tf.add_n([tf.cast(loss, tf.float32) for loss in self.losses])
        return total, dml, language

    def _record(self, total, dml, language):
        self.loss_tracker.update_state(total)
        self.dml_loss_tracker.update_state(dml)
        self.language_loss_tracker.update_state(language)
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data):
        # Every replica computes the loss of the whole global batch; the gradient of
        # all_gather sums what all replicas send back to each one's own images, and the
        # optimizer sums the replicas' gradients, so dividing by the replica count gives
        # exactly the single-device gradient of the global batch.
        replicas = _num_replicas()
        scaled_optimizer = isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            total, dml, language = self.compute_losses(data, training=True)
            objective = total / replicas
            if scaled_optimizer:
                objective = self.optimizer.get_scaled_loss(objective)
        variables = self.trainable_variables
        gradients = tape.gradient(objective, variables)
        if scaled_optimizer:
            gradients = self.optimizer.get_unscaled_gradients(gradients)
        if self.weight_decay:
            gradients = [
                None if gradient is None else gradient + self.weight_decay / replicas * tf.cast(variable, gradient.dtype)
                for gradient, variable in zip(gradients, variables)
            ]
        self.optimizer.apply_gradients(
            (gradient, variable) for gradient, variable in zip(gradients, variables) if gradient is not None
        )
        return self._record(total, dml, language)

    def test_step(self, data):
        return self._record(*self.compute_losses(data, training=False))

    def get_config(self):
        return {
            "embedder": keras.utils.serialize_keras_object(self.embedder),
            "table_index": self.table_index,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        embedder = keras.utils.deserialize_keras_object(config.pop("embedder"), custom_objects=custom_objects)
        return cls(embedder, **config)


def _num_replicas():
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def _gather_global_batch(embeddings, labels, sample_ids):
    """Under tf.distribute: every replica's embeddings, labels and sample ids, concatenated in replica order.

    The losses are then those of the global batch, whatever the number of replicas
    (DESIGN §3); ``all_gather`` passes gradients back to each replica's own slice.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return embeddings, labels, sample_ids
    embeddings = context.all_gather(embeddings, axis=0)
    labels = context.all_gather(labels, axis=0)
    if sample_ids is not None:
        sample_ids = context.all_gather(tf.reshape(sample_ids, [-1]), axis=0)
    return embeddings, labels, sample_ids
