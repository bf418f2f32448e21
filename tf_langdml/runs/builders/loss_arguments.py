"""The ``loss.dml_arguments`` types and ranges, checked against the loss registry before anything is built."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tf_langdml.losses import DML_LOSSES, dml_loss_arguments
from tf_langdml.runs.schema import SEED_MAX, ConfigError, LossConfig

# The type of each loss argument, from its default in the registry (``dml_loss_arguments``): a float
# default takes a number, an int an integer, a bool true / false, a str a string. Where the default
# says nothing (None) or the loss takes more than the default shows, the type is written here.
_ARGUMENT_TYPES = {
    "upper_cutoff": "number_or_null",
    "class_learning_rate": "number_or_null",
    "target_arguments": "mapping_or_null",
    "xbm_memory_size": "integer_or_null",
    "dims": "dims",  # S2SD: a head size or a list of them
}
BUILD_ARGUMENTS = {"xbm_memory_size": None, "xbm_warmup_steps": 0}  # build_dml_loss's own (XBM)
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


_EXPECTED = {
    "number": "a number",
    "number_or_null": "a number or null",
    "integer": "an integer",
    "integer_or_null": "an integer or null",
    "bool": "true or false",
    "string": "a string",
    "mapping_or_null": "a mapping of the target loss's arguments, or null",
    "dims": "a positive head size or a list of them, e.g. [1024, 1536, 2048]",
}


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
    return {
        "number": is_number,
        "number_or_null": value is None or is_number,
        "integer": _is_integer(value),
        "integer_or_null": value is None or _is_integer(value),
        "bool": isinstance(value, bool),
        "string": isinstance(value, str),
        "mapping_or_null": value is None or isinstance(value, dict),
        "dims": _is_integer(value) or (isinstance(value, (list, tuple)) and all(map(_is_integer, value))),
    }[kind]


def check_dml_arguments(
    loss: LossConfig,
    path: str = "loss.dml_arguments",
    name: str | None = None,
    arguments: Mapping[str, Any] | None = None,
) -> None:
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
    defaults = {**dml_loss_arguments(name), **BUILD_ARGUMENTS}
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
                raise ConfigError(
                    f"'{full}' must be 1 to {S2SD_HEADS_MAX} head sizes in 1..{S2SD_DIM_MAX} (a head has a "
                    f"dim x dim Dense layer: 8192² float32 is 256 MiB); got {_kind_of(value)}."
                )
        if key == "xbm_memory_size" and value is not None and value > XBM_MEMORY_MAX:
            raise ConfigError(
                f"'{full}' must be at most {XBM_MEMORY_MAX} embeddings (more than any benchmark's "
                f"training images); got {value}."
            )
        if key == "target_arguments" and value:
            target = arguments.get("target", dml_loss_arguments(name).get("target"))
            check_dml_arguments(loss, full, name=target, arguments=value)
