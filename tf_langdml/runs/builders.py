"""From config sections to library objects: the only place that maps config values to library calls.

One builder per config section (:func:`dataset`, :func:`text_encoder`,
:func:`language_table`, :func:`embedder`, :func:`guided_model`, :func:`callbacks`,
:func:`evaluation_metrics`); each takes only the section(s) it reads. The library checks
the values itself; its ``ValueError`` / ``TypeError`` / ``KeyError`` is re-raised as
:class:`~tf_langdml.runs.schema.ConfigError` naming the config key (the key its
``argument`` attribute maps to (:class:`~tf_langdml.errors.ArgumentError`; one explicit
``{argument: config key}`` dict per call, never the message's words), else every key the
call took), with "did you mean" for a misspelt name. An error about the data rather than the config (a class
without images, say) of a call that also reads data passes through unchanged.

The ``check_*`` functions run the same library checks before any data is read or any
weights are loaded: on stand-ins (a one-layer backbone, a two-point retrieval problem)
or by calling a builder where it fails before doing any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tf_langdml._keras import keras
from tf_langdml.data import (
    Split,
    SplitDataset,
    class_balanced_indices,
    hold_out_validation,
    load_demo,
    load_image_folder,
    load_tfds_dataset,
    make_train_dataset,
)
from tf_langdml.data.tfds_datasets import TFDS_DATASETS
from tf_langdml.errors import argument_of
from tf_langdml.evaluation import (
    LanguageGuidanceTensorBoard,
    RetrievalEvaluation,
    RetrievalPictures,
    clustering_metrics,
    embed_split,
    make_level_recall_at_1,
    nearest_neighbors,
    retrieval_metrics,
    semantic_consistency,
    split_retrieval_metrics,
)
from tf_langdml.language import (
    PseudoLabels,
    TextEncoder,
    build_text_encoder,
    expert_language_table,
    prime,
    pseudo_label_table,
    top_k_pseudo_labels,
)
from tf_langdml.language.imagenet import NUM_IMAGENET_CLASSES
from tf_langdml.losses import DML_LOSSES, build_dml_loss, dml_loss_arguments
from tf_langdml.models import (
    BACKBONES,
    CLASSIFIERS,
    LanguageGuidedModel,
    build_embedder,
    build_imagenet_classifier,
    classifier_fingerprint,
)
from tf_langdml.models.backbones import backbone_spec, resolve_weights
from tf_langdml.models.precision import precision_policy, resolve_precision
from tf_langdml.runs.schema import (
    SEED_MAX,
    ConfigError,
    DataConfig,
    EvaluationConfig,
    LanguageConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    TrainingConfig,
    did_you_mean,
)

_LIBRARY_ERRORS = (ValueError, TypeError, KeyError)


@contextlib.contextmanager
def config_keys(*keys: str, arguments: Mapping[str, str] | None = None,
                suggest: tuple[Any, Sequence[str]] | None = None) -> Iterator[None]:
    """Re-raise a library error inside the block as ConfigError naming the config key(s).

    Args:
        keys: the config keys the library call takes (named when ``arguments`` does not map the
            error's argument; none: such an error is not about the config and passes through).
        arguments: ``{library argument: config key}``: an error whose ``argument`` attribute
            (:func:`~tf_langdml.errors.argument_of`) is one of these names that key alone.
        suggest: ``(value, choices)``: add "did you mean" the closest choice.
    """
    try:
        yield
    except ConfigError:
        raise
    except _LIBRARY_ERRORS as error:
        message = str(error.args[0]) if type(error) is KeyError and error.args else str(error)
        argument = argument_of(error)
        named = [arguments[argument]] if arguments and argument in arguments else list(keys)
        if not named:
            raise
        hint = did_you_mean(*suggest, fallback=False) if suggest else ""
        if hint:
            message = message.rstrip(".")
        raise ConfigError(f"{' / '.join(repr(key) for key in named)}: {message}{hint}") from error


# -- data --------------------------------------------------------------------------------------

# {library argument: config key} of the data loaders.
_DECODING_ARGUMENTS = {"background": "data.background", "max_pixels": "data.max_pixels"}
_FOLDER_ARGUMENTS = {**_DECODING_ARGUMENTS, "root": "data.data_dir", "test_classes": "data.test_classes",
                     "test_fraction": "data.test_fraction", "gallery_list": "data.gallery_list"}
_TFDS_ARGUMENTS = {**_DECODING_ARGUMENTS, "name": "data.dataset", "data_dir": "data.data_dir",
                   "manual_dir": "data.manual_dir"}


def dataset(data: DataConfig, evaluation_split: str = "test") -> SplitDataset:
    """The :class:`~tf_langdml.data.SplitDataset` the ``data`` section names.

    With ``data.validation_fraction`` > 0 that part of the training classes is held out
    as ``validation_split`` (:func:`~tf_langdml.data.hold_out_validation`). With
    ``evaluation_split="validation"`` (model selection) the returned dataset has no
    test split (``test_split`` is None), so nothing downstream can read it.
    """
    splits = _load_dataset(data)
    with config_keys("data.validation_fraction"):
        splits = hold_out_validation(splits, data.validation_fraction)
    if evaluation_split == "validation":
        splits = dataclasses.replace(splits, test_split=None)
    return splits


def _load_dataset(data: DataConfig) -> SplitDataset:
    decoding = {"background": data.background, "max_pixels": data.max_pixels}
    if data.dataset == "demo":
        with config_keys("data.dataset", arguments=_DECODING_ARGUMENTS):
            return load_demo(**decoding)
    if data.dataset == "folder":
        with config_keys("data.data_dir", arguments=_FOLDER_ARGUMENTS):
            return load_image_folder(data.data_dir, test_classes=data.test_classes, test_fraction=data.test_fraction,
                                     gallery_list=data.gallery_list, **decoding)
    with config_keys("data.dataset", arguments=_TFDS_ARGUMENTS,
                     suggest=(data.dataset, ["demo", "folder", *TFDS_DATASETS])):
        return load_tfds_dataset(data.dataset, data_dir=data.data_dir, manual_dir=data.manual_dir, **decoding)


def evaluation_split(evaluation: EvaluationConfig, splits: SplitDataset) -> Split | None:
    """The split that ``evaluation.split`` names: the test classes, or the validation classes (model selection)."""
    return splits.validation_split if evaluation.split == "validation" else splits.test_split


def train_batches(data: DataConfig, split: Split, seed: int, start_batch: int = 0,
                  with_sample_ids: bool = False) -> tf.data.Dataset:
    """Class-balanced training batches of ``split`` (the sampler checks the batch against the split)."""
    with config_keys("data.batch_size", "data.examples_per_class"):
        return make_train_dataset(split, data.batch_size, data.examples_per_class, seed=seed,
                                  image_size=data.image_size, with_sample_ids=with_sample_ids,
                                  start_batch=start_batch, antialias=data.antialias)


def check_data(data: DataConfig) -> None:
    """The dataset name and the batch composition (the sampler's rules), without reading data."""
    if data.dataset not in ("demo", "folder", *TFDS_DATASETS):
        _load_dataset(data)  # load_tfds_dataset refuses an unknown name before reading anything
    classes = max(1, data.batch_size // data.examples_per_class)
    with config_keys("data.batch_size", "data.examples_per_class"):
        class_balanced_indices(np.arange(classes), data.batch_size, data.examples_per_class)


# -- text encoder, language table ----------------------------------------------------------------

# {library argument: config key} of the language-table builders (top_k_pseudo_labels' ``k``; a precomputed
# encoder's MissingTextsError is about the ``encoder``) and of the PLG classifier.
_LANGUAGE_ARGUMENTS = {"encoder": "language.encoder", "template": "language.template", "k": "language.top_k",
                       "level": "language.level"}
_CLASSIFIER_ARGUMENTS = {"name": "language.classifier", "weights": "language.classifier_weights"}


def text_encoder(language: LanguageConfig) -> TextEncoder:
    """The text encoder ``language.encoder`` names (ELG / PLG tables, semantic metrics)."""
    with config_keys("language.encoder", arguments={"spec": "language.encoder", "output_key": "language.output_key"}):
        return build_text_encoder(language.encoder, output_key=language.output_key)


def imagenet_classifier(language: LanguageConfig, policy: str = "float32") -> keras.Model:
    """The PLG ImageNet classifier of the ``language`` section, its layers built under the dtype ``policy`` (float32 logits)."""
    with precision_policy(policy), config_keys("language.classifier", arguments=_CLASSIFIER_ARGUMENTS,
                                               suggest=(language.classifier, CLASSIFIERS)):
        return build_imagenet_classifier(language.classifier, weights=language.classifier_weights,
                                         image_size=language.classifier_image_size)


def pseudo_labels(language: LanguageConfig, split: Split, encoder: TextEncoder, batch_size: int,
                  output_path: str | os.PathLike | None = None, verbose: int = 1,
                  policy: str = "float32") -> tuple[np.ndarray, PseudoLabels]:
    """PLG: (table (C|N, K, D), PseudoLabels) of a training split; ``batch_size``: the classifier's.

    ``policy``: the dtype policy the classifier computes in (the run's resolved ``training.precision``).
    """
    classifier = imagenet_classifier(language, policy)
    with config_keys(arguments=_LANGUAGE_ARGUMENTS):
        return pseudo_label_table(classifier, split, encoder, k=language.top_k, level=language.level,
                                  template=language.template, batch_size=batch_size, output_path=output_path,
                                  verbose=bool(verbose), classifier_key=classifier_fingerprint(classifier))


def language_table(language: LanguageConfig, split: Split, encoder: TextEncoder, batch_size: int,
                   pseudo_labels_path: str | os.PathLike | None = None, verbose: int = 1,
                   policy: str = "float32") -> np.ndarray | None:
    """The (C|N, K, D) table of ``language.guidance`` for a training split; None for the baseline.

    ELG: the primed class names; PLG: the top-k ImageNet names (written to ``pseudo_labels_path``),
    the classifier computing under the dtype ``policy``.
    """
    if language.guidance == "none":
        return None
    if language.guidance == "elg":
        with config_keys(arguments=_LANGUAGE_ARGUMENTS):
            return expert_language_table(split.class_names, encoder, language.template, verbose=bool(verbose))
    return pseudo_labels(language, split, encoder, batch_size, pseudo_labels_path, verbose, policy)[0]


def table_index(language: LanguageConfig) -> str:
    """How the model indexes the table: by ``sample_id`` for sample-level PLG, else by ``label``."""
    return "sample_id" if language.guidance == "plg" and language.level == "sample" else "label"


def check_language(language: LanguageConfig) -> None:
    """The template, a precomputed encoder's file, and for PLG the classifier name, top-k and level.

    Before any data or weights are read, and so before the run directory is written.
    """
    with config_keys("language.template", arguments=_LANGUAGE_ARGUMENTS):
        prime(["name"], language.template)
    if language.encoder.startswith("precomputed:"):
        path = language.encoder[len("precomputed:"):]
        if not os.path.isfile(path):
            state = "is not a regular file" if os.path.lexists(path) else "does not exist"
            raise ConfigError(f"'language.encoder': the precomputed embeddings file {path!r} {state} (resolved "
                              f"from {os.getcwd()}); give the path of an .npz written by `tf-langdml embed-classes`, "
                              "or use 'minilm'.")
    if language.guidance != "plg":
        return
    if language.classifier not in CLASSIFIERS:
        imagenet_classifier(language)  # refuses an unknown name before building anything
    with config_keys("language.top_k", "language.level", arguments=_LANGUAGE_ARGUMENTS):
        top_k_pseudo_labels(np.zeros((1, NUM_IMAGENET_CLASSES)), np.zeros(1, np.int64), k=language.top_k,
                            level=language.level)


# -- embedder, model -----------------------------------------------------------------------------

# {library argument: config key} of build_embedder (and build_backbone's ``name`` under it).
_MODEL_ARGUMENTS = {"backbone": "model.backbone", "name": "model.backbone", "weights": "model.weights",
                    "pooling": "model.pooling", "embed_dim": "model.embed_dim", "input_shape": "data.image_size",
                    "freeze_bn_statistics": "model.freeze_bn_statistics"}
_KEEP = object()


def embedder(model: ModelConfig, image_size: int, weights: Any = _KEEP) -> keras.Model:
    """The embedder the ``model`` section describes for ``image_size`` images; ``weights`` default: ``model.weights``."""
    with config_keys("model.backbone", arguments=_MODEL_ARGUMENTS, suggest=(model.backbone, BACKBONES)):
        return build_embedder(
            model.backbone, weights=model.weights if weights is _KEEP else weights, embed_dim=model.embed_dim,
            pooling=model.pooling, freeze_bn_statistics=model.freeze_bn_statistics,
            input_shape=(image_size, image_size, 3),
        )


def _optimizer(optimizer: OptimizerConfig) -> keras.optimizers.Optimizer:
    classes = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    with config_keys("optimizer.learning_rate"):
        return classes[optimizer.name](learning_rate=optimizer.learning_rate)


# {library argument: config key} of build_dml_loss: its ``name``; ``kwargs``: an argument the loss does not take.
_DML_LOSS_ARGUMENTS = {"name": "loss.dml", "kwargs": "loss.dml_arguments"}
# ... and of LanguageGuidedModel.compile: its parameters, and those of the LanguageMatchingLoss it builds from them.
_COMPILE_ARGUMENTS = {
    **_DML_LOSS_ARGUMENTS, "dml_loss": "loss.dml",
    "language_weight": "loss.language_weight", "language_delay": "loss.delay", "language_direction": "loss.direction",
    "language_shift": "loss.shift", "language_temperature": "loss.temperature",
    "weight_decay": "optimizer.weight_decay",
    "direction": "loss.direction", "shift": "loss.shift", "temperature": "loss.temperature",
}


def dml_loss_spec(loss: LossConfig, training: TrainingConfig) -> dict[str, Any]:
    """``{"name": loss.dml, **loss.dml_arguments}``, with ``seed`` = ``training.seed`` for a loss that mines or draws."""
    spec = {"name": loss.dml, **loss.dml_arguments}
    if str(loss.dml).lower() in DML_LOSSES and "seed" in dml_loss_arguments(loss.dml) and "seed" not in spec:
        spec["seed"] = training.seed
    return spec


# The type of each loss argument, from its default in the registry (``dml_loss_arguments``): a float
# default takes a number, an int an integer, a bool true / false, a str a string. Where the default
# says nothing (None) or the loss takes more than the default shows, the type is written here.
_ARGUMENT_TYPES = {
    "upper_cutoff": "number_or_null", "class_learning_rate": "number_or_null",
    "target_arguments": "mapping_or_null", "xbm_memory_size": "integer_or_null",
    "dims": "dims",  # S2SD: a head size or a list of them
}
_BUILD_ARGUMENTS = {"xbm_memory_size": None, "xbm_warmup_steps": 0}  # build_dml_loss's own (XBM)
_SEED_ARGUMENTS = ("seed",)
S2SD_DIM_MAX = 8192  # an S2SD head is two Dense layers of dim x dim: 8192² float32 is 256 MiB (the paper: 2048)
S2SD_HEADS_MAX = 16
XBM_MEMORY_MAX = 1 << 20  # embeddings held by cross-batch memory: more than any benchmark's training images


def _argument_type(name: str, default: Any) -> str | None:
    if name in _ARGUMENT_TYPES:
        return _ARGUMENT_TYPES[name]
    for kind, python_type in (("bool", bool), ("integer", int), ("number", float), ("string", str)):
        if type(default) is python_type:
            return kind
    return None  # a default of another kind: the loss checks it itself


_EXPECTED = {"number": "a number", "number_or_null": "a number or null", "integer": "an integer",
             "integer_or_null": "an integer or null", "bool": "true or false", "string": "a string",
             "mapping_or_null": "a mapping of the target loss's arguments, or null",
             "dims": "a positive head size or a list of them, e.g. [1024, 1536, 2048]"}


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (list, tuple)):
        return f"a list ({_short(value)})"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "..."


def _short(value: Sequence[Any]) -> str:
    text = repr(list(value))
    return text if len(text) <= 40 else text[:40] + "..."


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_ok(kind: str, value: Any) -> bool:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {"number": is_number, "number_or_null": value is None or is_number, "integer": _is_integer(value),
            "integer_or_null": value is None or _is_integer(value), "bool": isinstance(value, bool),
            "string": isinstance(value, str), "mapping_or_null": value is None or isinstance(value, dict),
            "dims": _is_integer(value) or (isinstance(value, (list, tuple)) and all(map(_is_integer, value)))}[kind]


def check_dml_arguments(loss: LossConfig, path: str = "loss.dml_arguments", name: str | None = None,
                        arguments: Mapping[str, Any] | None = None) -> None:
    """Each of ``loss.dml_arguments`` has the type its loss takes, before anything is built.

    A number where the loss takes a number (never a list), an integer for counts and seeds,
    true / false for switches, a string for names; S2SD's ``target_arguments`` against the
    target loss, its ``dims`` a positive head size or a list of them. Ranges the library
    would meet later are refused too: seeds in 0..2**32-1, S2SD heads up to
    ``S2SD_DIM_MAX``, cross-batch memory up to ``XBM_MEMORY_MAX``. Unknown losses and
    argument names are left to ``build_dml_loss`` (its error lists the valid ones).

    Raises:
        ConfigError: ``'loss.dml_arguments.gamma' must be a number; got a list ([1, 2])``.
    """
    name = loss.dml if name is None else name
    arguments = loss.dml_arguments if arguments is None else arguments
    if str(name).lower() not in DML_LOSSES:
        return
    defaults = {**dml_loss_arguments(name), **_BUILD_ARGUMENTS}
    for key, value in arguments.items():
        if key not in defaults:
            continue
        kind, full = _argument_type(key, defaults[key]), f"{path}.{key}"
        if kind is None:
            continue
        if not _type_ok(kind, value):
            raise ConfigError(f"'{full}' must be {_EXPECTED[kind]} ({name}'s {key}); got {_kind_of(value)}.")
        if key in _SEED_ARGUMENTS and not 0 <= value <= SEED_MAX:
            raise ConfigError(f"'{full}' must be a seed in 0..{SEED_MAX}; got {value}.")
        if key == "dims":
            dims = value if isinstance(value, (list, tuple)) else [value]
            if not 1 <= len(dims) <= S2SD_HEADS_MAX or not all(1 <= dim <= S2SD_DIM_MAX for dim in dims):
                raise ConfigError(f"'{full}' must be 1 to {S2SD_HEADS_MAX} head sizes in 1..{S2SD_DIM_MAX} (a head has a "
                                  f"dim x dim Dense layer: 8192² float32 is 256 MiB); got {_kind_of(value)}.")
        if key == "xbm_memory_size" and value is not None and value > XBM_MEMORY_MAX:
            raise ConfigError(f"'{full}' must be at most {XBM_MEMORY_MAX} embeddings (more than any benchmark's "
                              f"training images); got {value}.")
        if key == "target_arguments" and value:
            target = arguments.get("target", dml_loss_arguments(name).get("target"))
            check_dml_arguments(loss, full, name=target, arguments=value)


def _compile(network: LanguageGuidedModel, loss: LossConfig, optimizer: OptimizerConfig, training: TrainingConfig,
             guided: bool, num_classes: int | None = None) -> LanguageGuidedModel:
    """``network.compile`` with the loss, optimizer and training sections (ω = 0 without a table)."""
    check_dml_arguments(loss)
    spec = dml_loss_spec(loss, training)
    # "did you mean" from the list the error is about: a misspelt argument among the loss's arguments, a
    # misspelt loss among the losses.
    suggest = (loss.dml, list(DML_LOSSES))
    if str(loss.dml).lower() in DML_LOSSES:
        accepted = [*dml_loss_arguments(loss.dml), *_BUILD_ARGUMENTS]
        unknown = sorted(set(loss.dml_arguments) - set(accepted))
        suggest = (unknown[0], accepted) if unknown else None
    # Built here, so that an error in the loss's own arguments names loss.dml_arguments.
    with config_keys("loss.dml_arguments", arguments=_DML_LOSS_ARGUMENTS, suggest=suggest):
        dml_loss = build_dml_loss(spec.pop("name"), **spec)
    with config_keys("loss.dml", "loss.dml_arguments", arguments=_COMPILE_ARGUMENTS):
        network.compile(
            optimizer=_optimizer(optimizer),
            dml_loss=dml_loss,
            num_classes=num_classes,
            language_weight=loss.language_weight if guided else 0.0,
            language_shift=loss.shift,
            language_temperature=loss.temperature,
            language_delay=loss.delay,
            language_direction=loss.direction,
            weight_decay=optimizer.weight_decay,
            jit_compile=training.jit_compile,
        )
    return network


def precision(training: TrainingConfig, probe: Any = None) -> tuple[str, str]:
    """``(dtype policy, reason)`` of ``training.precision`` (``auto`` resolved on this machine; see
    :func:`~tf_langdml.models.precision.resolve_precision`, ``probe`` for tests)."""
    with config_keys("training.precision"):
        return resolve_precision(training.precision, probe)


def guided_model(model: ModelConfig, image_size: int, loss: LossConfig, optimizer: OptimizerConfig,
                 training: TrainingConfig, table: np.ndarray | None = None, index: str = "label",
                 num_classes: int | None = None, policy: str | None = None) -> LanguageGuidedModel:
    """The compiled :class:`~tf_langdml.models.LanguageGuidedModel`, its layers under the dtype ``policy``.

    ``table``: the language table (None: the baseline, ω = 0); ``index``: :func:`table_index`;
    ``num_classes``: the training classes (for losses with a vector per class); ``policy``:
    the resolved ``training.precision`` (None: resolve it here). Keras adds loss scaling
    under ``mixed_float16`` only; the losses stay float32 under both mixed policies.
    """
    with precision_policy(policy or precision(training)[0]):
        network = LanguageGuidedModel(embedder(model, image_size), language_table=table, table_index=index)
        _compile(network, loss, optimizer, training, guided=table is not None, num_classes=num_classes)
        network.build_optimizers()
    return network


def _stand_in_backbone(image_size: int) -> keras.Model:
    return keras.Sequential([keras.Input((image_size, image_size, 3)), keras.layers.MaxPooling2D(image_size)],
                            name="stand_in_backbone")


def check_embedder(model: ModelConfig, image_size: int) -> None:
    """The backbone name, a weights file, pooling, embed_dim and the image size, without building the backbone."""
    with config_keys("model.backbone", suggest=(model.backbone, BACKBONES)):
        backbone_spec(model.backbone)
    if model.weights not in (None, "imagenet"):
        resolve_weights(model.backbone, model.weights)  # FileNotFoundError naming the file
    with config_keys("model.backbone", arguments=_MODEL_ARGUMENTS):
        build_embedder(_stand_in_backbone(image_size), weights=None, embed_dim=model.embed_dim, pooling=model.pooling,
                       freeze_bn_statistics=False, input_shape=(image_size, image_size, 3))


def check_model(loss: LossConfig, optimizer: OptimizerConfig, training: TrainingConfig) -> None:
    """The loss, optimizer and training sections through ``LanguageGuidedModel.compile`` on a stand-in embedder."""
    stand_in = build_embedder(_stand_in_backbone(2), weights=None, embed_dim=2, freeze_bn_statistics=False,
                              input_shape=(2, 2, 3))
    _compile(LanguageGuidedModel(stand_in), loss, optimizer, training, guided=True, num_classes=2)


# -- callbacks, metrics ------------------------------------------------------------------------


def callbacks(training: TrainingConfig, evaluation: EvaluationConfig, image_size: int, split: Split,
              log_dir: str | os.PathLike, fixed_batch: Any,
              fixed_batch_class_names: Sequence[str] | None = None) -> list[keras.callbacks.Callback]:
    """Retrieval evaluation on ``split`` (the evaluation split) and TensorBoard every ``training.eval_every`` epochs.

    TensorBoard: the loss diagnostics every epoch; at every evaluation the top-5 retrievals
    of 8 fixed queries of ``split`` and the S_img | S_lang heat map of ``fixed_batch``, whose
    labels index ``fixed_batch_class_names`` (the training split's class names; None: label
    numbers); the embedding projector of ``split`` at the end.
    """
    with config_keys("training.eval_every", arguments={"every": "training.eval_every", "ks": "evaluation.ks"}):
        retrieval = RetrievalEvaluation(split, every=training.eval_every, batch_size=evaluation.batch_size,
                                        image_size=image_size, ks=evaluation.ks, log_dir=log_dir, verbose=0)
        return [
            retrieval,
            RetrievalPictures(retrieval, log_dir, seed=training.seed),  # after the evaluation it draws
            LanguageGuidanceTensorBoard(log_dir, fixed_batch=fixed_batch, every=training.eval_every,
                                        projector_split=split, image_size=image_size, diagnostics_every=1,
                                        class_names=fixed_batch_class_names),
        ]


def check_evaluation(evaluation: EvaluationConfig, training: TrainingConfig) -> None:
    """``training.eval_every`` (the retrieval callback's check) and ``evaluation.ks`` (retrieval_metrics') on stand-ins."""
    with config_keys("training.eval_every"):
        RetrievalEvaluation(None, every=training.eval_every)
    with config_keys("evaluation.ks"):
        retrieval_metrics(np.eye(2, dtype=np.float32), np.zeros(2, np.int64), evaluation.ks)


def retrievable_images(split: Split) -> int:
    """The fewest images one query of ``split`` can retrieve: the gallery's size (query / gallery protocol),
    else every other image of the split (leave-one-out)."""
    return int(split.gallery.sum()) if split.gallery is not None else len(split.labels) - 1


def check_ks(evaluation: EvaluationConfig, split: Split | int, split_name: str | None = None) -> None:
    """``evaluation.ks`` against the evaluation split: no k above what a query can retrieve.

    Recall@k with k larger than the gallery is 1 for every query (the whole gallery is
    "retrieved"), a number that says nothing; train() calls this once the data is loaded,
    before the run directory is written. ``split``: the evaluation split, or its
    :func:`retrievable_images` as an int; ``split_name``: for the message (default
    ``evaluation.split``).
    """
    available = split if isinstance(split, int) else retrievable_images(split)
    too_large = [k for k in evaluation.ks if k > available]
    if too_large:
        protocol = "" if isinstance(split, int) else (
            " (the size of its gallery)" if split.gallery is not None else " (leave-one-out: the split's images - 1)")
        raise ConfigError(
            f"'evaluation.ks' has k = {', '.join(map(str, too_large))}, but a query of the {split_name or evaluation.split} "
            f"split can retrieve at most {available} images{protocol}; use ks up to {available}.")


def evaluation_metrics(evaluation: EvaluationConfig, data: DataConfig, language: LanguageConfig, seed: int,
                       network: keras.Model, split: Split, encoder: TextEncoder | None = None,
                       verbose: int = 1) -> dict[str, float]:
    """Retrieval, clustering and semantic-consistency metrics of ``network`` (an embedder or model) on ``split``.

    Retrieval follows the split's protocol (query / gallery when it has a gallery mask,
    else leave-one-out); clustering and the semantic metrics use all images of the split.
    ``encoder``: the text encoder for the semantic metrics (built from ``language`` when None).
    """
    embeddings = embed_split(network, split, evaluation.batch_size, data.image_size, verbose=verbose)
    with config_keys("evaluation.ks"):
        metrics = split_retrieval_metrics(embeddings, split, evaluation.ks)
    if evaluation.clustering:
        metrics.update(clustering_metrics(embeddings, split.labels, seed=seed))
    if evaluation.semantic:
        neighbors = nearest_neighbors(embeddings, k=1)[0][:, 0]
        encoder = text_encoder(language) if encoder is None else encoder
        with config_keys(arguments=_LANGUAGE_ARGUMENTS):
            metrics.update(semantic_consistency(embeddings, split.labels, split.class_names, encoder,
                                                language.template, neighbors=neighbors))
        if data.dataset == "cars196":
            metrics["make_recall@1"] = make_level_recall_at_1(embeddings, split.labels, split.class_names, neighbors)
    return metrics
