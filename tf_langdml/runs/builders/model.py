"""The ``model``, ``loss``, ``optimizer`` and ``training`` sections: the embedder and the compiled guided model."""

from __future__ import annotations

from typing import Any

import numpy as np

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError
from tf_langdml.losses import DML_LOSSES, build_dml_loss, dml_loss_arguments
from tf_langdml.models import BACKBONES, LanguageGuidedModel, build_embedder
from tf_langdml.models.backbones import backbone_spec, resolve_weights
from tf_langdml.models.learning_rates import step_decay
from tf_langdml.models.precision import precision_policy, resolve_precision
from tf_langdml.models.precision_probe import ProbedModel
from tf_langdml.runs.builders.config_errors import config_keys
from tf_langdml.runs.builders.loss_arguments import BUILD_ARGUMENTS, check_dml_arguments
from tf_langdml.runs.schema import DataConfig, LossConfig, ModelConfig, OptimizerConfig, TrainingConfig

# {library argument: config key} of build_embedder (and build_backbone's ``name`` under it).
_MODEL_ARGUMENTS = {
    "backbone": "model.backbone",
    "name": "model.backbone",
    "weights": "model.weights",
    "pooling": "model.pooling",
    "embed_dim": "model.embed_dim",
    "input_shape": "data.image_size",
    "freeze_bn_statistics": "model.freeze_bn_statistics",
}
_KEEP = object()


def embedder(model: ModelConfig, image_size: int, weights: Any = _KEEP) -> keras.Model:
    """The embedder the ``model`` section describes for ``image_size`` images; ``weights`` default: ``model.weights``."""
    with config_keys("model.backbone", arguments=_MODEL_ARGUMENTS, suggest=(model.backbone, BACKBONES)):
        return build_embedder(
            model.backbone,
            weights=model.weights if weights is _KEEP else weights,
            embed_dim=model.embed_dim,
            pooling=model.pooling,
            freeze_bn_statistics=model.freeze_bn_statistics,
            input_shape=(image_size, image_size, 3),
        )


_SCHEDULE_ARGUMENTS = {"decay_epochs": "optimizer.decay_epochs", "decay_factor": "optimizer.decay_factor"}


def _optimizer(optimizer: OptimizerConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The optimizer at ``optimizer.learning_rate``, a StepDecay of the step under ``optimizer.schedule: step``."""
    classes = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    with config_keys("optimizer.learning_rate", arguments=_SCHEDULE_ARGUMENTS):
        rate = optimizer.learning_rate
        if optimizer.schedule == "step":
            rate = step_decay(rate, optimizer.decay_epochs, optimizer.decay_factor, steps_per_epoch)
        return classes[optimizer.name](learning_rate=rate)


# {library argument: config key} of build_dml_loss: its ``name``; ``kwargs``: an argument the loss does not take.
_DML_LOSS_ARGUMENTS = {"name": "loss.dml", "kwargs": "loss.dml_arguments"}
# ... and of LanguageGuidedModel.compile: its parameters, and those of the LanguageMatchingLoss it builds from them.
_COMPILE_ARGUMENTS = {
    **_DML_LOSS_ARGUMENTS,
    "dml_loss": "loss.dml",
    "language_weight": "loss.language_weight",
    "language_delay": "loss.delay",
    "language_direction": "loss.direction",
    "language_shift": "loss.shift",
    "language_temperature": "loss.temperature",
    "weight_decay": "optimizer.weight_decay",
    "head_learning_rate": "optimizer.head_learning_rate",
    "warmup_steps": "training.warmup_epochs",
    "direction": "loss.direction",
    "shift": "loss.shift",
    "temperature": "loss.temperature",
}


def dml_loss_spec(loss: LossConfig, training: TrainingConfig) -> dict[str, Any]:
    """``{"name": loss.dml, **loss.dml_arguments}``, with ``seed`` = ``training.seed`` for a loss that mines or draws."""
    spec = {"name": loss.dml, **loss.dml_arguments}
    if str(loss.dml).lower() in DML_LOSSES and "seed" in dml_loss_arguments(loss.dml) and "seed" not in spec:
        spec["seed"] = training.seed
    return spec


def _compile(
    network: LanguageGuidedModel,
    loss: LossConfig,
    optimizer: OptimizerConfig,
    training: TrainingConfig,
    guided: bool,
    num_classes: int | None = None,
    steps_per_epoch: int = 1,
) -> LanguageGuidedModel:
    """``network.compile`` with the loss, optimizer and training sections (ω = 0 without a table); epochs
    (the decay epochs, the warmup) become optimizer steps by ``steps_per_epoch``."""
    check_dml_arguments(loss)
    spec = dml_loss_spec(loss, training)
    # "did you mean" from the list the error is about: a misspelt argument among the loss's arguments, a
    # misspelt loss among the losses.
    suggest = (loss.dml, list(DML_LOSSES))
    if str(loss.dml).lower() in DML_LOSSES:
        accepted = [*dml_loss_arguments(loss.dml), *BUILD_ARGUMENTS]
        unknown = sorted(set(loss.dml_arguments) - set(accepted))
        suggest = (unknown[0], accepted) if unknown else None
    # Built here, so that an error in the loss's own arguments names loss.dml_arguments.
    with config_keys("loss.dml_arguments", arguments=_DML_LOSS_ARGUMENTS, suggest=suggest):
        dml_loss = build_dml_loss(spec.pop("name"), **spec)
    compiled_optimizer = _optimizer(optimizer, steps_per_epoch)
    with config_keys("loss.dml", "loss.dml_arguments", arguments=_COMPILE_ARGUMENTS):
        network.compile(
            optimizer=compiled_optimizer,
            dml_loss=dml_loss,
            num_classes=num_classes,
            language_weight=loss.language_weight if guided else 0.0,
            language_shift=loss.shift,
            language_temperature=loss.temperature,
            language_delay=loss.delay,
            language_direction=loss.direction,
            weight_decay=optimizer.weight_decay,
            head_learning_rate=optimizer.head_learning_rate,
            warmup_steps=training.warmup_epochs * steps_per_epoch,
            jit_compile=training.jit_compile,
        )
    return network


def probed_model(model: ModelConfig, data: DataConfig, training: TrainingConfig) -> ProbedModel:
    """What ``training.precision: auto`` times: the embedder of ``model`` on ``data``'s images and batches."""
    return ProbedModel(
        backbone=model.backbone,
        image_size=data.image_size,
        batch_size=data.batch_size,
        embed_dim=model.embed_dim,
        pooling=model.pooling,
        freeze_bn_statistics=model.freeze_bn_statistics,
        jit_compile=training.jit_compile,
    )


def precision(
    training: TrainingConfig, model: ModelConfig, data: DataConfig, probe: Any = None, measure: Any = None
) -> tuple[str, str]:
    """``(dtype policy, reason)`` of ``training.precision``: ``auto`` resolved on this machine for this run's model,
    image size and batch size (see :func:`~tf_langdml.models.precision.resolve_precision`; ``probe`` and
    ``measure`` for tests)."""
    with config_keys("training.precision"):
        return resolve_precision(training.precision, probe, probed_model(model, data, training), measure)


def guided_model(
    model: ModelConfig,
    image_size: int,
    loss: LossConfig,
    optimizer: OptimizerConfig,
    training: TrainingConfig,
    table: np.ndarray | None = None,
    index: str = "label",
    num_classes: int | None = None,
    policy: str | None = None,
    steps_per_epoch: int = 1,
) -> LanguageGuidedModel:
    """The compiled :class:`~tf_langdml.models.LanguageGuidedModel`, its layers under the dtype ``policy``.

    ``table``: the language table (None: the baseline, ω = 0); ``index``:
    :func:`~tf_langdml.runs.builders.language.table_index`; ``num_classes``: the training classes (for losses
    with a vector per class); ``policy``: the resolved ``training.precision`` (:func:`precision`; None:
    ``training.precision`` itself, refused for ``auto``, which needs the data section). Keras adds loss scaling
    under ``mixed_float16`` only; the losses stay float32 under both mixed policies.
    ``steps_per_epoch``: the run's, for ``optimizer.decay_epochs`` and ``training.warmup_epochs``.
    """
    if policy is None:
        if training.precision == "auto":
            raise ArgumentError(
                "training.precision 'auto' is resolved for the run's model and data: pass "
                "policy=builders.precision(training, model, data)[0] to guided_model.",
                argument="policy",
            )
        policy = training.precision
    with precision_policy(policy):
        network = LanguageGuidedModel(embedder(model, image_size), language_table=table, table_index=index)
        _compile(network, loss, optimizer, training, table is not None, num_classes, steps_per_epoch)
        network.build_optimizers()
    return network


def _stand_in_backbone(image_size: int) -> keras.Model:
    return keras.Sequential(
        [keras.Input((image_size, image_size, 3)), keras.layers.MaxPooling2D(image_size)], name="stand_in_backbone"
    )


def check_embedder(model: ModelConfig, image_size: int) -> None:
    """The backbone name, a weights file, pooling, embed_dim and the image size, without building the backbone."""
    with config_keys("model.backbone", suggest=(model.backbone, BACKBONES)):
        backbone_spec(model.backbone)
    if model.weights not in (None, "imagenet"):
        resolve_weights(model.backbone, model.weights)  # FileNotFoundError naming the file
    with config_keys("model.backbone", arguments=_MODEL_ARGUMENTS):
        build_embedder(
            _stand_in_backbone(image_size),
            weights=None,
            embed_dim=model.embed_dim,
            pooling=model.pooling,
            freeze_bn_statistics=False,
            input_shape=(image_size, image_size, 3),
        )


def check_model(loss: LossConfig, optimizer: OptimizerConfig, training: TrainingConfig) -> None:
    """The loss, optimizer and training sections through ``LanguageGuidedModel.compile`` on a stand-in embedder."""
    stand_in = build_embedder(
        _stand_in_backbone(2), weights=None, embed_dim=2, freeze_bn_statistics=False, input_shape=(2, 2, 3)
    )
    _compile(LanguageGuidedModel(stand_in), loss, optimizer, training, guided=True, num_classes=2)
