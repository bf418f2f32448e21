"""Every key's range up front: run names, finite floats, bounded integers, evaluation.ks, the shape of dml_arguments.

Schema-level: no TensorFlow. Each refusal is one ConfigError line naming the key.
"""

import dataclasses
import math
import pathlib
import typing

import pytest

from tf_langdml.runs import schema
from tf_langdml.runs.schema import ConfigError, ExperimentConfig, config_from_dict, load_config


def refused(match, overrides=(), values=None):
    with pytest.raises(ConfigError, match=match) as info:
        if values is not None:
            config_from_dict(values)
        else:
            load_config(None, overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


def keys_of(annotation_test):
    """Every dotted config key whose type annotation passes ``annotation_test``, with its dataclass field."""
    found = []
    for section in dataclasses.fields(ExperimentConfig):
        hints = typing.get_type_hints(ExperimentConfig)
        if dataclasses.is_dataclass(hints[section.name]):
            inner = typing.get_type_hints(hints[section.name])
            found += [
                (f"{section.name}.{field.name}", field)
                for field in dataclasses.fields(hints[section.name])
                if annotation_test(inner[field.name])
            ]
        elif annotation_test(hints[section.name]):
            found.append((section.name, section))
    return found


FLOAT_KEYS = [key for key, _ in keys_of(lambda hint: hint is float)]
INTEGER_KEYS = [key for key, _ in keys_of(lambda hint: hint in (int, typing.Optional[int]))]
BOUNDED_KEYS = [
    (key, field.metadata)
    for key, field in keys_of(lambda hint: hint in (int, typing.Optional[int]))
    if field.metadata.get("max", schema.INT64_MAX) < schema.INT64_MAX
]


def test_the_key_lists_cover_the_schema():
    assert {"optimizer.learning_rate", "loss.shift", "data.test_fraction"} <= set(FLOAT_KEYS)
    assert {"training.seed", "data.max_pixels", "model.embed_dim", "loss.delay", "language.top_k"} <= set(INTEGER_KEYS)
    assert all("min" in field.metadata for key, field in keys_of(lambda hint: hint in (int, typing.Optional[int])))


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_values_are_refused_for_every_float_key(key):
    for text, shown in [(".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan"), ("1e999", "inf"), ("-1E999", "-inf")]:
        refused(rf"^'{key}' must be a finite number; got {shown}\.$", [f"{key}={text}"])
    # An integer beyond the float range (10**400) is refused the same way, not an OverflowError.
    refused(rf"^'{key}' must be a finite number; got an integer of 401 digits\.$", values=_nested(key, 10**400))


def _nested(key, value):
    section, _, name = key.partition(".")
    return {section: {name: value}} if name else {section: value}


@pytest.mark.parametrize("key", INTEGER_KEYS)
def test_floats_are_refused_for_every_integer_key(key):
    refused(rf"^'{key}' must be an integer; got 1e\+23\.$", [f"{key}=1e23"])
    refused(
        rf"^'{key}' must be an integer; got 64000000\.0 \(write it as a whole number, e\.g\. 64000000\)\.$",
        [f"{key}=64e6"],
    )
    refused(rf"^'{key}' must be an integer; got inf\.$", [f"{key}=.inf"])


@pytest.mark.parametrize("key, metadata", BOUNDED_KEYS, ids=[key for key, _ in BOUNDED_KEYS])
def test_every_bounded_integer_takes_its_bound_and_refuses_one_more(key, metadata):
    maximum = metadata["max"]
    others = {  # a batch of >= 2 classes; a warmup no longer than the training
        "data.examples_per_class": ["data.batch_size=65536"],
        "training.warmup_epochs": [f"training.epochs={maximum}"],
    }.get(key, [])
    config = load_config(None, others + [f"{key}={maximum}"])
    section, name = key.split(".")
    assert getattr(getattr(config, section), name) == maximum
    message = refused(
        rf"^'{key}' must be at most {maximum} \(.+\); got {maximum + 1}\.$", others + [f"{key}={maximum + 1}"]
    )
    assert metadata["why"] in message
    refused(rf"^'{key}' must be at least {metadata['min']}", [f"{key}={metadata['min'] - 1}"])


@pytest.mark.parametrize(
    "override, match",
    [
        ("training.seed=-1", r"^'training.seed' must be at least 0; got -1\.$"),
        (
            "training.seed=4294967296",
            r"^'training.seed' must be at most 4294967295 \(what keras.utils.set_random_seed "
            r"accepts\); got 4294967296\.$",
        ),
        ("data.max_pixels=1e23", r"^'data.max_pixels' must be an integer; got 1e\+23\.$"),
        ("data.max_pixels=2147483648", r"^'data.max_pixels' must be at most 2147483647 "),
        ("data.max_pixels=0", r"^'data.max_pixels' must be at least 1 \(or null: no limit\); got 0\.$"),
        ("model.embed_dim=0", r"^'model.embed_dim' must be at least 1; got 0\.$"),
        ("model.embed_dim=1000000000", r"^'model.embed_dim' must be at most 65536 \(a Dense layer of 2048 x 65536 "),
        ("training.epochs=" + "9" * 19, r"^'training.epochs' must be at most 1000000 "),
        ("loss.delay=9223372036854775808", r"^'loss.delay' must be at most 9223372036854775807; got "),
        ("language.top_k=-9223372036854775809", r"^'language.top_k' must be at least -9223372036854775808"),
        ("optimizer.learning_rate=.inf", r"^'optimizer.learning_rate' must be a finite number; got inf\.$"),
    ],
)
def test_the_reproduced_ranges_are_refused_naming_the_key(override, match):
    refused(match, [override])


def test_the_bounds_people_use_pass():
    config = load_config(
        None,
        [
            "training.seed=4294967295",
            "data.max_pixels=2147483647",
            "model.embed_dim=2048",
            "optimizer.learning_rate=3e-4",
            "data.image_size=4096",
        ],
    )
    assert (config.training.seed, config.data.max_pixels, config.optimizer.learning_rate) == (
        2**32 - 1,
        2**31 - 1,
        3e-4,
    )


@pytest.mark.parametrize(
    "name", ["..", ".", "", "   ", "a/b", "../x", "/abs", "a\\b", "x" * 101, "a\nb", "tab\there", "del\x7f", "\ud800"]
)
def test_a_name_that_is_not_one_plain_folder_is_refused(name):
    message = refused(r"^'name' (must be one plain folder name|is not valid Unicode text)", values={"name": name})
    assert "1 to 100 characters, no '/', '\\'" in message and "not '.' or '..'" in message
    if len(name) > 100:
        assert "(101 characters)" in message


@pytest.mark.parametrize(
    "name", ["x" * 100, "cub200_plg_128", "select__language_weight-2.5__seed-0", "a.b", "..a", "é" * 100, "run 1"]
)
def test_plain_folder_names_pass_and_stay_inside_runs_dir(name, tmp_path):
    config = config_from_dict({"name": name, "runs_dir": str(tmp_path)})
    folder = pathlib.Path(config.runs_dir) / config.name
    assert folder.parent == tmp_path and folder.name == name
    folder.mkdir()  # the file system takes it (255 bytes: 100 two-byte characters fit)


@pytest.mark.parametrize("runs_dir", ["", "  "])
def test_an_empty_runs_dir_is_refused(runs_dir):
    refused(r"^'runs_dir' is empty; give the folder", values={"runs_dir": runs_dir})


def test_a_nul_in_any_string_key_is_refused():
    for values, key in [
        ({"runs_dir": "a\0b"}, "runs_dir"),
        ({"name": "a\0b"}, "name"),
        ({"model": {"weights": "w\0.h5"}}, "model.weights"),
        ({"data": {"dataset": "folder", "data_dir": "/x\0"}}, "data.data_dir"),
        ({"loss": {"dml_arguments": {"miner": "a\0"}}}, "loss.dml_arguments.miner"),
    ]:
        refused(rf"^'{key}' contains a NUL character", values=values)


@pytest.mark.parametrize(
    "override, match",
    [
        ("evaluation.ks=[]", r"^'evaluation.ks' is empty; give the ranks k of Recall@k, e.g. \[1, 2, 4, 8\]\.$"),
        ("evaluation.ks=[1, 0]", r"^'evaluation.ks\[1\]' must be a positive integer \(a rank k of Recall@k\)"),
        ("evaluation.ks=[-3]", r"^'evaluation.ks\[0\]' must be a positive integer"),
        ("evaluation.ks=[2147483648]", r"^'evaluation.ks\[0\]' must be a positive integer .*got 2147483648\.$"),
        ("evaluation.ks=[1.5]", r"^'evaluation.ks\[0\]' must be an integer; got 1\.5\.$"),
        ("evaluation.ks=4", r"^'evaluation.ks' must be a list; got 4\.$"),
    ],
)
def test_evaluation_ks_are_positive_integers(override, match):
    refused(match, [override])


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"gamma": [1, math.inf]}, r"^'loss.dml_arguments.gamma\[1\]' must be a finite number; got inf\.$"),
        ({"margin": math.nan}, r"^'loss.dml_arguments.margin' must be a finite number; got nan\.$"),
        (
            {"target_arguments": {"margin": -math.inf}},
            r"^'loss.dml_arguments.target_arguments.margin' must be a finite",
        ),
        (
            {"a": {"b": {"c": 1}}},
            r"^'loss.dml_arguments.a.b' is a mapping inside a mapping; no loss argument takes one\.$",
        ),
        (
            {"dims": list(range(65))},
            r"^'loss.dml_arguments.dims' is a list of 65 values; no loss argument takes more "
            r"than 64\.$",
        ),
        (
            {"dims": [[1, 2]]},
            r"^'loss.dml_arguments.dims\[0\]' must be a number, a string, true / false or null; "
            r"got a list \[1, 2\]\.$",
        ),
        ({3: 1}, r"^'loss.dml_arguments' has the key 3; argument names are strings"),
    ],
)
def test_the_shape_of_dml_arguments_is_checked_without_the_registry(arguments, match):
    refused(match, values={"loss": {"dml_arguments": arguments}})


def test_the_schema_still_accepts_every_shipped_loss_argument():
    for path in sorted((pathlib.Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml")):
        assert load_config(path).name == path.stem
