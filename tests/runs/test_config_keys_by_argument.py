"""builders.config_keys names the config key of an error's ``argument`` attribute, never of its message's words.

The messages below share no word with the argument or the key (nor with the old word lists: "top-k",
"template", "level", "pooling", ...), so only the attribute can lead to the key. Real bad values that reach
the library (past the schema, via dataclasses.replace) still name their key: see also test_builders.py and
test_config_loss_arguments.py.
"""

import dataclasses

import pytest
from helpers import write_colour_folder

from tf_langdml.errors import ArgumentError, ArgumentTypeError
from tf_langdml.models import LanguageGuidedModel
from tf_langdml.runs import builders
from tf_langdml.runs.schema import ConfigError, load_config

UNRELATED = "the value was refused; see the documentation"


def test_the_argument_attribute_picks_the_key():
    with pytest.raises(ConfigError, match=f"^'language.top_k': {UNRELATED}$") as info:
        with builders.config_keys("language.level", arguments={"k": "language.top_k", "level": "language.level"}):
            raise ArgumentError(UNRELATED, argument="k")
    assert isinstance(info.value.__cause__, ArgumentError)
    with pytest.raises(ConfigError, match=f"^'model.embed_dim': {UNRELATED}$"):
        with builders.config_keys("model.backbone", arguments={"embed_dim": "model.embed_dim"}):
            raise ArgumentTypeError(UNRELATED, argument="embed_dim")


def test_words_in_the_message_name_no_key():
    # The old lists matched "top-k", "template", "level" in messages; now only the call's keys are named.
    message = "Top-k, template and level are all mentioned here"
    with pytest.raises(ConfigError, match=f"^'language.encoder': {message}$"):
        with builders.config_keys(
            "language.encoder", arguments={"k": "language.top_k", "template": "language.template"}
        ):
            raise ValueError(message)
    with pytest.raises(ConfigError, match=f"^'language.encoder': {message}$"):  # an argument the call does not map
        with builders.config_keys("language.encoder", arguments={"k": "language.top_k"}):
            raise ArgumentError(message, argument="encoder_spec")


def test_an_error_without_keys_or_a_mapped_argument_passes_through():
    error = ValueError("Classes [3] have no images to pseudo-label.")  # about the data, not the config
    with pytest.raises(ValueError) as info:
        with builders.config_keys(arguments={"k": "language.top_k"}):
            raise error
    assert info.value is error
    error = ArgumentError(UNRELATED, argument="labels")
    with pytest.raises(ArgumentError) as info:
        with builders.config_keys(arguments={"k": "language.top_k"}):
            raise error
    assert info.value is error


@pytest.mark.parametrize("argument,key", [("level", "language.level"), ("k", "language.top_k")])
def test_check_language_names_the_key_of_the_argument(argument, key, monkeypatch):
    def refuse(*args, **kwargs):
        raise ArgumentError(UNRELATED, argument=argument)

    monkeypatch.setattr(builders.language, "top_k_pseudo_labels", refuse)  # where check_language looks it up
    config = load_config(None, ["language.guidance=plg", "loss.language_weight=1"])
    with pytest.raises(ConfigError, match=f"^'{key}': {UNRELATED}$"):
        builders.check_language(config.language)


@pytest.mark.parametrize(
    "argument,key",
    [
        ("pooling", "model.pooling"),
        ("input_shape", "data.image_size"),
        ("freeze_bn_statistics", "model.freeze_bn_statistics"),
    ],
)
def test_check_embedder_names_the_key_of_the_argument(argument, key, monkeypatch):
    def refuse(*args, **kwargs):
        raise ArgumentError(UNRELATED, argument=argument)

    monkeypatch.setattr(builders.model, "build_embedder", refuse)  # where check_embedder looks it up
    config = load_config(None, [])
    with pytest.raises(ConfigError, match=f"^'{key}': {UNRELATED}$"):
        builders.check_embedder(config.model, config.data.image_size)


# LanguageGuidedModel.compile's parameters (and those of the LanguageMatchingLoss it builds) -> config keys.
COMPILE_KEYS = [
    ("language_weight", "loss.language_weight"),
    ("language_delay", "loss.delay"),
    ("language_direction", "loss.direction"),
    ("language_shift", "loss.shift"),
    ("language_temperature", "loss.temperature"),
    ("weight_decay", "optimizer.weight_decay"),
    ("dml_loss", "loss.dml"),
    ("direction", "loss.direction"),
    ("shift", "loss.shift"),
    ("temperature", "loss.temperature"),
]


@pytest.mark.parametrize("argument,key", COMPILE_KEYS)
def test_check_model_names_the_key_of_a_compile_argument(argument, key, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise ArgumentError(UNRELATED, argument=argument)

    monkeypatch.setattr(LanguageGuidedModel, "compile", refuse)
    config = load_config(None, [])
    with pytest.raises(ConfigError, match=f"^'{key}': {UNRELATED}$"):
        builders.check_model(config.loss, config.optimizer, config.training)


def test_an_unknown_argument_of_the_target_loss_names_dml_arguments_and_an_unknown_target_too():
    config = load_config(None, ["loss.dml=s2sd"])
    for arguments, match in [
        ({"target_arguments": {"marginn": 0.1}}, r"Unknown argument\(s\) \['marginn'\]"),
        ({"target": "multisimilarty"}, r"Unknown DML loss 'multisimilarty'"),
    ]:
        loss = dataclasses.replace(config.loss, dml_arguments=arguments)
        with pytest.raises(ConfigError, match=f"^'loss.dml_arguments': {match}"):
            builders.check_model(loss, config.optimizer, config.training)


# -- real bad values that reach the library (the schema checks some of them itself, so it is bypassed) --------


@pytest.mark.parametrize(
    "change,match",
    [
        ({"background": "purple"}, r"^'data.background': Unknown background 'purple'"),
        ({"max_pixels": 0}, r"^'data.max_pixels': max_pixels must be a positive integer"),
    ],
)
def test_the_demo_loader_s_refusals_name_their_key(change, match):
    data = dataclasses.replace(load_config(None, ["data.dataset=demo"]).data, **change)
    with pytest.raises(ConfigError, match=match):
        builders.dataset(data)


def test_the_folder_loader_s_refusals_name_their_key(tmp_path):
    root = write_colour_folder(tmp_path / "images", num_classes=4, per_class=1, size=8)
    data = load_config(None, ["data.dataset=folder", f"data.data_dir={root}"]).data
    with pytest.raises(ConfigError, match=r"^'data.test_fraction': test_fraction must be between 0 and 1, got 1.5"):
        builders.dataset(dataclasses.replace(data, test_fraction=1.5))
    with pytest.raises(ConfigError, match=r"^'data.test_classes': test_classes covers every class"):
        builders.dataset(dataclasses.replace(data, test_classes=sorted(path.name for path in root.iterdir())))


def test_an_unknown_tfds_name_names_data_dataset():
    data = dataclasses.replace(load_config(None, []).data, dataset="cub2000")
    with pytest.raises(ConfigError, match=r"^'data.dataset': Unknown TFDS dataset 'cub2000'"):
        builders.dataset(data)


def test_the_classifier_s_weights_name_language_classifier_weights(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not weights")
    language = load_config(
        None,
        [
            "language.guidance=plg",
            "loss.language_weight=1",
            "language.classifier=efficientnet_lite0",
            f"language.classifier_weights={tmp_path / 'junk.h5'}",
        ],
    ).language
    with pytest.raises(ConfigError, match=r"^'language.classifier_weights': Could not load weights file"):
        builders.imagenet_classifier(language)


def test_the_embedder_s_refusals_name_their_key():
    config = load_config(None, ["model.backbone=toy_cnn"])
    with pytest.raises(ConfigError, match=r"^'model.weights': Backbone 'toy_cnn' has no ImageNet weights"):
        builders.embedder(dataclasses.replace(config.model, weights="imagenet"), 16)
    with pytest.raises(ConfigError, match=r"^'model.embed_dim': embed_dim must be a positive integer"):
        builders.embedder(dataclasses.replace(config.model, weights=None, embed_dim=0), 16)


def test_bad_ks_name_evaluation_ks_in_the_callbacks():
    config = load_config(None, [])
    evaluation = dataclasses.replace(config.evaluation, ks=(0,))
    with pytest.raises(ConfigError, match=r"^'evaluation.ks': ks must be positive integers"):
        builders.check_evaluation(evaluation, config.training)
