"""Configs: every shipped YAML loads and validates; YAML round trips; unknown keys, bad types and --set overrides.

tf_langdml.runs.schema imports no TensorFlow; what the library checks is in test_builders.py.
"""

import configparser
import dataclasses
import os
import pathlib

import pytest
import yaml
from helpers import run_python

from tf_langdml.demo import DEMO_CONFIG, VARIANTS, demo_configs
from tf_langdml.runs.schema import (
    ConfigError,
    config_from_dict,
    config_from_yaml,
    config_to_dict,
    config_to_yaml,
    load_config,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def test_importing_the_schema_does_not_import_tensorflow():
    code = (
        "import sys\nimport tf_langdml.runs.schema as schema\n"
        "schema.load_config('configs/cub200_plg_128.yaml', ['training.epochs=3'])\n"
        "assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if m.startswith('tensorflow'))\n"
        "print('ok')\n"
    )
    result = run_python(code, cwd=ROOT, timeout=120)
    assert result.stdout.strip() == "ok"


def test_the_paper_grid_and_the_demo_are_shipped():
    names = {path.stem for path in CONFIGS.glob("*.yaml")}
    expected = {
        f"{d}_{v}_{k}" for d in ("cub200", "cars196", "sop") for v in ("baseline", "elg", "plg") for k in (128, 512)
    }
    assert expected | {"demo", "folder"} == names  # folder: your own image folder (issue 26)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_config_loads_and_validates(path):
    config = load_config(path)
    assert config.name == path.stem
    if path.stem == "folder":
        assert config.data.dataset == "folder" and config.data.data_dir
    elif path.stem != "demo":
        dataset, variant, dim = path.stem.split("_")
        assert (config.data.dataset, config.model.embed_dim) == (dataset, int(dim))
        assert config.language.guidance == {"baseline": "none"}.get(variant, variant)
        assert (config.loss.language_weight > 0) == (variant != "baseline")
        assert config.optimizer.learning_rate == 1e-5 and config.optimizer.weight_decay == 4e-4
        assert config.data.examples_per_class == 2 and config.model.backbone == "resnet50"
    # Round trips: plain dicts, and YAML -> dataclasses -> YAML.
    assert config_from_dict(config_to_dict(config)) == config
    text = config_to_yaml(config)
    assert config_from_yaml(text) == config
    assert config_to_yaml(config_from_yaml(text)) == text
    assert yaml.safe_load(text) == config_to_dict(config)


def test_yaml_lists_every_key_in_declaration_order_and_fills_defaults():
    text = config_to_yaml(config_from_yaml("name: x\ntraining:\n  epochs: 3\n"))
    values = yaml.safe_load(text)
    assert list(values) == [
        "name",
        "runs_dir",
        "data",
        "model",
        "loss",
        "language",
        "optimizer",
        "training",
        "evaluation",
    ]
    assert values["training"]["epochs"] == 3 and values["evaluation"]["ks"] == [1, 2, 4, 8]
    assert list(values["data"])[:2] == ["dataset", "data_dir"]


def test_the_demo_yaml_is_the_demo_config():
    # One copy: the package's demo.yaml; configs/demo.yaml is a relative link to it (git stores the link).
    link = CONFIGS / "demo.yaml"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == DEMO_CONFIG.resolve() and DEMO_CONFIG.is_file()
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert "*.yaml" in setup["options.package_data"]["tf_langdml.runs"]
    # The demo runs exactly that config, once per variant.
    base = load_config(link)
    configs = demo_configs()
    assert list(configs) == list(VARIANTS)
    for variant, config in configs.items():
        language = dataclasses.replace(base.language, guidance=VARIANTS[variant]["language"]["guidance"])
        loss = dataclasses.replace(base.loss, language_weight=VARIANTS[variant]["loss"]["language_weight"])
        assert config == dataclasses.replace(base, name=f"demo_{variant}", language=language, loss=loss)


@pytest.mark.parametrize(
    "override,match",
    [
        ("training.epoch=3", "Unknown config key 'training.epoch'; did you mean 'training.epochs'"),
        ("modle.embed_dim=3", "Unknown config key 'modle'; did you mean 'model'"),
        ("training.epochs=ten", "'training.epochs' must be an integer; got 'ten'"),
        ("training.epochs=0", "'training.epochs' must be at least 1; got 0"),
        ("data.antialias=3", "must be true or false"),
        ("data.batch_size=2", "at least 2 classes"),
        ("data.dataset=folder", "needs data.data_dir"),
        ("language.guidance=elgg", "'language.guidance' is 'elgg'.*did you mean 'elg'"),
        ("loss.language_weight=0", "ω.* is 0; set ω > 0"),
        ("optimizer.name=adamw", "did you mean 'adam'"),
        ("optimizer.learning_rate=0", "'optimizer.learning_rate' must be > 0"),
        ("optimizer.schedule=cosine", "'optimizer.schedule' is 'cosine'; expected one of \\['constant', 'step'\\]"),
        ("optimizer.schedule=step", "'optimizer.decay_epochs' is empty but optimizer.schedule is 'step'"),
        ("optimizer.decay_epochs=[30]", "'optimizer.decay_epochs' is \\[30\\] but optimizer.schedule is 'constant'"),
        ("training.warmup_epochs=-1", "'training.warmup_epochs' must be at least 0; got -1"),
        ("training.warmup_epochs=151", r"'training.warmup_epochs' \(151\) must be at most training.epochs \(150\)"),
        ("name=a/b", "'name' must be one plain folder name: .*no '/'"),
        ("data.validation_fraction=1", r"'data.validation_fraction' must be in \[0, 1\)"),
        ("evaluation.split=valid", "'evaluation.split' is 'valid'.*did you mean 'validation'"),
        ("evaluation.split=validation", "no validation classes; set data.validation_fraction"),
    ],
)
def test_bad_keys_and_types_are_named(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS / "cub200_plg_128.yaml", [override])


def test_overrides_are_typed_and_nested():
    config = load_config(
        None,
        [
            "training.epochs=7",
            "loss.language_weight=2",
            "evaluation.ks=[1, 5]",
            "model.weights=null",
            "loss.dml_arguments={margin: 0.2}",
            "name=x",
        ],
    )
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


def test_background_and_max_pixels_are_checked_without_tensorflow():
    assert load_config(overrides=["data.background=[1, 2, 3]"]).data.background == [1, 2, 3]
    assert load_config(overrides=["data.background=black"]).data.background == "black"
    assert load_config().data.background == "white" and load_config().data.max_pixels == 64_000_000
    assert load_config(overrides=["data.max_pixels=null"]).data.max_pixels is None
    for override, message in [
        ("data.background=grey", "'data.background'.*'grey'"),
        ("data.background=[0, 0, 300]", "'data.background'.*300"),
        ("data.background=[0, 0]", "'data.background'"),
        ("data.background=[0, 0, true]", "'data.background'"),
        ("data.max_pixels=0", "'data.max_pixels'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=[override])


def test_the_schema_background_check_agrees_with_the_library():
    from tf_langdml.data.preprocessing import parse_background

    for value in [
        "white",
        "black",
        "grey",
        "",
        [0, 0, 0],
        [255, 255, 255],
        [0, 0, 256],
        [-1, 0, 0],
        [0, 0],
        [0, 0, 0, 0],
        [0.0, 0, 0],
        [True, 0, 0],
        7,
        None,
    ]:
        try:
            parse_background(value)
            library_accepts = True
        except ValueError:
            library_accepts = False
        try:
            load_config(overrides=[f"data.background={yaml.safe_dump(value, default_flow_style=True).strip()}"])
            schema_accepts = True
        except ConfigError:
            schema_accepts = False
        assert schema_accepts == library_accepts, value


# The paper's run script's four "Multisimilarity + S2SD + PLG" runs: (epochs, feature weight, ω).
S2SD_RUNS = {
    "cub200_s2sd_plg_128": (300, 125.0, 1.5),
    "cub200_s2sd_plg_512": (250, 60.0, 2.0),
    "cars196_s2sd_plg_128": (250, 50.0, 2.5),
    "cars196_s2sd_plg_512": (300, 40.0, 2.0),
}


@pytest.mark.parametrize("path", sorted((CONFIGS / "dml_losses").glob("*.yaml")), ids=lambda path: path.stem)
def test_the_dml_loss_configs_load_validate_and_hold_the_published_s2sd_settings(path):
    from tf_langdml.runs.train import preflight

    config = load_config(path)
    assert config.name == path.stem and config.language.guidance == "plg"
    assert config_from_yaml(config_to_yaml(config)) == config
    preflight(config)  # the loss's own arguments too (build_dml_loss)
    dataset, loss, _, dim = path.stem.split("_", 1)[0], config.loss.dml, None, int(path.stem.rsplit("_", 1)[1])
    assert (config.data.dataset, config.model.embed_dim) == (dataset, dim)
    if path.stem in S2SD_RUNS or dataset == "sop":
        arguments = config.loss.dml_arguments
        assert loss == "s2sd" and config.data.batch_size == 108
        assert arguments["target"] == "multisimilarity" and arguments["dims"] == [1024, 1536, 2048]
        assert arguments["distill_weight"] == 0 and arguments["feature_pooling"] == "avg+max"
        if path.stem in S2SD_RUNS:
            epochs, feature_weight, omega = S2SD_RUNS[path.stem]
            assert (config.training.epochs, arguments["feature_weight"], config.loss.language_weight) == (
                epochs,
                feature_weight,
                omega,
            )


def test_every_published_s2sd_run_is_shipped():
    assert set(S2SD_RUNS) <= {path.stem for path in (CONFIGS / "dml_losses").glob("*.yaml")}


def test_test_classes_and_gallery_list_are_checked_without_tensorflow():
    folder = ["data.dataset=folder", "data.data_dir=/images"]
    assert load_config(overrides=folder).data.test_classes is None and load_config().data.gallery_list is None
    data = load_config(overrides=folder + ["data.test_classes=['001.a', '002.b']"]).data
    assert data.test_classes == ["001.a", "002.b"]
    data = load_config(overrides=folder + ["data.test_classes=splits/test.txt", "data.gallery_list=gallery.txt"]).data
    assert data.test_classes == "splits/test.txt" and data.gallery_list == "gallery.txt"
    for overrides, message in [
        (["data.test_classes=[a]"], "'data.test_classes' is for data.dataset 'folder'.*'demo'"),
        (["data.gallery_list=g.txt"], "'data.gallery_list' is for data.dataset 'folder'"),
        (folder + ["data.test_classes=[]"], "'data.test_classes' is an empty list"),
        (folder + ["data.test_classes=''"], "'data.test_classes' is an empty string"),
        (folder + ["data.test_classes=[001, b]"], r"'data.test_classes\[0\]' must be a class-folder name.*quote"),
        (
            folder + ["data.test_classes=3"],
            "'data.test_classes' must be null, a list of class-folder names or the path",
        ),
        (folder + ["data.test_classes={a: 1}"], "'data.test_classes' must be null"),
        (folder + ["data.gallery_list=[a]"], "'data.gallery_list' must be a string"),
        (folder + ["data.gallery_list=''"], "'data.gallery_list' is an empty string"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=overrides)


@pytest.mark.parametrize("value, replacement", [("true", "mixed_float16"), ("false", "float32")])
def test_the_old_mixed_precision_key_names_its_replacement(value, replacement):
    with pytest.raises(ConfigError, match=f"write 'training.precision: {replacement}' instead"):
        load_config(None, [f"training.mixed_precision={value}"])
    with pytest.raises(ConfigError, match=f"'training.precision: {replacement}'"):
        config_from_yaml(f"training:\n  mixed_precision: {value}\n")


def test_training_precision_values():
    assert load_config().training.precision == "float32"  # the default: the same numbers on every machine
    for value in ("float32", "mixed_float16", "mixed_bfloat16", "auto"):
        assert load_config(None, [f"training.precision={value}"]).training.precision == value
    with pytest.raises(
        ConfigError,
        match=r"'training.precision' is 'bfloat16'; expected one of \['float32', "
        r"'mixed_float16', 'mixed_bfloat16', 'auto'\]",
    ):
        load_config(None, ["training.precision=bfloat16"])
    with pytest.raises(ConfigError, match="must be a string"):
        load_config(None, ["training.precision=true"])
