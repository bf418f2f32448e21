"""Configs: every shipped YAML loads and validates; unknown keys, bad values and --set overrides."""

import pathlib

import pytest
import yaml

from tf_langdml.config import ConfigError, config_from_dict, config_to_dict, load_config
from tf_langdml.demo import DEMO

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_the_paper_grid_and_the_demo_are_shipped():
    names = {path.stem for path in CONFIGS.glob("*.yaml")}
    expected = {f"{d}_{v}_{k}" for d in ("cub200", "cars196", "sop") for v in ("baseline", "elg", "plg") for k in (128, 512)}
    assert expected | {"demo"} == names


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_config_loads_and_validates(path):
    config = load_config(path)
    assert config.name == path.stem
    if path.stem != "demo":
        dataset, variant, dim = path.stem.split("_")
        assert (config.data.dataset, config.model.embed_dim) == (dataset, int(dim))
        assert config.language.guidance == {"baseline": "none"}.get(variant, variant)
        assert (config.loss.language_weight > 0) == (variant != "baseline")
        assert config.optimizer.learning_rate == 1e-5 and config.optimizer.weight_decay == 4e-4
        assert config.data.examples_per_class == 2 and config.model.backbone == "resnet50"
    # Round trip through plain dicts.
    assert config_from_dict(config_to_dict(config)) == config


def test_the_demo_yaml_is_the_demo_config():
    assert load_config(CONFIGS / "demo.yaml") == config_from_dict(DEMO)


@pytest.mark.parametrize(
    "override,match",
    [
        ("training.epoch=3", "Unknown config key 'training.epoch'; did you mean 'training.epochs'"),
        ("modle.embed_dim=3", "Unknown config key 'modle'; did you mean 'model'"),
        ("loss.language_weight=-1", "language_weight.*must be >= 0"),
        ("language.top_k=1001", "top_k.*1..1000"),
        ("data.batch_size=91", "not divisible by data.examples_per_class 2"),
        ("training.epochs=ten", "'training.epochs' must be an integer; got 'ten'"),
        ("data.antialias=3", "must be true or false"),
        ("model.backbone=resnet5", "did you mean 'resnet50'"),
        ("language.template=a photo", "has no '{}'"),
        ("evaluation.ks=[0, 1]", "positive integers"),
        ("data.dataset=folder", "needs data.data_dir"),
    ],
)
def test_bad_values_fail_before_any_data_is_read(override, match, monkeypatch):
    import tf_langdml.experiment as experiment

    monkeypatch.setattr(experiment, "load_data", lambda config: pytest.fail("data was read"))
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS / "cub200_plg_128.yaml", [override])


def test_overrides_are_typed_and_nested():
    config = load_config(None, ["training.epochs=7", "loss.language_weight=2", "evaluation.ks=[1, 5]",
                                "model.weights=null", "loss.dml_arguments={margin: 0.2}", "name=x"])
    assert config.training.epochs == 7 and config.loss.language_weight == 2.0
    assert config.evaluation.ks == (1, 5) and config.model.weights is None
    assert config.loss.dml_arguments == {"margin": 0.2} and config.name == "x"
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["training.epochs"])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_background_and_max_pixels_are_checked_and_reach_the_split():
    from tf_langdml.experiment import load_data

    assert load_config(overrides=["data.background=[1, 2, 3]"]).data.background == [1, 2, 3]
    assert load_config().data.background == "white" and load_config().data.max_pixels == 64_000_000
    for override, message in [("data.background=grey", "'data.background'.*'grey'"),
                              ("data.background=[0, 0, 300]", "'data.background'.*300"),
                              ("data.max_pixels=0", "'data.max_pixels'")]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=[override])
    config = load_config(overrides=["data.dataset=demo", "data.background=black", "data.max_pixels=5000"])
    split = load_data(config).train_split
    assert split.background == (0, 0, 0) and split.max_pixels == 5000
