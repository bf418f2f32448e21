"""builders.check_dml_arguments (each loss argument's type from the registry) and builders.check_ks (ks vs the gallery)."""

import dataclasses

import numpy as np
import pytest

from tf_langdml.losses import DML_LOSSES, dml_loss_arguments
from tf_langdml.runs import builders
from tf_langdml.runs.schema import ConfigError, load_config

# A value of the wrong kind for each kind of argument (a list where a number belongs: the reproduced bomb's shape).
WRONG = {
    "number": [1.0, 2.0],
    "number_or_null": [1.0],
    "integer": 1.5,
    "integer_or_null": [3],
    "bool": [True],
    "string": ["hard"],
    "mapping_or_null": [1],
    "dims": "1024",
}


def loss_config(name, arguments):
    return dataclasses.replace(load_config().loss, dml=name, dml_arguments=arguments)


def typed_arguments(name):
    arguments = {**dml_loss_arguments(name), "xbm_memory_size": None, "xbm_warmup_steps": 0}
    return {key: builders.loss_arguments._argument_type(key, default) for key, default in arguments.items()}


@pytest.mark.parametrize("name", sorted(DML_LOSSES))
def test_every_argument_of_every_loss_has_a_checked_type(name):
    kinds = typed_arguments(name)
    assert None not in kinds.values(), kinds  # no argument escapes the check
    builders.check_dml_arguments(loss_config(name, {}))
    defaults = {key: value for key, value in dml_loss_arguments(name).items() if value is not None}
    builders.check_dml_arguments(loss_config(name, defaults))  # the registry's own defaults pass


@pytest.mark.parametrize("name", sorted(DML_LOSSES))
def test_a_value_of_the_wrong_kind_is_refused_naming_the_argument(name):
    for key, kind in typed_arguments(name).items():
        with pytest.raises(
            ConfigError, match=rf"^'loss.dml_arguments.{key}' must be .* \({name}'s {key}\); got "
        ) as info:
            builders.check_dml_arguments(loss_config(name, {key: WRONG[kind]}))
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "arguments, match",
    [
        (
            {"gamma": [80.0, 80.0]},
            r"^'loss.dml_arguments.gamma' must be a number \(circle's gamma\); got a list \(\[80.0, 80.0\]\)\.$",
        ),
        ({"margin": "0.4"}, r"^'loss.dml_arguments.margin' must be a number \(circle's margin\); got '0.4'\.$"),
        ({"margin": True}, r"^'loss.dml_arguments.margin' must be a number \(circle's margin\); got true\.$"),
        ({"gamma": list(range(1000))}, r"got a list \(\[0, 1, 2, .*\.\.\.\)\.$"),  # a long value is cut
        ({"xbm_memory_size": 2**20 + 1}, r"^'loss.dml_arguments.xbm_memory_size' must be at most 1048576 embeddings"),
        ({"xbm_memory_size": 64.0}, r"^'loss.dml_arguments.xbm_memory_size' must be an integer or null"),
    ],
)
def test_circle_arguments(arguments, match):
    with pytest.raises(ConfigError, match=match):
        builders.check_dml_arguments(loss_config("circle", arguments))


@pytest.mark.parametrize(
    "name, arguments, match",
    [
        ("margin", {"seed": -1}, r"^'loss.dml_arguments.seed' must be a seed in 0..4294967295; got -1\.$"),
        ("margin", {"seed": 2**32}, r"^'loss.dml_arguments.seed' must be a seed in 0..4294967295"),
        ("margin", {"upper_cutoff": "1.4"}, r"^'loss.dml_arguments.upper_cutoff' must be a number or null"),
        ("s2sd", {"dims": [1024, 8193]}, r"^'loss.dml_arguments.dims' must be 1 to 16 head sizes in 1..8192"),
        ("s2sd", {"dims": []}, r"^'loss.dml_arguments.dims' must be 1 to 16 head sizes"),
        ("s2sd", {"dims": [0]}, r"^'loss.dml_arguments.dims' must be 1 to 16 head sizes"),
        ("s2sd", {"dims": [64] * 17}, r"^'loss.dml_arguments.dims' must be 1 to 16 head sizes"),
        (
            "s2sd",
            {"feature_delay": 1.5},
            r"^'loss.dml_arguments.feature_delay' must be an integer \(s2sd's feature_delay\)",
        ),
        (
            "s2sd",
            {"target": "margin", "target_arguments": {"beta_constant": "no"}},
            r"^'loss.dml_arguments.target_arguments.beta_constant' must be true or false \(margin's beta_constant\)",
        ),
        (
            "s2sd",
            {"target_arguments": {"margin": [0.1]}},
            r"^'loss.dml_arguments.target_arguments.margin' must be a number \(multisimilarity's margin\)",
        ),
        (
            "s2sd",
            {"target": "margin", "target_arguments": {"margin": 0.1, "seed": -5}},
            r"^'loss.dml_arguments.target_arguments.seed' must be",
        ),
    ],
)
def test_ranges_and_nested_target_arguments(name, arguments, match):
    with pytest.raises(ConfigError, match=match):
        builders.check_dml_arguments(loss_config(name, arguments))


def test_what_the_check_accepts_is_what_the_losses_build():
    from tf_langdml.losses import build_dml_loss

    for name, arguments in [
        ("circle", {"gamma": 64, "margin": 0.25}),
        ("margin", {"seed": 2**32 - 1, "nu": 0}),
        ("s2sd", {"dims": 8, "target_arguments": {"margin": 0.2}}),
        ("multisimilarity", {"xbm_memory_size": 16, "xbm_warmup_steps": 2}),
    ]:
        builders.check_dml_arguments(loss_config(name, arguments))
        assert build_dml_loss(name, **arguments) is not None


def test_unknown_losses_and_arguments_are_left_to_the_registry_s_message():
    builders.check_dml_arguments(loss_config("circl", {"gamma": [1]}))  # build_dml_loss names the loss
    builders.check_dml_arguments(loss_config("circle", {"gamm": [1]}))  # ... and the argument


def split(count, gallery=None):
    from tf_langdml.data.splits import Split

    labels = np.arange(count) % 2
    return Split(
        sources=np.array([f"{index}.png" for index in range(count)]),
        labels=labels,
        class_names=("a", "b"),
        raw_class_names=("a", "b"),
        gallery=gallery,
    )


def test_check_ks_against_a_leave_one_out_split():
    evaluation = load_config(None, ["evaluation.ks=[1, 4]"]).evaluation
    assert builders.retrievable_images(split(5)) == 4
    builders.check_ks(evaluation, split(5))  # k = 4 = the other four images
    with pytest.raises(
        ConfigError,
        match=r"^'evaluation.ks' has k = 4, but a query of the test split can retrieve "
        r"at most 3 images \(leave-one-out: the split's images - 1\); use ks up to 3\.$",
    ):
        builders.check_ks(evaluation, split(4))


def test_check_ks_against_a_query_gallery_split_and_a_count():
    gallery = np.array([True, True, True, False, False, False, False])
    assert builders.retrievable_images(split(7, gallery)) == 3
    evaluation = load_config(None, ["evaluation.ks=[1, 3]"]).evaluation
    builders.check_ks(evaluation, split(7, gallery))
    evaluation = load_config(
        None, ["evaluation.ks=[1, 2, 4, 100000]", "data.validation_fraction=0.5", "evaluation.split=validation"]
    ).evaluation
    with pytest.raises(
        ConfigError,
        match=r"^'evaluation.ks' has k = 4, 100000, but a query of the validation split can "
        r"retrieve at most 3 images \(the size of its gallery\); use ks up to 3\.$",
    ):
        builders.check_ks(evaluation, split(7, gallery))
    with pytest.raises(ConfigError, match=r"k = 100000, .* at most 99 images; use ks up to 99\.$"):
        builders.check_ks(evaluation, 99)
