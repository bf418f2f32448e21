"""LanguageGuidedModel: a Keras model whose train_step adds language guidance to DML."""

from __future__ import annotations

import math
import re

import tensorflow as tf
from numpy.typing import ArrayLike

from tf_langdml._keras import keras
from tf_langdml.language.table import LanguageTable
from tf_langdml.losses.base import BatchLoss, collect_learning_rate_groups, dml_loss_value
from tf_langdml.losses.dml import build_dml_loss
from tf_langdml.losses.language_matching import LanguageMatchingLoss

TABLE_INDEXES = ("label", "sample_id")

# Starts the message of the in-graph check that stops a non-finite step (see train_step).
NONFINITE_MARKER = "tf_langdml-nonfinite"


class NonFiniteLossError(FloatingPointError):
    """A training step's loss or gradients were NaN or Inf; its update was not applied.

    Attributes:
        step: the optimizer step of the failed update, 0-based: ``optimizer.iterations``
            before it (so also the number of updates applied before it).
        values: ``{"loss", "dml_loss", "language_loss": float, "gradients_finite": bool or
            None}`` of the failed step (None: not checked, as under loss scaling); may be
            empty when the error comes from a guard on written files.
        learning_rate: the optimizer's learning rate when it failed (or None).
    """

    def __init__(self, message, step=None, values=None, learning_rate=None):
        super().__init__(message)
        self.step, self.values, self.learning_rate = step, dict(values or {}), learning_rate


class _Untracked:
    """Holds objects outside Keras' tracking (not in weights, checkpoints or the model's layers)."""

    def __init__(self, value=None):
        self.value = value


class _NonFiniteRecord:
    """Holds the XLA path's sticky record outside Keras' tracking (so not in weights or checkpoints)."""

    def __init__(self):
        self.record = None  # tf.Variable float64 [step, loss, dml_loss, language_loss, gradients_finite]


_CLEAR_RECORD = [-1.0, 0.0, 0.0, 0.0, 1.0]


def nonfinite_variables(variables):
    """Names of the floating-point variables holding NaN or Inf (eager; one reduction per variable)."""
    floats = [variable for variable in variables if variable.dtype.is_floating]
    if not floats:
        return []
    flags = tf.stack([tf.reduce_all(tf.math.is_finite(variable)) for variable in floats]).numpy()
    return [variable.name for variable, finite in zip(floats, flags) if not finite]


@keras.utils.register_keras_serializable(package="tf_langdml")
class LanguageGuidedModel(keras.Model):
    """An embedder trained with a DML loss plus language guidance (docs/loss.md, "The training step").

    ``call`` returns the embedder's embeddings. ``fit`` takes datasets of
    ``(images, labels)`` or ``(images, labels, sample_ids)``; the table is indexed by
    label (class-level ELG / PLG) or, with ``table_index="sample_id"``, by the sample
    ids (sample-level PLG). The table is a constant: never trained, never saved.

    Args:
        embedder: a ``keras.Model`` mapping images to L2-normalised embeddings,
            such as :func:`~tf_langdml.models.build_embedder` returns.
        language_table: None (plain DML), a :class:`~tf_langdml.language.LanguageTable`,
            or (C, D) / (C, K, D) language embeddings (made one with
            :meth:`LanguageTable.from_array <tf_langdml.language.LanguageTable.from_array>`).
        table_index: ``"label"`` or ``"sample_id"``.
    """

    def __init__(
        self,
        embedder: keras.Model,
        language_table: LanguageTable | ArrayLike | None = None,
        table_index: str = "label",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self._nonfinite = _NonFiniteRecord()
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
        self.loss_optimizers = []  # one per learning-rate group of the loss's variables (see compile)
        self._loss_groups = _Untracked([])  # [(optimizer, frozenset of variable refs)]
        self._feature_model = _Untracked()  # embedder inputs -> (embeddings, feature maps), for S2SD
        self.language_matching = None
        self.language_weight = 0.0
        self.language_delay = 0
        self.weight_decay = 0.0

    @property
    def language_table(self) -> LanguageTable | None:
        """The :class:`~tf_langdml.language.LanguageTable` (C, K, D, unit rows), or None."""
        return self._language_table

    def set_language_table(self, language_table: LanguageTable | ArrayLike | None) -> None:
        """Replace the language table (None: plain DML).

        An array is validated and normalised once by :meth:`LanguageTable.from_array
        <tf_langdml.language.LanguageTable.from_array>`; the training step uses the rows
        as they are. Traced train/test functions are dropped, so the next ``fit`` or
        ``evaluate`` uses the new table.
        """
        table = None if language_table is None else LanguageTable.coerce(language_table)
        if table is not None:
            table.tensor  # noqa: B018  (creates the constant now, eagerly, on the default device)
        self._language_table = table
        self.train_function = self.test_function = None

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
        num_classes=None,
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
                reported ``loss``. The loss's own variables (proxies, class vectors, β,
                S2SD's heads) get none, as in the paper's code.
            num_classes: the number of training classes, for the losses that learn a
                vector per class (``proxy_anchor``, ``proxy_nca``, ``normalized_softmax``,
                ``arcface``, ``margin``'s β); default: the language table's rows when it
                is indexed by label.
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
        self._setup_loss_state(dml_loss, num_classes)
        self.language_weight = language_weight
        self.language_delay = int(language_delay)
        self.weight_decay = weight_decay

    def _setup_loss_state(self, dml_loss, num_classes):
        """Create a BatchLoss's variables and one optimizer per learning-rate group (under the model's strategy)."""
        self._loss_groups.value = []
        self.loss_optimizers = []
        self._feature_model.value = None
        if not isinstance(dml_loss, BatchLoss):
            self.dml_loss = dml_loss
            return
        if num_classes is None and dml_loss.needs_classes and self._language_table is not None \
                and self.table_index == "label":
            num_classes = self._language_table.num_rows
        feature_dim = None
        if dml_loss.needs_features:
            self._feature_model.value = _feature_model(self.embedder)
            feature_dim = int(self._feature_model.value.outputs[1].shape[-1])
        embed_dim = int(self.embedder.outputs[0].shape[-1])
        with self.distribute_strategy.scope():
            dml_loss.setup(num_classes, embed_dim, feature_dim)
            self.dml_loss = dml_loss  # a tracked sub-layer: its variables train and are checkpointed
            groups = collect_learning_rate_groups(dml_loss)
            optimizers = [_group_optimizer(self.optimizer, group, index) for index, group in enumerate(groups)]
        self.loss_optimizers = optimizers
        self._loss_groups.value = [(optimizer, frozenset(variable.ref() for variable in group.variables))
                                   for optimizer, group in zip(optimizers, groups)]

    def build_optimizers(self):
        """Create every optimizer's slots now (for a checkpoint restore that must match them all)."""
        grouped = set().union(*(refs for _, refs in self._loss_groups.value)) if self._loss_groups.value else set()
        self.optimizer.build([variable for variable in self.trainable_variables if variable.ref() not in grouped])
        for optimizer, refs in self._loss_groups.value:
            optimizer.build([variable for variable in self.trainable_variables if variable.ref() in refs])

    def _apply_gradients(self, pairs):
        """Apply (gradient, variable) pairs: the loss's learning-rate groups to their optimizers, the rest to ``optimizer``.

        Under loss scaling the model's LossScaleOptimizer skips a step whose unscaled
        gradients overflowed; the groups' optimizers then get zero gradients instead of
        NaN or Inf, so the loss's variables stay finite (their Adam moments decay one step).
        """
        groups = self._loss_groups.value
        if not groups:
            self.optimizer.apply_gradients(pairs)
            return
        rest = [pair for pair in pairs if not any(pair[1].ref() in refs for _, refs in groups)]
        if rest:
            self.optimizer.apply_gradients(rest)
        if isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer):
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(gradient)))
                                    for gradient, _ in pairs])
            pairs = [(tf.where(finite, tf.convert_to_tensor(gradient), 0.0), variable) for gradient, variable in pairs]
        for optimizer, refs in groups:
            grouped = [pair for pair in pairs if pair[1].ref() in refs]
            if grouped:
                optimizer.apply_gradients(grouped)

    def _undecayed(self):
        """Refs of the variables that get no weight decay: the loss's own (the paper's code decays the network only)."""
        if not isinstance(self.dml_loss, BatchLoss):
            return frozenset()
        return frozenset(variable.ref() for variable in self.dml_loss.trainable_variables)

    @property
    def metrics(self):
        return [self.loss_tracker, self.dml_loss_tracker, self.language_loss_tracker]

    def call(self, inputs, training=None):
        return self.embedder(inputs, training=training)

    def forward(self, images, training=False):
        """(float32 embeddings, pooled features or None) of one forward pass.

        The features (what S2SD reads) come from the same pass as the embeddings: an
        internal functional model over the embedder's own layers also outputs the
        backbone's feature maps, which the loss pools.
        """
        model = self._feature_model.value
        if model is None:
            return tf.cast(self(images, training=training), tf.float32), None
        embeddings, feature_maps = model(images, training=training)
        return tf.cast(embeddings, tf.float32), self.dml_loss.pool_features(feature_maps)

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

    def table_rows(self, labels, sample_ids=None):
        """The language-table rows of a batch: its labels, or its sample ids for ``table_index="sample_id"``."""
        return labels if self.table_index == "label" else tf.reshape(sample_ids, [-1])

    def loss_terms(self, embeddings, labels, sample_ids=None, training=False, features=None):
        """(dml, language, weight) of float32 embeddings: the total is ``dml + weight * language``.

        ``weight`` is ω once the delay has passed, else 0 (graph-safe: it compares the
        optimizer's step counter, not a Python counter); without a table ``language`` and
        ``weight`` are None. ``features``: the pooled features of :meth:`forward` (S2SD).
        """
        if getattr(self.dml_loss, "needs_features", False) and features is None:
            raise ValueError(f"The DML loss {self.dml_loss.name!r} reads the backbone's pooled features: pass "
                             f"features=... from model.forward(images).")
        dml = dml_loss_value(self.dml_loss, labels, embeddings, features, step=self.optimizer.iterations,
                             training=training)
        if self._language_table is None:
            return dml, None, None
        language = self.language_matching(embeddings, labels, self._language_table,
                                          table_indices=self.table_rows(labels, sample_ids))
        gate = tf.cast(self.optimizer.iterations >= self.language_delay, tf.float32)
        return dml, language, self.language_weight * gate

    def compute_losses(self, data, training):
        """Return (total, dml, language) for one batch; shared by train and test steps."""
        if self.dml_loss is None:
            raise RuntimeError("Call compile() before fit/evaluate.")
        images, labels, sample_ids = self._unpack(data)
        embeddings, features = self.forward(images, training=training)
        embeddings, labels, sample_ids, features = _gather_global_batch(embeddings, labels, sample_ids, features)
        dml, language, weight = self.loss_terms(embeddings, labels, sample_ids, training, features)
        if language is None:
            language = tf.zeros([], tf.float32)
            total = dml
        else:
            total = dml + weight * language
        if self.losses:
            total += tf.add_n([tf.cast(loss, tf.float32) for loss in self.losses])
        return total, dml, language

    def _record(self, total, dml, language):
        self.loss_tracker.update_state(total)
        self.dml_loss_tracker.update_state(dml)
        self.language_loss_tracker.update_state(language)
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data):
        """One optimizer step; a step whose loss or gradients are NaN or Inf is not applied.

        Global batch: every replica computes the loss of the whole global batch; the
        gradient of all_gather sums what all replicas send back to each one's own images,
        and the optimizer sums the replicas' gradients, so dividing by the replica count
        gives exactly the single-device gradient of the global batch.

        Non-finite steps: before the update, one check asks whether ``loss``, ``dml_loss``,
        ``language_loss`` and every gradient are finite (one ``is_finite`` reduction per
        gradient; under tf.distribute the replicas' flags are summed, so all replicas agree).
        If not, nothing changes: the weights and optimizer slots keep their values after
        the last finite step, the state variables the forward pass moved (the ON_READ ones:
        BatchNorm moving statistics) are put back, and ``fit`` / ``train_on_batch`` raise
        :class:`NonFiniteLossError` naming the optimizer step (0-based: the value of
        ``optimizer.iterations`` before the failed update, which stays at that value).
        With a ``LossScaleOptimizer`` (mixed_float16) only the losses are checked:
        non-finite *scaled* gradients are normal there, and the optimizer itself skips
        those steps and lowers its loss scale.

        How the step stops: run eagerly, it raises the error itself; in a tf.function a
        ``tf.debugging.Assert`` runs before ``apply_gradients`` (which depends on it), and
        :meth:`make_train_function` turns its ``InvalidArgumentError`` into
        ``NonFiniteLossError``; with ``jit_compile=True`` on one replica (XLA ignores
        Assert) the update runs under ``tf.cond`` and a sticky flag, read after each call
        of the train function, raises the error. A custom loop that calls ``train_step``
        in its own tf.function gets the ``InvalidArgumentError`` (its message contains
        ``tf_langdml-nonfinite [step loss dml_loss language_loss gradients_finite]``).
        """
        replicas = _num_replicas()
        scaled_optimizer = isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)
        step = self.optimizer.iterations
        # BatchNorm statistics before the forward pass, to put back after a non-finite step
        # (reading a variable copies it only because the forward pass then writes it).
        saved = _forward_state(self.non_trainable_variables)
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
            undecayed = self._undecayed()
            gradients = [
                gradient if gradient is None or variable.ref() in undecayed
                else gradient + self.weight_decay / replicas * tf.cast(variable, gradient.dtype)
                for gradient, variable in zip(gradients, variables)
            ]
        finite, report = _finiteness(step, total, dml, language, None if scaled_optimizer else gradients, replicas)
        pairs = [(gradient, variable) for gradient, variable in zip(gradients, variables) if gradient is not None]
        record = self._nonfinite.record
        if tf.executing_eagerly():
            if not bool(finite):
                _restore(saved)
                raise self.nonfinite_error(report.numpy())
            self._apply_gradients(pairs)
        elif record is not None and self.jit_compile and replicas == 1:
            proceed = tf.logical_and(finite, record[0] < 0)  # sticky over steps_per_execution

            def update():
                self._apply_gradients(pairs)
                self._record(total, dml, language)
                return tf.constant(True)

            def skip():
                _restore(saved)
                record.assign(tf.where(record[0] < 0, report, record))  # keep the first failure
                return tf.constant(False)

            tf.cond(proceed, update, skip)
            return {metric.name: metric.result() for metric in self.metrics}
        else:
            restored = tf.cond(finite, lambda: tf.constant(True), lambda: _restore(saved))
            with tf.control_dependencies([restored]):
                check = tf.debugging.Assert(finite, [NONFINITE_MARKER, report], summarize=8)
            with tf.control_dependencies([check]):  # MirroredStrategy carries it into merge_call
                self._apply_gradients(pairs)
                return self._record(total, dml, language)
        return self._record(total, dml, language)

    def make_train_function(self, force=False):
        """Keras' train function, wrapped so that a non-finite step raises :class:`NonFiniteLossError`."""
        if self.train_function is not None and not force:
            return self.train_function
        if (self.jit_compile and not self.run_eagerly and self._nonfinite.record is None
                and self.distribute_strategy.num_replicas_in_sync == 1):
            with tf.init_scope():
                self._nonfinite.record = tf.Variable(_CLEAR_RECORD, dtype=tf.float64, trainable=False,
                                                     name="nonfinite_record")
        function = super().make_train_function(force)

        def train_function(iterator):
            try:
                logs = function(iterator)
            except tf.errors.InvalidArgumentError as error:
                report = _parse_report(str(error))
                if report is None:
                    raise
                raise self.nonfinite_error(report) from None
            record = self._nonfinite.record
            if record is not None and self.jit_compile:
                values = record.numpy()
                if values[0] >= 0:
                    record.assign(_CLEAR_RECORD)
                    raise self.nonfinite_error(values)
            return logs

        self.train_function = train_function
        return train_function

    def nonfinite_error(self, report):
        """The :class:`NonFiniteLossError` for ``report`` = [step, loss, dml_loss, language_loss, gradients_finite]."""
        step, total, dml, language, gradients_finite = (float(value) for value in report)
        step = int(step)
        values = {"loss": total, "dml_loss": dml, "language_loss": language,
                  "gradients_finite": None if gradients_finite < 0 else bool(gradients_finite)}
        bad = [name for name in ("loss", "dml_loss", "language_loss") if not math.isfinite(values[name])]
        if values["gradients_finite"] is False:
            bad.append("gradients")
        gradients = {None: "not checked (the loss scale optimizer skips such steps)", True: "finite",
                     False: "NaN/Inf"}[values["gradients_finite"]]
        learning_rate = _learning_rate(self.optimizer)
        broken = nonfinite_variables(self.trainable_variables)
        if broken:
            state = (f"The update was not applied, but the weights were already NaN or Inf before it "
                     f"({', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}): an earlier update overflowed them.")
        else:
            state = ("The update was not applied: the weights and optimizer state are those after the last "
                     "finite step.")
        rate = f"{learning_rate:g}" if learning_rate is not None else "unknown"
        message = (
            f"Non-finite training step at optimizer step {step} (0-based optimizer.iterations; the "
            f"{_ordinal(step + 1)} update): {', '.join(bad) or 'the loss'} "
            f"{'is' if len(bad) == 1 else 'are'} NaN or Inf (loss={total:g}, dml_loss={dml:g}, "
            f"language_loss={language:g}, gradients {gradients}). {state} Likely causes: the learning rate "
            f"is too high (current learning rate {rate}); mixed precision (float16 layers) without loss "
            f"scaling (use a keras.mixed_precision.LossScaleOptimizer, which compile() adds under the "
            f"mixed_float16 policy); a broken language table (NaN or all-zero rows); bad input images "
            f"(NaN or Inf pixels, a failed decode)."
        )
        return NonFiniteLossError(message, step=step, values=values, learning_rate=learning_rate)

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
        embedder = keras.layers.deserialize(config.pop("embedder"), custom_objects=custom_objects)
        return cls(embedder, **config)


def _num_replicas():
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def _gather_global_batch(embeddings, labels, sample_ids, features=None):
    """Under tf.distribute: every replica's embeddings, labels, sample ids and features, in replica order.

    The losses are then those of the global batch, whatever the number of replicas
    (docs/loss.md); ``all_gather`` passes gradients back to each replica's own slice.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return embeddings, labels, sample_ids, features
    embeddings = context.all_gather(embeddings, axis=0)
    labels = context.all_gather(labels, axis=0)
    if sample_ids is not None:
        sample_ids = context.all_gather(tf.reshape(sample_ids, [-1]), axis=0)
    if features is not None:
        features = context.all_gather(features, axis=0)
    return embeddings, labels, sample_ids, features


POOL_LAYERS = ("avg_pool", "max_pool")


def _feature_model(embedder):
    """A functional model over ``embedder``'s own layers: images -> (embeddings, backbone feature maps)."""
    for name in POOL_LAYERS:
        try:
            pool = embedder.get_layer(name)
        except ValueError:
            continue
        feature_maps = pool.input
        if len(feature_maps.shape) == 4:
            return keras.Model(embedder.inputs, [embedder.outputs[0], feature_maps], name=f"{embedder.name}_features")
    raise ValueError(
        f"The DML loss reads the backbone's feature maps, but the embedder {embedder.name!r} has no global pooling "
        f"layer named {' or '.join(POOL_LAYERS)} (build it with tf_langdml.models.build_embedder)."
    )


class ScaledLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule times a constant (a learning-rate group's multiplier on a scheduled base rate)."""

    def __init__(self, schedule, multiplier):
        self.schedule = schedule
        self.multiplier = float(multiplier)

    def __call__(self, step):
        return self.schedule(step) * self.multiplier

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "multiplier": self.multiplier}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["multiplier"])


def _group_optimizer(optimizer, group, index):
    """A fresh optimizer of ``optimizer``'s type and settings at ``group``'s learning rate.

    A separate instance, not a gradient multiplier: Adam divides by the gradient's own
    scale, so scaling a gradient would not change its step.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's optimizer
    config = inner.get_config()
    base = getattr(inner, "_learning_rate", None)
    if base is None:
        base = inner.learning_rate
    if group.learning_rate is not None:
        rate = float(group.learning_rate)
    elif isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
        rate = ScaledLearningRate(base, group.multiplier)
    else:
        rate = float(keras.backend.get_value(base)) * group.multiplier
    config["learning_rate"] = rate
    config["name"] = f"{config.get('name', 'optimizer')}_loss_group_{index}"
    return type(inner).from_config(config)


def _forward_state(variables):
    """(variable, value) of the state variables a forward pass may move.

    Those are the ON_READ ones, as Keras creates BatchNorm moving statistics (and metric
    accumulators): replicas assign them locally, so they can be put back inside a replica,
    and frozen weights (ON_READ is not theirs) are never copied or written back.
    """
    return [
        (variable, tf.identity(variable))
        for variable in variables
        if variable.dtype.is_floating and getattr(variable, "synchronization", None) == tf.VariableSynchronization.ON_READ
    ]


def _restore(saved):
    for variable, value in saved:
        variable.assign(value)
    return tf.constant(False)


def _finiteness(step, total, dml, language, gradients, replicas):
    """(finite, report): one flag for the losses and gradients, and [step, loss, dml, language, gradients_finite].

    gradients=None skips the gradient check (loss scaling); report[4] is then -1.
    """
    losses_finite = tf.reduce_all(tf.math.is_finite(tf.stack([tf.cast(value, tf.float32)
                                                              for value in (total, dml, language)])))
    if gradients is None:
        gradients_finite = tf.constant(True)
    else:
        flags = [tf.reduce_all(tf.math.is_finite(getattr(gradient, "values", gradient)))
                 for gradient in gradients if gradient is not None]
        gradients_finite = tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)
    if replicas > 1:  # all replicas must agree: sum their failures
        failures = tf.cast(tf.logical_not(tf.stack([losses_finite, gradients_finite])), tf.float32)
        failures = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, failures)
        losses_finite, gradients_finite = failures[0] == 0, failures[1] == 0
    gradient_flag = tf.constant(-1.0, tf.float64) if gradients is None else tf.cast(gradients_finite, tf.float64)
    report = tf.stack([tf.cast(step, tf.float64)] + [tf.cast(value, tf.float64) for value in (total, dml, language)]
                      + [gradient_flag])
    return tf.logical_and(losses_finite, gradients_finite), report


def _parse_report(message):
    """The report of :func:`_finiteness` from an Assert's error message, or None."""
    match = re.search(re.escape(NONFINITE_MARKER) + r"\]\s*\[([^\]]*)\]", message)
    if not match:
        return None
    try:
        values = [float(value) for value in match.group(1).split()]
    except ValueError:
        return None
    return values if len(values) == 5 else None


def _learning_rate(optimizer):
    """The optimizer's current learning rate as a float, or None."""
    try:
        value = optimizer.learning_rate
        if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
            value = value(optimizer.iterations)
        return float(keras.backend.get_value(value))
    except Exception:  # noqa: BLE001  (only for the message)
        return None


def _ordinal(number):
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"
