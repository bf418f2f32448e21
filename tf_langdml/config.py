"""Experiment configuration: YAML -> frozen dataclasses, validated before any data is read.

Unknown keys are errors that name the closest valid key; every value is type-checked;
impossible combinations (a negative weight, top-k above 1000, a batch that images per
class do not divide) fail in :func:`validate`. ``--set section.key=value`` overrides
are parsed as YAML scalars and checked the same way.
"""

import dataclasses
import difflib
import typing

import yaml

from tf_langdml.data.benchmarks import BENCHMARKS
from tf_langdml.data.preprocessing import parse_background
from tf_langdml.losses.dml import DML_LOSSES
from tf_langdml.models.backbones import BACKBONES
from tf_langdml.models.classifier import CLASSIFIERS
from tf_langdml.models.embedder import POOLINGS

DATASETS = ("demo", "folder") + tuple(BENCHMARKS)
GUIDANCE = ("none", "elg", "plg")
OPTIMIZERS = ("adam", "sgd")
DIRECTIONS = ("image_to_language", "language_to_image")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "demo"  # demo | folder | cub200 | cars196 | sop
    data_dir: typing.Optional[str] = None  # TFDS data_dir; for "folder" the image folder root
    manual_dir: typing.Optional[str] = None  # TFDS manual downloads (CUB, Cars, SOP archives)
    test_fraction: float = 0.5  # "folder": the last part of the sorted classes is test
    image_size: int = 224
    batch_size: int = 90
    examples_per_class: int = 2
    antialias: bool = True
    background: typing.Any = "white"  # transparent pixels composited onto: white | black | [r, g, b]
    max_pixels: typing.Optional[int] = 64_000_000  # larger images (by their header) are skipped, never decoded


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet50"
    weights: typing.Optional[str] = "imagenet"  # "imagenet", a weights file, or null
    embed_dim: int = 128
    pooling: str = "avg"
    freeze_bn_statistics: bool = True


@dataclasses.dataclass(frozen=True)
class LossConfig:
    dml: str = "multisimilarity"
    dml_arguments: dict = dataclasses.field(default_factory=dict)  # passed to build_dml_loss
    language_weight: float = 0.0  # ω
    shift: float = 1.0  # γ
    temperature: float = 1.0  # T
    delay: int = 0  # optimizer steps before the language loss switches on
    direction: str = "image_to_language"


@dataclasses.dataclass(frozen=True)
class LanguageConfig:
    guidance: str = "none"  # none | elg (class names) | plg (ImageNet pseudo-labels)
    encoder: str = "minilm"  # minilm | hub:<handle>[|<preprocessor>] | precomputed:<file.npz>
    output_key: typing.Optional[str] = None
    template: str = "a photo of a {}"
    classifier: str = "resnet50"  # PLG: the ImageNet classifier
    classifier_weights: typing.Optional[str] = "imagenet"
    classifier_image_size: int = 224  # the classifiers were trained at 224
    top_k: int = 5
    level: str = "class"  # PLG: class | sample


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-5
    weight_decay: float = 4e-4  # coupled L2, as the paper's PyTorch Adam


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 150
    steps_per_epoch: typing.Optional[int] = None  # default: training images // batch_size
    eval_every: int = 5  # epochs between retrieval evaluations
    checkpoint_every: int = 100  # optimizer steps between resume checkpoints (and every epoch end)
    seed: int = 0
    mixed_precision: bool = False  # mixed_float16 layers; losses and similarity matrices stay float32
    jit_compile: bool = False  # XLA-compile the train step


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    batch_size: int = 128
    ks: typing.Tuple[int, ...] = (1, 2, 4, 8)
    clustering: bool = True
    semantic: bool = True


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    runs_dir: str = "runs"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    language: LanguageConfig = dataclasses.field(default_factory=LanguageConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and what to do."""


def _closest(key, choices, prefix=""):
    match = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{match[0]}'?" if match else f"; valid values: {sorted(choices)}"


def _coerce(value, annotation, path):
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is typing.Any:  # checked by validate()
        return list(value) if isinstance(value, tuple) else value
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [argument for argument in arguments if argument is not type(None)][0]
        return _coerce(value, inner, path)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping of {annotation.__name__} keys; got {value!r}.")
        return _build(annotation, value, path)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{path}' must be true or false; got {value!r}.")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{path}' must be an integer; got {value!r}.")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{path}' must be a number; got {value!r}.")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{path}' must be a string; got {value!r}.")
        return value
    if annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping; got {value!r}.")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{path}' must be a list; got {value!r}.")
        return tuple(_coerce(item, arguments[0], f"{path}[{index}]") for index, item in enumerate(value))
    raise TypeError(f"No coercion for {annotation} at {path}.")


def _build(cls, values, path=""):
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    arguments = {}
    for key, value in values.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"Unknown config key '{full}'{_closest(str(key), names, f'{path}.' if path else '')}")
        arguments[key] = _coerce(value, hints[key], full)
    return cls(**arguments)


def config_from_dict(values):
    """An :class:`ExperimentConfig` from nested dicts (as YAML gives), checked and validated."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"A config must be a mapping at the top level; got {type(values).__name__}.")
    config = _build(ExperimentConfig, values)
    validate(config)
    return config


def config_to_dict(config):
    """Plain nested dicts (tuples as lists), ready for YAML or JSON."""

    def plain(value):
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(values, overrides):
    """Apply ``["section.key=value", ...]`` to nested dicts; values are parsed as YAML scalars."""
    values = yaml.safe_load(yaml.safe_dump(values or {}))  # a deep copy
    for override in overrides or ():
        if "=" not in override:
            raise ConfigError(f"--set takes key=value (for example training.epochs=10); got {override!r}.")
        key, raw = override.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set key {key!r} is malformed; use section.key=value.")
        target = values
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section.")
        target[parts[-1]] = yaml.safe_load(raw)
    return values


def load_config(path=None, overrides=()):
    """Read a YAML file (or the defaults when ``path`` is None), apply ``--set`` overrides, validate."""
    values = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                values = yaml.safe_load(handle) or {}
        except FileNotFoundError as error:
            raise ConfigError(f"Config file {path} does not exist; the shipped ones are in configs/.") from error
        except yaml.YAMLError as error:
            raise ConfigError(f"Config file {path} is not valid YAML: {error}") from error
    return config_from_dict(apply_overrides(values, overrides))


def _one_of(value, choices, key):
    if value not in choices:
        raise ConfigError(f"'{key}' is {value!r}; expected one of {list(choices)}{_closest(str(value), list(choices))}")


def validate(config):
    """Fail early, naming the key, on values that cannot train."""
    data, model, loss, language, training = config.data, config.model, config.loss, config.language, config.training
    _one_of(data.dataset, DATASETS, "data.dataset")
    if data.dataset == "folder" and not data.data_dir:
        raise ConfigError("data.dataset 'folder' needs data.data_dir: the folder with one sub-folder per class.")
    for key, value in [("data.image_size", data.image_size), ("data.batch_size", data.batch_size),
                       ("data.examples_per_class", data.examples_per_class), ("model.embed_dim", model.embed_dim),
                       ("training.epochs", training.epochs), ("training.eval_every", training.eval_every),
                       ("training.checkpoint_every", training.checkpoint_every),
                       ("evaluation.batch_size", config.evaluation.batch_size),
                       ("language.classifier_image_size", config.language.classifier_image_size)]:
        if value < 1:
            raise ConfigError(f"'{key}' must be at least 1; got {value}.")
    if data.batch_size % data.examples_per_class:
        raise ConfigError(
            f"data.batch_size {data.batch_size} is not divisible by data.examples_per_class "
            f"{data.examples_per_class}; batches hold whole classes (for example batch_size "
            f"{data.batch_size - data.batch_size % data.examples_per_class})."
        )
    if data.batch_size // data.examples_per_class < 2:
        raise ConfigError("A batch must hold at least 2 classes (data.batch_size / data.examples_per_class >= 2).")
    try:
        parse_background(data.background)
    except ValueError as error:
        raise ConfigError(f"'data.background': {error}") from None
    if data.max_pixels is not None and data.max_pixels < 1:
        raise ConfigError(f"'data.max_pixels' must be a positive number of pixels (or null: no limit); got {data.max_pixels}.")
    if not 0.0 < data.test_fraction < 1.0:
        raise ConfigError(f"'data.test_fraction' must be between 0 and 1; got {data.test_fraction}.")
    if training.steps_per_epoch is not None and training.steps_per_epoch < 1:
        raise ConfigError(f"'training.steps_per_epoch' must be at least 1 (or null); got {training.steps_per_epoch}.")
    _one_of(model.backbone, tuple(BACKBONES), "model.backbone")
    _one_of(model.pooling, tuple(POOLINGS), "model.pooling")
    _one_of(loss.dml, tuple(DML_LOSSES), "loss.dml")
    _one_of(loss.direction, DIRECTIONS, "loss.direction")
    if loss.language_weight < 0:
        raise ConfigError(f"'loss.language_weight' (ω) must be >= 0; got {loss.language_weight}.")
    if loss.temperature <= 0:
        raise ConfigError(f"'loss.temperature' must be > 0; got {loss.temperature}.")
    if loss.shift < 0 or loss.delay < 0:
        raise ConfigError("'loss.shift' and 'loss.delay' must be >= 0.")
    _one_of(language.guidance, GUIDANCE, "language.guidance")
    _one_of(language.classifier, CLASSIFIERS, "language.classifier")
    _one_of(language.level, ("class", "sample"), "language.level")
    if not 1 <= language.top_k <= 1000:
        raise ConfigError(f"'language.top_k' must be in 1..1000 (ImageNet has 1000 classes); got {language.top_k}.")
    if "{}" not in language.template:
        raise ConfigError(f"'language.template' {language.template!r} has no '{{}}' for the class name.")
    if language.guidance != "none" and loss.language_weight == 0:
        raise ConfigError(f"language.guidance is '{language.guidance}' but loss.language_weight (ω) is 0; set ω > 0.")
    _one_of(config.optimizer.name, OPTIMIZERS, "optimizer.name")
    if config.optimizer.learning_rate <= 0 or config.optimizer.weight_decay < 0:
        raise ConfigError("'optimizer.learning_rate' must be > 0 and 'optimizer.weight_decay' >= 0.")
    if not config.evaluation.ks or min(config.evaluation.ks) < 1:
        raise ConfigError(f"'evaluation.ks' must be positive integers; got {list(config.evaluation.ks)}.")
    if not config.name or "/" in config.name:
        raise ConfigError(f"'name' must be a non-empty folder name without '/'; got {config.name!r}.")
