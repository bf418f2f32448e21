"""The plan of a sweep, without TensorFlow: its grid, seeds, run names and run configs (docs/choosing.md).

The command line checks a sweep with these (:func:`sweep_from_arguments`) before
TensorFlow is imported; :mod:`tf_langdml.runs.sweep` trains the runs they describe.
A point with ``loss.language_weight`` 0 is the baseline whatever ``language.guidance``
says: it runs with ``language.guidance: none`` (:func:`effective_point`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence

from tf_langdml.runs.schema import (
    NAME_MAX,
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    did_you_mean,
    load_yaml,
    read_yaml,
    set_key,
)

DEFAULT_VALIDATION_FRACTION = 0.3
_SELECTION_KEYS = ("data.validation_fraction", "evaluation.split", "training.seed", "name", "runs_dir")


def _flat_keys(values: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        if isinstance(value, dict) and key != "dml_arguments":
            keys += _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def parse_grid(grid_arguments: Sequence[str] | None, base_values: dict) -> dict[str, list]:
    """``["loss.language_weight=0,2.5", ...]`` -> ``{key: [values]}`` (values parsed as YAML scalars), in order.

    Every key must be a config key (``ConfigError`` with "did you mean"), every value
    must be valid for it (checked by building the config), and the keys the sweep sets
    itself (the seed, the validation split, the run's name) are refused.
    """
    known = _flat_keys(config_to_dict(ExperimentConfig()))
    grid = {}
    for argument in grid_arguments or ():
        if "=" not in argument:
            raise ConfigError(
                f"--grid takes KEY=V1,V2,... (for example loss.language_weight=0,2.5,5); got {argument!r}."
            )
        key, raw = (part.strip() for part in argument.split("=", 1))
        if key not in known and not key.startswith("loss.dml_arguments."):
            raise ConfigError(f"--grid: unknown config key {key!r}{did_you_mean(key, known)}")
        if key in _SELECTION_KEYS:
            hint = "use --seeds" if key == "training.seed" else "the sweep sets it"
            raise ConfigError(f"--grid: {key!r} cannot be swept ({hint}).")
        if key in grid:
            raise ConfigError(f"--grid: {key!r} is given twice; put all its values in one --grid {key}=V1,V2.")
        texts = [text.strip() for text in raw.split(",")]
        if not raw.strip() or not all(texts):
            raise ConfigError(f"--grid {key}: empty value in {raw!r}; give comma-separated values, e.g. {key}=1,2.")
        values = []
        for text in texts:
            value = load_yaml(text, f"--grid {key}", key)  # the config loader: YAML 1.2 floats, no aliases or tags
            try:
                config_from_dict(with_point(base_values, {key: value}, check_guidance=False))
            except ConfigError as error:
                raise ConfigError(f"--grid {key}={text}: {error}") from error
            if value in values:
                raise ConfigError(f"--grid {key}: {text!r} is listed twice.")
            values.append(value)
        grid[key] = values
    if not grid:
        raise ConfigError("A sweep needs at least one --grid KEY=V1,V2,... (for example loss.language_weight=0,2.5,5).")
    return grid


def parse_seeds(text: str | int) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (distinct integers)."""
    try:
        seeds = [int(part) for part in str(text).split(",")]
    except ValueError as error:
        raise ConfigError(f"--seeds takes comma-separated integers (for example 0,1,2); got {text!r}.") from error
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {text!r}.")
    return seeds


def _set(values: dict, key: str, value: object) -> None:
    set_key(values, key, value, what="--grid")


def with_point(base_values: dict, point: dict, check_guidance: bool = True) -> dict:
    """The base config's nested dicts with the point's values set; ω = 0 means guidance none."""
    values = copy.deepcopy(base_values)
    for key, value in point.items():
        _set(values, key, value)
    weight = values.get("loss", {}).get("language_weight", 0.0)
    if weight == 0:
        _set(values, "language.guidance", "none")
    elif not check_guidance and values.get("language", {}).get("guidance", "none") == "none":
        _set(values, "language.guidance", "elg")  # only to check a value of ω on its own
    return values


def effective_point(base_values: dict, point: dict) -> dict:
    """The point as it runs: ω = 0 turns ``language.guidance`` to none (the baseline)."""
    values = with_point(base_values, point)
    effective = {}
    for key in point:
        target = values
        for part in key.split("."):
            target = target[part]
        effective[key] = target
    return effective


def point_label(point: dict) -> str:
    """``language_weight=2.5 guidance=elg``: the point's last key parts and values."""
    return " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in point.items())


def _slug(point: dict) -> str:
    parts = []
    for key, value in point.items():
        text = json.dumps(value) if not isinstance(value, str) else value
        parts.append(f"{key.rsplit('.', 1)[-1]}-{text}".replace("/", "_").replace("\\", "_").replace(" ", ""))
    return "__".join(parts)


def run_name(point: dict, seed: int, final: bool = False) -> str:
    """``select__<point>__seed-<seed>`` (``final__`` for final runs), at most NAME_MAX characters.

    A point whose slug would make the name longer keeps the slug's start and appends
    8 hex digits of its SHA-256, so long grids still give distinct, stable names.
    """
    prefix, suffix, slug = "final" if final else "select", f"__seed-{seed}", _slug(point)
    name = f"{prefix}__{slug}{suffix}"
    if len(name) > NAME_MAX:
        digest = hashlib.sha256(slug.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[: NAME_MAX - len(prefix) - len(suffix) - 2 - 9]}-{digest}"
        name = f"{prefix}__{slug}{suffix}"
    return name


def run_config(
    base_values: dict,
    point: dict,
    seed: int,
    sweep_dir: str | os.PathLike,
    final: bool = False,
    validation_fraction: float | None = None,
) -> ExperimentConfig:
    """The :class:`~tf_langdml.runs.schema.ExperimentConfig` of one run of the sweep.

    Selection (``final=False``): trained without the validation classes, scored on them.
    Final: the full training split, scored on the test classes.
    """
    values = with_point(base_values, point)
    _set(values, "data.validation_fraction", 0.0 if final else validation_fraction_of(base_values, validation_fraction))
    _set(values, "evaluation.split", "test" if final else "validation")
    _set(values, "training.seed", int(seed))
    _set(values, "runs_dir", str(sweep_dir))
    _set(values, "name", run_name(effective_point(base_values, point), seed, final))
    return config_from_dict(values)


def validation_fraction_of(base_values: dict, validation_fraction: float | None) -> float:
    """The share of training classes held out: the argument, else the config's, else the default."""
    if validation_fraction is not None:
        return validation_fraction
    return base_values.get("data", {}).get("validation_fraction") or DEFAULT_VALIDATION_FRACTION


def sweep_from_arguments(
    config_path: str | os.PathLike | None,
    overrides: Sequence[str] | None,
    grid_arguments: Sequence[str] | None,
    seeds: str = "0",
    metric: str = "recall@1",
    final: bool = False,
    validation_fraction: float | None = None,
) -> tuple[dict, dict[str, list], list[int]]:
    """(base_values, grid, seeds): the command line's sweep, checked before TensorFlow is imported."""
    base_values = apply_overrides(read_yaml(config_path) if config_path else {}, overrides)
    config_from_dict(with_point(base_values, {}))
    grid = parse_grid(grid_arguments, base_values)
    seeds = parse_seeds(seeds)
    if validation_fraction is not None and not 0 < validation_fraction < 1:
        raise ConfigError(f"--validation-fraction must be in (0, 1); got {validation_fraction}.")
    return base_values, grid, seeds
