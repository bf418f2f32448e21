"""The experiment config: YAML <-> frozen dataclasses; imports no TensorFlow.

Unknown keys are errors that name the closest valid key; every value is type-checked.
``--set section.key=value`` overrides are parsed as YAML scalars and checked the same way.

Files and ``--set`` values go through one YAML loader (:func:`load_yaml`): safe types
only, YAML 1.2 floats (``1e-4`` is a number), and refused before anything is expanded:
anchors and aliases (an alias bomb or a self-reference), any tag but the plain ones
(``!!python/object``...), nesting deeper than :data:`MAX_DEPTH`, integers of more than
:data:`MAX_INTEGER_DIGITS` digits, and files larger than :data:`MAX_CONFIG_BYTES` or not
regular files. Every integer key has a range (the library's, or a bound justified
where it is declared), every float key must be finite.
:func:`validate` checks only what belongs to the config itself (counts that must be
positive, the run's name, which guidance and optimizer, a batch of whole classes, the
background colour); values the library takes (a backbone, a loss, a direction, top-k,
a template, ...) are checked by the library itself when
:mod:`tf_langdml.runs.builders` passes them on, and its error is re-raised naming the key.
"""

import copy
import dataclasses
import difflib
import math
import numbers
import os
import re
import stat
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

GUIDANCE = ("none", "elg", "plg")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "step")  # step: decay_factor at each of decay_epochs (tf_langdml.models.learning_rates)
EVALUATION_SPLITS = ("test", "validation")
BACKGROUNDS = ("white", "black")  # or [r, g, b] (tf_langdml.data.preprocessing.parse_background)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")  # tf_langdml.models.precision.PRECISIONS


INT64_MAX = 2**63 - 1  # every integer key is handed to TensorFlow as an int64 at most
SEED_MAX = 2**32 - 1  # keras.utils.set_random_seed (numpy's legacy seeding) takes 0..2**32-1
# Images, batches and layer sizes: bounds far above every benchmark, below what would exhaust memory.
IMAGE_SIZE_MAX = 4096  # one 4096 x 4096 RGB float32 image is 192 MiB (the paper: 224)
BATCH_SIZE_MAX = 65536  # above the largest benchmark training split (SOP: 59,551 images)
# A decoded RGB image of 2**31 - 1 pixels is 6 GiB; the header check multiplies height x width in int64.
MAX_PIXELS_MAX = 2**31 - 1
# The Dense layer from the 2048 ResNet-50 features: 2048 x 65536 float32 is 512 MiB, 2 GiB with Adam's moments.
EMBED_DIM_MAX = 65536
EPOCHS_MAX = 1_000_000  # with STEPS_MAX, the optimizer step count stays far inside its int64 counter
STEPS_MAX = 1_000_000_000
K_MAX = 2**31 - 1  # far above any gallery; builders.check_ks refuses k above the evaluation split's gallery
NAME_MAX = 100  # characters of the run's folder name (sweeps append suffixes; file systems allow 255 bytes)


def _positive(default, allow_null=False, maximum=INT64_MAX, why=""):
    """A field that must be an integer in 1..``maximum`` (or null when ``allow_null``); ``why``: the bound's reason."""
    return _integer(default, 1, maximum, allow_null, why)


def _integer(default, minimum=-INT64_MAX - 1, maximum=INT64_MAX, allow_null=False, why=""):
    """An integer field in ``minimum``..``maximum`` (null allowed with ``allow_null``)."""
    return dataclasses.field(default=default, metadata={"min": minimum, "max": maximum, "null": allow_null, "why": why})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "demo"  # demo | folder | cub200 | cars196 | sop
    data_dir: typing.Optional[str] = None  # TFDS data_dir; for "folder" the image folder root
    manual_dir: typing.Optional[str] = None  # TFDS manual downloads (CUB, Cars, SOP archives)
    test_fraction: float = 0.5  # "folder": the last part of the sorted classes is test
    test_classes: typing.Any = (
        None  # "folder": test class folders, a list or a text file of names (null: test_fraction)
    )
    gallery_list: typing.Optional[str] = None  # "folder": a text file of gallery images, paths relative to data_dir
    validation_fraction: float = 0.0  # training classes held out for model selection (every n-th; 0: none)
    image_size: int = _positive(224, maximum=IMAGE_SIZE_MAX, why="a 4096 x 4096 RGB float32 image is 192 MiB")
    batch_size: int = _positive(90, maximum=BATCH_SIZE_MAX, why="more than the largest benchmark split")
    examples_per_class: int = _positive(2, maximum=BATCH_SIZE_MAX // 2, why="a batch holds 2 classes or more")
    antialias: bool = True
    background: typing.Any = "white"  # transparent pixels composited onto: white | black | [r, g, b]
    max_pixels: typing.Optional[int] = _positive(  # larger images are skipped, never decoded
        64_000_000, allow_null=True, maximum=MAX_PIXELS_MAX, why="a decoded RGB image that large is 6 GiB"
    )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet50"
    weights: typing.Optional[str] = "imagenet"  # "imagenet", a weights file, or null
    embed_dim: int = _positive(
        128, maximum=EMBED_DIM_MAX, why="a Dense layer of 2048 x 65536 float32 weights is 512 MiB, 2 GiB with Adam"
    )
    pooling: str = "avg"
    freeze_bn_statistics: bool = True


@dataclasses.dataclass(frozen=True)
class LossConfig:
    dml: str = "multisimilarity"
    dml_arguments: dict = dataclasses.field(default_factory=dict)  # passed to build_dml_loss
    language_weight: float = 0.0  # ω
    shift: float = 1.0  # γ
    temperature: float = 1.0  # T
    delay: int = _integer(0)  # optimizer steps before the language loss switches on (>= 0: the library checks)
    direction: str = "image_to_language"


@dataclasses.dataclass(frozen=True)
class LanguageConfig:
    guidance: str = "none"  # none | elg (class names) | plg (ImageNet pseudo-labels)
    encoder: str = "minilm"  # minilm | hub:<handle>[|<preprocessor>] | precomputed:<file.npz>
    output_key: typing.Optional[str] = None
    template: str = "a photo of a {}"
    classifier: str = "resnet50"  # PLG: the ImageNet classifier
    classifier_weights: typing.Optional[str] = "imagenet"
    classifier_image_size: int = _positive(
        224,
        maximum=IMAGE_SIZE_MAX,  # the classifiers were trained at 224
        why="a 4096 x 4096 RGB float32 image is 192 MiB",
    )
    top_k: int = _integer(5)  # 1..1000: the library checks
    level: str = "class"  # PLG: class | sample


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-5
    weight_decay: float = 4e-4  # coupled L2, as the paper's PyTorch Adam
    head_learning_rate: typing.Optional[float] = None  # the projection head's rate (the code's --fc_lr); null: base
    schedule: str = "constant"  # constant | step
    # schedule step: the rates times decay_factor at each epoch listed (the code's --tau and --gamma; > 0: the library)
    decay_epochs: typing.Tuple[int, ...] = ()
    decay_factor: float = 0.1


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    epochs: int = _positive(150, maximum=EPOCHS_MAX, why="the optimizer step count must fit its counter")
    steps_per_epoch: typing.Optional[int] = _positive(
        None,
        allow_null=True,
        maximum=STEPS_MAX,  # default: images // batch
        why="the optimizer step count must fit its counter",
    )
    # epochs at the start whose backbone gets no update (the head and the loss's variables train; the code's --warmup);
    # equal to training.epochs: the backbone is frozen for the whole run
    warmup_epochs: int = _integer(0, 0, EPOCHS_MAX, why="at most training.epochs")
    eval_every: int = _integer(5)  # epochs between retrieval evaluations (>= 1: the library checks)
    checkpoint_every: int = _positive(100)  # optimizer steps between resume checkpoints (and at the end)
    seed: int = _integer(0, 0, SEED_MAX, why="what keras.utils.set_random_seed accepts")
    # float32 | mixed_float16 | mixed_bfloat16 | auto (bfloat16 where the device has it fast; docs/distribute.md).
    # Layers only: losses, similarity matrices and metrics stay float32. Default float32: the same numbers everywhere.
    precision: str = "float32"
    jit_compile: bool = False  # XLA-compile the train step
    deterministic: bool = False  # TensorFlow op determinism: a rerun is bit-identical (costs speed; see docs/runs.md)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    batch_size: int = _positive(128, maximum=BATCH_SIZE_MAX, why="more than the largest benchmark split")
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


# Keys whose value is one of a fixed set of lower-case names (here or in a library registry): the value is read
# case-insensitively ('language.guidance: PLG' is 'plg'). Not language.encoder or the weights keys (paths, handles).
CHOICE_KEYS = frozenset(
    {
        "data.dataset",
        "model.backbone",
        "model.pooling",
        "loss.dml",
        "loss.direction",
        "language.guidance",
        "language.classifier",
        "language.level",
        "optimizer.name",
        "optimizer.schedule",
        "training.precision",
        "evaluation.split",
    }
)


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and what to do."""


def did_you_mean(value: object, choices: Iterable[str], prefix: str = "", fallback: bool = True) -> str:
    """ "; did you mean 'x'?" for the closest of ``choices``; else "; valid values: [...]" (or "" without ``fallback``)."""
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
            hint = (
                f" (write it as a whole number, e.g. {int(value)})"
                if isinstance(value, float) and value.is_integer() and abs(value) < 2**53
                else ""
            )
            raise ConfigError(f"'{path}' must be an integer; got {_short(value)}{hint}.")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{path}' must be a number; got {_short(value)}.")
        return _finite_float(value, path)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{path}' must be a string; got {_short(value)}.")
        if "\0" in value:
            raise ConfigError(f"'{path}' contains a NUL character; remove it (no path or name can hold one).")
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
        replacement = (
            {True: "mixed_float16", False: "float32"}[value]
            if isinstance(value, bool)
            else "mixed_float16 (for true) or float32 (for false)"
        )
        return (
            f"'training.mixed_precision' was replaced by 'training.precision' (float32 | mixed_float16 | "
            f"mixed_bfloat16 | auto): write 'training.precision: {replacement}' instead."
        )
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
            raise ConfigError(
                f"Unknown config key '{full}'{did_you_mean(key, list(fields), f'{path}.' if path else '')}"
            )
        arguments[key] = _coerce(value, hints[key], full)
        if (full in CHOICE_KEYS or full == "data.background") and isinstance(arguments[key], str):
            arguments[key] = arguments[key].lower()
        _check_range(fields[key].metadata, arguments[key], value, full)
    return cls(**arguments)


def _check_range(metadata, number, value, full):
    """A bounded integer field (:func:`_integer`): in its range, or null where allowed."""
    if "min" not in metadata or (number is None and metadata["null"]):
        return
    null = " (or null: no limit)" if metadata["null"] else ""
    if number is None:
        raise ConfigError(f"'{full}' must be an integer{null}; got null.")
    minimum, maximum = metadata["min"], metadata["max"]
    if number < minimum:
        raise ConfigError(f"'{full}' must be at least {minimum}{null}; got {value!r}.")
    if number > maximum:
        why = f" ({metadata['why']})" if metadata["why"] else ""
        raise ConfigError(f"'{full}' must be at most {maximum}{why}; got {_short(value)}.")


def _short(value, limit=80):
    """``repr(value)``, cut at ``limit`` characters (a value in an error message, however large)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    kind = {list: "a list ", dict: "a mapping ", tuple: "a list "}.get(type(value), "")
    return kind + (text if len(text) <= limit else text[:limit] + "...")


def _finite_float(value, path):
    """``float(value)``, refused naming ``path`` when not finite (``.inf``, ``.nan``, ``1e999``) or too large."""
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"'{path}' must be a finite number; got {_short(value)}.")
    return number


def config_from_dict(values: Mapping[str, Any] | None) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from nested dicts (as YAML gives), checked and validated."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"A config must be a mapping at the top level; got {type(values).__name__}.")
    config = _build(ExperimentConfig, values)
    validate(config)
    return config


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """Plain nested dicts (tuples as lists), ready for YAML or JSON."""

    def plain(value):
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(dataclasses.asdict(config))


# -- YAML ----------------------------------------------------------------------------------------

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; 1 MiB leaves room for long comments
MAX_DEPTH = 16  # our deepest key is loss.dml_arguments.target_arguments.<argument> (4 levels)
MAX_INTEGER_DIGITS = 40  # every integer key fits in 19 digits (int64); Python refuses > 4300 with a traceback
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "seq", "map"))
# YAML 1.2's float with an exponent (1e-4, 3E-5, 1e+3, .5e-3): YAML 1.1, which PyYAML implements, needs a dot
# and a signed exponent, so "1e-4" -- the notation the docs print -- would be a string.
_FLOAT_1_2 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class _Refused(yaml.YAMLError):
    """A YAML construct a config may not use; ``key``: where (dotted), ``mark``: the line."""

    def __init__(self, message, key, mark):
        super().__init__(message)
        self.message, self.key, self.mark = message, key, mark


def _resolvers(float_1_2=True, timestamps=False):
    """A copy of SafeLoader's implicit resolvers (the dict's lists are shared, so copied one by one)."""
    resolvers = {
        first: [(tag, pattern) for tag, pattern in entries if timestamps or tag != "tag:yaml.org,2002:timestamp"]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    if float_1_2:
        for first in "-+.0123456789":
            resolvers.setdefault(first, []).append(("tag:yaml.org,2002:float", _FLOAT_1_2))
    return resolvers


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases, tags and deep nesting as the events arrive, before composing.

    Nothing is expanded: the first anchor or alias stops the parse, so an alias bomb costs
    only the bytes read so far. Dates stay strings (``name: 2026-12-05``) and YAML 1.2
    floats are numbers.
    """

    yaml_implicit_resolvers = _resolvers()

    def __init__(self, stream, prefix=""):
        super().__init__(stream)
        self._keys = [prefix]

    def _where(self):
        return ".".join(key for key in self._keys if key).replace(".[", "[")

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(index, yaml.ScalarNode):
            self._keys.append(str(index.value))
        elif isinstance(index, int) and isinstance(parent, yaml.SequenceNode):
            self._keys.append(f"[{index}]")
        else:  # the document's root, or a mapping's key
            self._keys.append("(a key)" if isinstance(parent, yaml.MappingNode) else "")
        try:
            self._check_event(event)
            return super().compose_node(parent, index)
        finally:
            self._keys.pop()

    def _check_event(self, event):
        where = self._where()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise _Refused(
                f"uses a YAML {'alias' if sign == '*' else 'anchor'} ({sign}{event.anchor}); anchors and "
                "aliases are refused (they can expand without bound): write the value out",
                where,
                event.start_mark,
            )
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and tag not in _PLAIN_TAGS:
            raise _Refused(
                f"has the YAML tag {tag.replace('tag:yaml.org,2002:', '!!')}; a config takes plain values "
                "(strings, numbers, true / false, null, lists, mappings): remove the tag",
                where,
                event.start_mark,
            )
        if len(self._keys) > MAX_DEPTH:
            raise _Refused(f"is nested more than {MAX_DEPTH} levels deep; no config key is", where, event.start_mark)
        if isinstance(event, yaml.ScalarEvent) and event.style is None:  # a plain scalar: maybe an integer
            digits = sum(character.isdigit() for character in event.value[:10_000])
            if digits > MAX_INTEGER_DIGITS and re.fullmatch(r"[-+]?[0-9_]+", event.value[:10_000] or "x"):
                raise _Refused(
                    f"is an integer of {digits} digits; no config key takes more than 19", where, event.start_mark
                )

    def construct_yaml_int(self, node):  # for a quoted value tagged !!int, which the plain-scalar check lets by
        digits = re.sub(r"[^0-9a-fA-F]", "", str(node.value))
        if len(digits) > MAX_INTEGER_DIGITS:
            raise _Refused(
                f"is an integer of {len(digits)} digits; no config key takes more than 19",
                self._keys[0],
                node.start_mark,
            )
        return super().construct_yaml_int(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)


class _ConfigDumper(yaml.SafeDumper):
    """SafeDumper that quotes every string any of our readers would take for another type, and writes no alias."""

    yaml_implicit_resolvers = _resolvers(timestamps=True)  # quotes '1e-4' and '2026-12-05' alike

    def ignore_aliases(self, data):
        return True


def load_yaml(text: str | bytes, source: str = "the config", key: str = "") -> Any:
    """The Python value of YAML ``text`` (str or bytes) through the config loader.

    ``source`` names the text in errors (a file, ``--set``); ``key``: the config key the
    text is the value of (errors name ``key.subkey``).

    Refused with a one-line :class:`ConfigError` naming the source and the key: anchors and
    aliases, tags other than the plain ones, nesting beyond :data:`MAX_DEPTH`, integers of
    more than :data:`MAX_INTEGER_DIGITS` digits, and YAML syntax errors.
    """
    loader = None
    try:
        loader = _ConfigLoader(text, key)  # the reader refuses control characters here
        return loader.get_single_data()
    except _Refused as error:
        key = f"'{error.key}'" if error.key else "a value"
        raise ConfigError(f"{source}: {key}{_line(error.mark)} {error.message}.") from None
    except yaml.YAMLError as error:
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        context = " ".join(str(getattr(error, "context", None) or "").split())
        detail = f"{context}, {problem}" if context else problem
        raise ConfigError(
            f"{source} is not valid YAML: {detail}{_line(getattr(error, 'problem_mark', None))}."
        ) from None
    except (ValueError, RecursionError) as error:  # a constructor's own refusal (e.g. an invalid date)
        raise ConfigError(f"{source} is not valid YAML: {' '.join(str(error).split())[:200]}.") from None
    finally:
        if loader is not None:
            loader.dispose()


def _line(mark):
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def config_to_yaml(config: ExperimentConfig) -> str:
    """The config as YAML text, every key in declaration order (what a run directory's config.yaml holds).

    Strings that a YAML 1.1 or 1.2 reader would take for a number or a date are quoted,
    so the text reads back as the same config through :func:`load_yaml` and ``yaml.safe_load``.
    """
    return yaml.dump(config_to_dict(config), Dumper=_ConfigDumper, sort_keys=False)


def config_from_yaml(text: str | bytes, source: str = "the config") -> ExperimentConfig:
    """An :class:`ExperimentConfig` from YAML text."""
    return config_from_dict(load_yaml(text, source))


def set_key(values: dict[str, Any], key: str, value: Any, what: str = "--set") -> None:
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


def apply_overrides(values: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``["section.key=value", ...]`` to nested dicts; values are parsed by :func:`load_yaml`."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"A config must be a mapping at the top level; got {type(values).__name__}.")
    values = copy.deepcopy(values or {})
    for override in overrides or ():
        if "=" not in override:
            raise ConfigError(f"--set takes key=value (for example training.epochs=10); got {override!r}.")
        key, raw = override.split("=", 1)
        set_key(values, key, None)  # the key's errors before the value's
        set_key(values, key, load_yaml(raw, f"--set {key.strip()}", key.strip()))
    return values


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The nested dicts of a YAML config file (an empty file is an empty config); at most MAX_CONFIG_BYTES."""
    try:
        # O_NONBLOCK: opening a FIFO without a writer returns at once (then refused below) instead of blocking.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            # A FIFO or a device would block or never end: only regular files (symlinks to them too).
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ConfigError(f"Config file {path} is not a regular file; give the path of a .yaml file.")
            with open(descriptor, "rb", closefd=False) as handle:
                data = handle.read(MAX_CONFIG_BYTES + 1)
        finally:
            os.close(descriptor)
    except FileNotFoundError as error:
        raise ConfigError(f"Config file {path} does not exist; the shipped ones are in configs/.") from error
    except OSError as error:
        raise ConfigError(
            f"Config file {path} cannot be read ({error.strerror}); check its path and permissions."
        ) from error
    except ValueError as error:  # a NUL in the path
        raise ConfigError(f"Config file path {path!r} is not a valid path ({error}).") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"Config file {path} is larger than {MAX_CONFIG_BYTES} bytes; a config is a few KB: "
            "check that this is the right file."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8.") from None
    values = load_yaml(text, f"Config file {path}")
    if values is not None and not isinstance(values, dict):
        raise ConfigError(
            f"Config file {path} must be a mapping of sections at the top level (data:, model:, ...); "
            f"got {type(values).__name__}."
        )
    return values if values is not None else {}


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML file (or the defaults when ``path`` is None), apply ``--set`` overrides, validate."""
    values = read_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(values, overrides))


def _one_of(value, choices, key):
    """The valid values once, then "did you mean" the closest when one is close."""
    if value not in choices:
        raise ConfigError(
            f"'{key}' is {value!r}; expected one of {list(choices)}"
            f"{did_you_mean(value, choices, fallback=False) or '.'}"
        )


def _check_background(background):
    """'white', 'black' or [r, g, b] with integers in 0..255 (as parse_background, without TensorFlow)."""
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ConfigError(
                f"'data.background' is {background!r}; expected 'white', 'black' or [r, g, b] with integers in 0..255."
            )
        return
    if (
        not isinstance(background, (list, tuple))
        or len(background) != 3
        or not all(
            isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= value <= 255
            for value in background
        )
    ):
        raise ConfigError(
            f"'data.background' must be 'white', 'black' or [r, g, b] with integers in 0..255; got {background!r}."
        )


def _check_folder_keys(data):
    """data.test_classes (null, a list of folder names or a file path) and data.gallery_list: only for 'folder'."""
    for key in ("test_classes", "gallery_list"):
        if getattr(data, key) is not None and data.dataset != "folder":
            raise ConfigError(
                f"'data.{key}' is for data.dataset 'folder' (an image folder); data.dataset is "
                f"{data.dataset!r}: remove data.{key} or set it to null."
            )
    test_classes = data.test_classes
    if isinstance(test_classes, str):
        if not test_classes.strip():
            raise ConfigError(
                "'data.test_classes' is an empty string; give a list of class-folder names, the path "
                "of a text file of them, or null (then data.test_fraction)."
            )
    elif isinstance(test_classes, list):
        if not test_classes:
            raise ConfigError(
                "'data.test_classes' is an empty list; name at least one class folder, or use null "
                "(then data.test_fraction)."
            )
        for index, name in enumerate(test_classes):
            if not isinstance(name, str) or not name:
                hint = (
                    f" (YAML read it as {type(name).__name__}: quote folder names, e.g. ['001'])"
                    if isinstance(name, (numbers.Number, bool))
                    else ""
                )
                raise ConfigError(
                    f"'data.test_classes[{index}]' must be a class-folder name (a string); got {name!r}{hint}."
                )
    elif test_classes is not None:
        raise ConfigError(
            f"'data.test_classes' must be null, a list of class-folder names or the path of a text file "
            f"of them (one a line); got {test_classes!r}."
        )
    if data.gallery_list is not None and not data.gallery_list.strip():
        raise ConfigError(
            "'data.gallery_list' is an empty string; give the path of a text file of gallery images, or null."
        )


def _check_name(name):
    """``name``: one plain folder name inside runs_dir (never '.', '..' or a path), portable and short."""
    allowed = f"1 to {NAME_MAX} characters, no '/', '\\', control characters, and not '.' or '..' (e.g. cub200_plg_128)"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"'name' is not valid Unicode text ({_short(name)}); use {allowed}.") from None
    if (
        not name.strip()
        or name in (".", "..")
        or len(name) > NAME_MAX
        or "/" in name
        or "\\" in name
        or any(ord(character) < 32 or ord(character) == 127 for character in name)
    ):
        raise ConfigError(
            f"'name' must be one plain folder name: {allowed}; got {_short(name)}"
            f"{f' ({len(name)} characters)' if len(name) > NAME_MAX else ''}."
        )


DML_ARGUMENTS_MAX_LIST = 64  # the longest list a loss takes is S2SD's dims (3 in the paper)


def _check_dml_arguments(arguments, path="loss.dml_arguments", depth=0):
    """The shape of ``loss.dml_arguments`` without the loss registry: string keys; values null, true / false,
    finite numbers, strings, short flat lists of those, or (one level: S2SD's target_arguments) a mapping.

    Each loss's own types (a number here, an integer there) are checked by
    :func:`tf_langdml.runs.builders.check_dml_arguments` against the registry.
    """
    for key, value in arguments.items():
        if not isinstance(key, str):
            raise ConfigError(f"'{path}' has the key {_short(key)}; argument names are strings (e.g. margin).")
        full = f"{path}.{key}"
        if isinstance(value, dict):
            if depth >= 1:
                raise ConfigError(f"'{full}' is a mapping inside a mapping; no loss argument takes one.")
            _check_dml_arguments(value, full, depth + 1)
        elif isinstance(value, (list, tuple)):
            if len(value) > DML_ARGUMENTS_MAX_LIST:
                raise ConfigError(
                    f"'{full}' is a list of {len(value)} values; no loss argument takes more than "
                    f"{DML_ARGUMENTS_MAX_LIST}."
                )
            for index, item in enumerate(value):
                _check_argument_scalar(item, f"{full}[{index}]")
        else:
            _check_argument_scalar(value, full)


def _check_argument_scalar(value, path):
    if isinstance(value, float):
        _finite_float(value, path)
    elif isinstance(value, str):
        if "\0" in value:
            raise ConfigError(f"'{path}' contains a NUL character; remove it.")
    elif not (value is None or isinstance(value, (bool, int))):
        raise ConfigError(f"'{path}' must be a number, a string, true / false or null; got {_short(value)}.")


def _check_ks(ks):
    """``evaluation.ks``: at least one k, each a positive integer (the split's gallery bounds them: builders.check_ks)."""
    if not ks:
        raise ConfigError("'evaluation.ks' is empty; give the ranks k of Recall@k, e.g. [1, 2, 4, 8].")
    for index, k in enumerate(ks):
        if not 1 <= k <= K_MAX:
            raise ConfigError(
                f"'evaluation.ks[{index}]' must be a positive integer (a rank k of Recall@k) up to "
                f"the gallery size; got {_short(k)}."
            )


def validate(config: ExperimentConfig) -> None:
    """Fail, naming the key, on what the config itself gets wrong (the library checks the values it takes)."""
    data, loss, language = config.data, config.loss, config.language
    _check_name(config.name)
    if not config.runs_dir.strip():
        raise ConfigError("'runs_dir' is empty; give the folder that holds the run folders (default: runs).")
    _check_dml_arguments(loss.dml_arguments)
    _check_ks(config.evaluation.ks)
    if data.dataset == "folder" and not data.data_dir:
        raise ConfigError("data.dataset 'folder' needs data.data_dir: the folder with one sub-folder per class.")
    if data.batch_size < 2 * data.examples_per_class:
        raise ConfigError(
            f"A batch must hold at least 2 classes: data.batch_size {data.batch_size} is less than "
            f"2 x data.examples_per_class {data.examples_per_class}."
        )
    _check_background(data.background)
    _check_folder_keys(data)
    if not 0 <= data.validation_fraction < 1:
        raise ConfigError(
            f"'data.validation_fraction' must be in [0, 1) (the share of training classes held out "
            f"for model selection); got {data.validation_fraction}."
        )
    _one_of(config.evaluation.split, EVALUATION_SPLITS, "evaluation.split")
    if config.evaluation.split == "validation" and data.validation_fraction == 0:
        raise ConfigError(
            "evaluation.split is 'validation' but data.validation_fraction is 0: there are no "
            "validation classes; set data.validation_fraction (for example 0.3)."
        )
    _one_of(language.guidance, GUIDANCE, "language.guidance")
    if language.guidance != "none" and loss.language_weight == 0:
        raise ConfigError(f"language.guidance is '{language.guidance}' but loss.language_weight (ω) is 0; set ω > 0.")
    _one_of(config.optimizer.name, OPTIMIZERS, "optimizer.name")
    _one_of(config.training.precision, PRECISIONS, "training.precision")
    if not config.optimizer.learning_rate > 0:
        raise ConfigError(f"'optimizer.learning_rate' must be > 0; got {config.optimizer.learning_rate}.")
    _check_schedule(config.optimizer, config.training)


def _check_schedule(optimizer, training):
    """optimizer.schedule and decay_epochs agree; training.warmup_epochs is at most training.epochs."""
    _one_of(optimizer.schedule, SCHEDULES, "optimizer.schedule")
    if optimizer.schedule == "step" and not optimizer.decay_epochs:
        raise ConfigError(
            "'optimizer.decay_epochs' is empty but optimizer.schedule is 'step'; list the epochs at which the "
            "rate decays (e.g. [30, 55]) or set optimizer.schedule: constant."
        )
    if optimizer.schedule == "constant" and optimizer.decay_epochs:
        raise ConfigError(
            f"'optimizer.decay_epochs' is {list(optimizer.decay_epochs)} but optimizer.schedule is 'constant' "
            "(no decay); set optimizer.schedule: step or remove optimizer.decay_epochs."
        )
    if training.warmup_epochs > training.epochs:
        raise ConfigError(
            f"'training.warmup_epochs' ({training.warmup_epochs}) must be at most training.epochs "
            f"({training.epochs}); lower it (0: no warmup; {training.epochs}: the backbone frozen for the whole run)."
        )
