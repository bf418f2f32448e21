"""The experiment config: YAML <-> frozen dataclasses; imports no TensorFlow.

Unknown keys are errors that name the closest valid key; every value is type-checked.
``--set section.key=value`` overrides are parsed as YAML scalars and checked the same way.
:func:`validate` checks only what belongs to the config itself (counts that must be
positive, the run's name, which guidance and optimizer, a batch of whole classes, the
background colour); values the library takes (a backbone, a loss, a direction, top-k,
a template, ...) are checked by the library itself when
:mod:`tf_langdml.runs.builders` passes them on, and its error is re-raised naming the key.
"""

import dataclasses
import difflib
import numbers
import typing

import yaml

GUIDANCE = ("none", "elg", "plg")
OPTIMIZERS = ("adam", "sgd")
EVALUATION_SPLITS = ("test", "validation")
BACKGROUNDS = ("white", "black")  # or [r, g, b] (tf_langdml.data.preprocessing.parse_background)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")  # tf_langdml.models.precision.PRECISIONS


def _positive(default, allow_null=False):
    """A field that must be an integer >= 1 (or null when ``allow_null``)."""
    return dataclasses.field(default=default, metadata={"min": 1, "null": allow_null})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "demo"  # demo | folder | cub200 | cars196 | sop
    data_dir: typing.Optional[str] = None  # TFDS data_dir; for "folder" the image folder root
    manual_dir: typing.Optional[str] = None  # TFDS manual downloads (CUB, Cars, SOP archives)
    test_fraction: float = 0.5  # "folder": the last part of the sorted classes is test
    test_classes: typing.Any = None  # "folder": test class folders, a list or a text file of names (null: test_fraction)
    gallery_list: typing.Optional[str] = None  # "folder": a text file of gallery images, paths relative to data_dir
    validation_fraction: float = 0.0  # training classes held out for model selection (every n-th; 0: none)
    image_size: int = _positive(224)
    batch_size: int = _positive(90)
    examples_per_class: int = _positive(2)
    antialias: bool = True
    background: typing.Any = "white"  # transparent pixels composited onto: white | black | [r, g, b]
    max_pixels: typing.Optional[int] = _positive(64_000_000, allow_null=True)  # larger images are skipped, never decoded


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
    classifier_image_size: int = _positive(224)  # the classifiers were trained at 224
    top_k: int = 5
    level: str = "class"  # PLG: class | sample


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-5
    weight_decay: float = 4e-4  # coupled L2, as the paper's PyTorch Adam


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    epochs: int = _positive(150)
    steps_per_epoch: typing.Optional[int] = _positive(None, allow_null=True)  # default: training images // batch_size
    eval_every: int = 5  # epochs between retrieval evaluations
    checkpoint_every: int = _positive(100)  # optimizer steps between resume checkpoints (and at the end)
    seed: int = 0
    # float32 | mixed_float16 | mixed_bfloat16 | auto (bfloat16 where the device has it fast; docs/distribute.md).
    # Layers only: losses, similarity matrices and metrics stay float32. Default float32: the same numbers everywhere.
    precision: str = "float32"
    jit_compile: bool = False  # XLA-compile the train step
    deterministic: bool = False  # TensorFlow op determinism: a rerun is bit-identical (costs speed; see docs/runs.md)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    batch_size: int = _positive(128)
    ks: typing.Tuple[int, ...] = (1, 2, 4, 8)
    clustering: bool = True
    semantic: bool = True
    split: str = "test"  # test | validation (model selection: the test split is not read)


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


def did_you_mean(value, choices, prefix="", fallback=True):
    """"; did you mean 'x'?" for the closest of ``choices``; else "; valid values: [...]" (or "" without ``fallback``)."""
    match = difflib.get_close_matches(str(value), [str(choice) for choice in choices], n=1, cutoff=0.5)
    if match:
        return f"; did you mean '{prefix}{match[0]}'?"
    return f"; valid values: {sorted(choices)}" if fallback else ""


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


def _removed_key(full, value):
    """The message for a key that no longer exists, saying what to write instead; None for any other key."""
    if full == "training.mixed_precision":
        replacement = ({True: "mixed_float16", False: "float32"}[value] if isinstance(value, bool)
                       else "mixed_float16 (for true) or float32 (for false)")
        return (f"'training.mixed_precision' was replaced by 'training.precision' (float32 | mixed_float16 | "
                f"mixed_bfloat16 | auto): write 'training.precision: {replacement}' instead.")
    return None


def _build(cls, values, path=""):
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    arguments = {}
    for key, value in values.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields and _removed_key(full, value):
            raise ConfigError(_removed_key(full, value))
        if key not in fields:
            raise ConfigError(f"Unknown config key '{full}'{did_you_mean(key, list(fields), f'{path}.' if path else '')}")
        arguments[key] = _coerce(value, hints[key], full)
        minimum = fields[key].metadata.get("min")
        if minimum is not None and not (arguments[key] is None and fields[key].metadata["null"]):
            if arguments[key] is None or arguments[key] < minimum:
                null = " (or null: no limit)" if fields[key].metadata["null"] else ""
                raise ConfigError(f"'{full}' must be at least {minimum}{null}; got {value!r}.")
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


def config_to_yaml(config):
    """The config as YAML text, every key in declaration order (what a run directory's config.yaml holds)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def config_from_yaml(text):
    """An :class:`ExperimentConfig` from YAML text."""
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"The config is not valid YAML: {error}") from error
    return config_from_dict(values)


def set_key(values, key, value, what="--set"):
    """Set ``section.key`` in nested dicts (in place), creating sections; ``what`` names the caller in errors."""
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{what} key {key!r} is malformed; use section.key=value.")
    target = values
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{what} {key}: '{part}' is not a section.")
    target[parts[-1]] = value


def apply_overrides(values, overrides):
    """Apply ``["section.key=value", ...]`` to nested dicts; values are parsed as YAML scalars."""
    values = yaml.safe_load(yaml.safe_dump(values or {}))  # a deep copy
    for override in overrides or ():
        if "=" not in override:
            raise ConfigError(f"--set takes key=value (for example training.epochs=10); got {override!r}.")
        key, raw = override.split("=", 1)
        set_key(values, key, None)  # the key's errors before the value's
        set_key(values, key, yaml.safe_load(raw))
    return values


def read_yaml(path):
    """The nested dicts of a YAML config file (an empty file is an empty config)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"Config file {path} does not exist; the shipped ones are in configs/.") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file {path} is not valid YAML: {error}") from error


def load_config(path=None, overrides=()):
    """Read a YAML file (or the defaults when ``path`` is None), apply ``--set`` overrides, validate."""
    values = read_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(values, overrides))


def _one_of(value, choices, key):
    if value not in choices:
        raise ConfigError(f"'{key}' is {value!r}; expected one of {list(choices)}{did_you_mean(value, choices)}")


def _check_background(background):
    """'white', 'black' or [r, g, b] with integers in 0..255 (as parse_background, without TensorFlow)."""
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ConfigError(f"'data.background' is {background!r}; expected 'white', 'black' or [r, g, b] "
                              "with integers in 0..255.")
        return
    if (not isinstance(background, (list, tuple)) or len(background) != 3
            or not all(isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= value <= 255
                       for value in background)):
        raise ConfigError(f"'data.background' must be 'white', 'black' or [r, g, b] with integers in 0..255; "
                          f"got {background!r}.")


def _check_folder_keys(data):
    """data.test_classes (null, a list of folder names or a file path) and data.gallery_list: only for 'folder'."""
    for key in ("test_classes", "gallery_list"):
        if getattr(data, key) is not None and data.dataset != "folder":
            raise ConfigError(f"'data.{key}' is for data.dataset 'folder' (an image folder); data.dataset is "
                              f"{data.dataset!r}: remove data.{key} or set it to null.")
    test_classes = data.test_classes
    if isinstance(test_classes, str):
        if not test_classes.strip():
            raise ConfigError("'data.test_classes' is an empty string; give a list of class-folder names, the path "
                              "of a text file of them, or null (then data.test_fraction).")
    elif isinstance(test_classes, list):
        if not test_classes:
            raise ConfigError("'data.test_classes' is an empty list; name at least one class folder, or use null "
                              "(then data.test_fraction).")
        for index, name in enumerate(test_classes):
            if not isinstance(name, str) or not name:
                hint = (f" (YAML read it as {type(name).__name__}: quote folder names, e.g. ['001'])"
                        if isinstance(name, (numbers.Number, bool)) else "")
                raise ConfigError(f"'data.test_classes[{index}]' must be a class-folder name (a string); got "
                                  f"{name!r}{hint}.")
    elif test_classes is not None:
        raise ConfigError(f"'data.test_classes' must be null, a list of class-folder names or the path of a text file "
                          f"of them (one a line); got {test_classes!r}.")
    if data.gallery_list is not None and not data.gallery_list.strip():
        raise ConfigError("'data.gallery_list' is an empty string; give the path of a text file of gallery images, "
                          "or null.")


def validate(config):
    """Fail, naming the key, on what the config itself gets wrong (the library checks the values it takes)."""
    data, loss, language = config.data, config.loss, config.language
    if not config.name or "/" in config.name:
        raise ConfigError(f"'name' must be a non-empty folder name without '/'; got {config.name!r}.")
    if data.dataset == "folder" and not data.data_dir:
        raise ConfigError("data.dataset 'folder' needs data.data_dir: the folder with one sub-folder per class.")
    if data.batch_size < 2 * data.examples_per_class:
        raise ConfigError(f"A batch must hold at least 2 classes: data.batch_size {data.batch_size} is less than "
                          f"2 x data.examples_per_class {data.examples_per_class}.")
    _check_background(data.background)
    _check_folder_keys(data)
    if not 0 <= data.validation_fraction < 1:
        raise ConfigError(f"'data.validation_fraction' must be in [0, 1) (the share of training classes held out "
                          f"for model selection); got {data.validation_fraction}.")
    _one_of(config.evaluation.split, EVALUATION_SPLITS, "evaluation.split")
    if config.evaluation.split == "validation" and data.validation_fraction == 0:
        raise ConfigError("evaluation.split is 'validation' but data.validation_fraction is 0: there are no "
                          "validation classes; set data.validation_fraction (for example 0.3).")
    _one_of(language.guidance, GUIDANCE, "language.guidance")
    if language.guidance != "none" and loss.language_weight == 0:
        raise ConfigError(f"language.guidance is '{language.guidance}' but loss.language_weight (ω) is 0; set ω > 0.")
    _one_of(config.optimizer.name, OPTIMIZERS, "optimizer.name")
    _one_of(config.training.precision, PRECISIONS, "training.precision")
    if not config.optimizer.learning_rate > 0:
        raise ConfigError(f"'optimizer.learning_rate' must be > 0; got {config.optimizer.learning_rate}.")
