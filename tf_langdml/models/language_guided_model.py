"""LanguageGuidedModel: a Keras model whose train_step adds language guidance to DML."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError
from tf_langdml.language.language_table import LanguageTable
from tf_langdml.losses.base import BatchLoss, dml_loss_value
from tf_langdml.models.compile_arguments import (
    dml_loss_of,
    language_guidance_numbers,
    language_matching_loss,
    refuse_keras_loss_and_metrics,
)
from tf_langdml.models.embedder import embedder_with_feature_maps
from tf_langdml.models.global_batch import gather_global_batch, num_replicas
from tf_langdml.models.learning_rates import check_head_learning_rate, check_warmup_steps
from tf_langdml.models.loss_optimizers import (
    apply_grouped_gradients,
    backbone_group,
    build_all_optimizers,
    head_group,
    loss_groups,
    variables_outside,
)
from tf_langdml.models.nonfinite import (
    NonFiniteLossError,
    apply_unless_nonfinite,
    assert_finite,
    create_record,
    finiteness_check,
    forward_state,
    guard_train_function,
    nonfinite_error,
    restore_forward_state,
)
from tf_langdml.models.untracked import Untracked

TABLE_INDEXES = ("label", "sample_id")


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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._nonfinite = Untracked()  # the XLA path's record variable (see make_train_function)
        if table_index not in TABLE_INDEXES:
            raise ArgumentError(
                f"Unknown table_index {table_index!r}; expected one of {list(TABLE_INDEXES)}.", argument="table_index"
            )
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
        self._loss_groups = Untracked([])  # [(optimizer, frozenset of variable refs)], see loss_optimizers
        self._feature_model = Untracked()  # embedder inputs -> (embeddings, feature maps), for S2SD
        self.language_matching = None
        self.language_weight = 0.0
        self.language_delay = 0
        self.weight_decay = 0.0
        self.head_optimizer = None  # the head's own optimizer (compile's head_learning_rate): tracked, checkpointed
        self.warmup_steps = 0
        self.backbone_optimizer = None  # the backbone's own optimizer during a warmup (compile's warmup_steps)
        self._backbone_trains = True  # the traced train function applies the backbone's optimizer

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
        optimizer: str | keras.optimizers.Optimizer = "adam",
        dml_loss: str | dict[str, Any] | keras.losses.Loss = "multisimilarity",
        language_weight: float = 0.0,
        language_shift: float = 1.0,
        language_temperature: float = 1.0,
        language_delay: int = 0,
        language_direction: str = "image_to_language",
        weight_decay: float = 0.0,
        num_classes: int | None = None,
        head_learning_rate: float | None = None,
        warmup_steps: int = 0,
        **kwargs: Any,
    ) -> None:
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
            head_learning_rate: the projection head's own rate (the layers after the global
                pooling; the paper code's ``--fc_lr``), an optimizer of its own of
                ``optimizer``'s type; decayed as the base rate when that is a
                :class:`~tf_langdml.models.learning_rates.StepDecay`. None: the base rate.
            warmup_steps: optimizer steps during which the backbone (the embedder but its head)
                is not updated (the paper code's ``--warmup``): its own ``backbone_optimizer``
                (checkpointed) is applied from the first train-function call at or after this
                step (traced again then), so its first update is Adam's step 1.
            **kwargs: passed to ``keras.Model.compile`` (``loss`` is not accepted;
                use ``dml_loss``).

        Raises:
            tf_langdml.errors.ArgumentError: an argument is refused; ``error.argument`` is
                this method's parameter name (``"language_weight"``, ``"dml_loss"``, ...).
        """
        refuse_keras_loss_and_metrics(kwargs)
        language_weight, language_delay, weight_decay = language_guidance_numbers(
            language_weight, language_delay, weight_decay
        )
        self.language_matching = language_matching_loss(language_shift, language_temperature, language_direction)
        dml_loss = dml_loss_of(dml_loss)
        head_learning_rate = check_head_learning_rate(head_learning_rate)
        self.warmup_steps = check_warmup_steps(warmup_steps)
        super().compile(optimizer=optimizer, **kwargs)
        self._setup_loss_state(dml_loss, num_classes)
        with self.distribute_strategy.scope():  # the head's and the backbone's optimizers: groups as the loss's
            head = [] if head_learning_rate is None else head_group(self.optimizer, self.embedder, head_learning_rate)
            groups = [*self._loss_groups.value, *head]
            if self.warmup_steps:
                groups += backbone_group(self.optimizer, self.embedder, self.warmup_steps, groups, self.variables)
        self.head_optimizer = head[0][0] if head else None
        self.backbone_optimizer = groups[-1][0] if self.warmup_steps else None
        self._loss_groups.value = groups
        self._backbone_trains = self._backbone_due()  # the phase; make_train_function keeps it up to date
        self.language_weight = language_weight
        self.language_delay = language_delay
        self.weight_decay = weight_decay

    def _setup_loss_state(self, dml_loss: Any, num_classes: int | None) -> None:
        """Create a BatchLoss's variables and one optimizer per learning-rate group (under the model's strategy)."""
        self._loss_groups.value = []
        self.loss_optimizers = []
        self._feature_model.value = None
        if not isinstance(dml_loss, BatchLoss):
            self.dml_loss = dml_loss
            return
        if (
            num_classes is None
            and dml_loss.needs_classes
            and self._language_table is not None
            and self.table_index == "label"
        ):
            num_classes = self._language_table.num_rows
        feature_dim = None
        if dml_loss.needs_features:
            self._feature_model.value = embedder_with_feature_maps(self.embedder)
            feature_dim = int(self._feature_model.value.outputs[1].shape[-1])
        embed_dim = int(self.embedder.outputs[0].shape[-1])
        with self.distribute_strategy.scope():
            dml_loss.setup(num_classes, embed_dim, feature_dim)
            self.dml_loss = dml_loss  # a tracked sub-layer: its variables train and are checkpointed
            groups = loss_groups(self.optimizer, dml_loss)
        self.loss_optimizers = [optimizer for optimizer, _ in groups]  # tracked: their slots are checkpointed
        self._loss_groups.value = groups

    def build_optimizers(self) -> None:
        """Create every optimizer's slots now (for a checkpoint restore that must match them all)."""
        build_all_optimizers(self.optimizer, self._loss_groups.value, self.trainable_variables)

    def _apply_gradients(self, pairs: Sequence[tuple[tf.Tensor, tf.Variable]]) -> None:
        """Apply (gradient, variable) pairs: the loss's groups to their optimizers, the rest to ``optimizer``."""
        apply_grouped_gradients(self.optimizer, self._loss_groups.value, pairs)

    def _backbone_due(self) -> bool:
        """Whether the backbone trains at the optimizer's current step (no warmup, or the warmup is over)."""
        return not self.warmup_steps or int(self.optimizer.iterations.numpy()) >= self.warmup_steps

    def _undecayed(self) -> frozenset:
        """Refs of the variables that get no weight decay: the loss's own (the paper's code decays the network only)."""
        if not isinstance(self.dml_loss, BatchLoss):
            return frozenset()
        return frozenset(variable.ref() for variable in self.dml_loss.trainable_variables)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_tracker, self.dml_loss_tracker, self.language_loss_tracker]

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        return self.embedder(inputs, training=training)

    def forward(self, images: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor | None]:
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

    def _unpack(self, data: tuple | list) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
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

    def table_rows(self, labels: tf.Tensor, sample_ids: tf.Tensor | None = None) -> tf.Tensor:
        """The language-table rows of a batch: its labels, or its sample ids for ``table_index="sample_id"``."""
        return labels if self.table_index == "label" else tf.reshape(sample_ids, [-1])

    def loss_terms(
        self,
        embeddings: tf.Tensor,
        labels: tf.Tensor,
        sample_ids: tf.Tensor | None = None,
        training: bool = False,
        features: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor | None, tf.Tensor | None]:
        """(dml, language, weight) of float32 embeddings: the total is ``dml + weight * language``.

        ``weight`` is ω once the delay has passed, else 0 (graph-safe: it compares the
        optimizer's step counter, not a Python counter); without a table ``language`` and
        ``weight`` are None. ``features``: the pooled features of :meth:`forward` (S2SD).
        """
        if getattr(self.dml_loss, "needs_features", False) and features is None:
            raise ValueError(
                f"The DML loss {self.dml_loss.name!r} reads the backbone's pooled features: pass "
                f"features=... from model.forward(images)."
            )
        dml = dml_loss_value(
            self.dml_loss, labels, embeddings, features, step=self.optimizer.iterations, training=training
        )
        if self._language_table is None:
            return dml, None, None
        language = self.language_matching(
            embeddings, labels, self._language_table, table_indices=self.table_rows(labels, sample_ids)
        )
        gate = tf.cast(self.optimizer.iterations >= self.language_delay, tf.float32)
        return dml, language, self.language_weight * gate

    def compute_losses(self, data: tuple | list, training: bool) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Return (total, dml, language) for one batch; shared by train and test steps."""
        if self.dml_loss is None:
            raise RuntimeError("Call compile() before fit/evaluate.")
        images, labels, sample_ids = self._unpack(data)
        embeddings, features = self.forward(images, training=training)
        embeddings, labels, sample_ids, features = gather_global_batch(embeddings, labels, sample_ids, features)
        dml, language, weight = self.loss_terms(embeddings, labels, sample_ids, training, features)
        if language is None:
            language = tf.zeros([], tf.float32)
            total = dml
        else:
            total = dml + weight * language
        if self.losses:
            total += tf.add_n([tf.cast(loss, tf.float32) for loss in self.losses])
        return total, dml, language

    def _record(self, total: tf.Tensor, dml: tf.Tensor, language: tf.Tensor) -> dict[str, tf.Tensor]:
        self.loss_tracker.update_state(total)
        self.dml_loss_tracker.update_state(dml)
        self.language_loss_tracker.update_state(language)
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data: tuple | list) -> dict[str, tf.Tensor]:
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
        The guard's parts are in :mod:`tf_langdml.models.nonfinite`.
        """
        replicas = num_replicas()
        scaled_optimizer = isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)
        step = self.optimizer.iterations
        # BatchNorm statistics before the forward pass, to put back after a non-finite step
        # (reading a variable copies it only because the forward pass then writes it).
        saved = forward_state(self.non_trainable_variables)
        # the warmup: the backbone (its optimizer is the last group) is not even recorded, so
        # the backward pass stops at the head, as under the paper code's no_grad
        variables = self.trainable_variables
        trains = self._backbone_trains
        variables = variables if trains else variables_outside(variables, self._loss_groups.value[-1][1])
        with tf.GradientTape(watch_accessed_variables=trains) as tape:
            tape.watch([] if trains else variables)
            total, dml, language = self.compute_losses(data, training=True)
            objective = total / replicas
            if scaled_optimizer:
                objective = self.optimizer.get_scaled_loss(objective)
        gradients = tape.gradient(objective, variables)
        if scaled_optimizer:
            gradients = self.optimizer.get_unscaled_gradients(gradients)
        if self.weight_decay:
            undecayed = self._undecayed()
            gradients = [
                gradient
                if gradient is None or variable.ref() in undecayed
                else gradient + self.weight_decay / replicas * tf.cast(variable, gradient.dtype)
                for gradient, variable in zip(gradients, variables)
            ]
        finite, report = finiteness_check(step, total, dml, language, None if scaled_optimizer else gradients, replicas)
        pairs = [(gradient, variable) for gradient, variable in zip(gradients, variables) if gradient is not None]
        record = self._nonfinite.value
        if tf.executing_eagerly():
            if not bool(finite):
                restore_forward_state(saved)
                raise self.nonfinite_error(report.numpy())
            self._apply_gradients(pairs)
        elif record is not None and self.jit_compile and replicas == 1:

            def update():
                self._apply_gradients(pairs)
                self._record(total, dml, language)

            apply_unless_nonfinite(finite, report, saved, record, update)
            return {metric.name: metric.result() for metric in self.metrics}
        else:  # MirroredStrategy carries the Assert dependency into merge_call
            with tf.control_dependencies([assert_finite(finite, report, saved)]):
                self._apply_gradients(pairs)
                return self._record(total, dml, language)
        return self._record(total, dml, language)

    def make_train_function(self, force: bool = False) -> Callable[[Any], dict[str, tf.Tensor]]:
        """Keras' train function, wrapped so that a non-finite step raises :class:`NonFiniteLossError`."""
        due = self._backbone_due()
        if self.train_function is not None and not force and due == self._backbone_trains:
            return self.train_function
        self._backbone_trains = due
        if (
            self.jit_compile
            and not self.run_eagerly
            and self._nonfinite.value is None
            and self.distribute_strategy.num_replicas_in_sync == 1
        ):
            self._nonfinite.value = create_record()
        guarded = guard_train_function(
            super().make_train_function(True), self._nonfinite, lambda: self.jit_compile, self.nonfinite_error
        )
        # during the warmup, a call that starts at its end retraces with the backbone's optimizer
        watched = lambda it: (self.make_train_function() if self._backbone_due() else guarded)(it)
        self.train_function = guarded if due else watched
        return self.train_function

    def nonfinite_error(self, report: Sequence[float] | np.ndarray) -> NonFiniteLossError:
        """The :class:`NonFiniteLossError` for ``report`` = [step, loss, dml_loss, language_loss, gradients_finite]."""
        return nonfinite_error(report, self.optimizer, self.trainable_variables)

    def test_step(self, data: tuple | list) -> dict[str, tf.Tensor]:
        return self._record(*self.compute_losses(data, training=False))

    def get_config(self) -> dict[str, Any]:
        return {
            "embedder": keras.utils.serialize_keras_object(self.embedder),
            "table_index": self.table_index,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> LanguageGuidedModel:
        config = dict(config)
        embedder = keras.layers.deserialize(config.pop("embedder"), custom_objects=custom_objects)
        return cls(embedder, **config)
