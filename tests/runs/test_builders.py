"""Builders: the library checks the config's values; its errors come back naming the config key, before any data is read."""

import pathlib

import pytest

from tf_langdml.runs import builders
from tf_langdml.runs import train as training
from tf_langdml.runs.schema import ConfigError, load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    "override,match",
    [
        ("loss.language_weight=-1", r"'loss.language_weight': language_weight must be a finite number >= 0"),
        ("loss.delay=-1", r"'loss.delay': language_delay must be"),
        ("loss.temperature=0", r"'loss.temperature': temperature must be a positive number"),
        ("loss.direction=sideways", r"'loss.direction': Unknown direction 'sideways'"),
        ("loss.dml=multisimilarty", r"'loss.dml': Unknown DML loss 'multisimilarty'"),
        # "did you mean" from the loss's argument names (it used to suggest a loss name, 'multisimilarity').
        (
            "loss.dml_arguments={marginn: 0.2}",
            r"^'loss.dml_arguments': Unknown argument\(s\) \['marginn'\] for DML loss "
            r"'multisimilarity'; it accepts \['margin', 'negative_weight', "
            r"'positive_weight', 'threshold'\]; did you mean 'margin'\?$",
        ),
        (
            "language.encoder=precomputed:/nonexistent/table.npz",
            r"^'language.encoder': the precomputed embeddings file '/nonexistent/table.npz' does not exist",
        ),
        ("loss.dml=proxy_ancor", r"'loss.dml': Unknown DML loss 'proxy_ancor'.*did you mean 'proxy_anchor'"),
        ("optimizer.weight_decay=-1", r"'optimizer.weight_decay': weight_decay must be"),
        ("language.top_k=1001", r"'language.top_k': Top-k must be an integer in 1..1000"),
        ("language.level=pixel", r"'language.level': Unknown pseudo-label level 'pixel'"),
        (
            "language.classifier=resnet5",
            r"'language.classifier': Unknown ImageNet classifier 'resnet5'.*did you mean 'resnet50'",
        ),
        (
            "data.batch_size=91",
            r"'data.batch_size' / 'data.examples_per_class': batch_size=91 must be a positive multiple of examples_per_class=2",
        ),
        ("model.backbone=resnet5", r"'model.backbone': Unknown backbone 'resnet5'.*did you mean 'resnet50'"),
        ("model.pooling=mean", r"'model.pooling': Unknown pooling 'mean'"),
        ("language.template=a photo", r"'language.template': Template 'a photo' has no '\{\}'"),
        ("training.eval_every=0", r"'training.eval_every': every must be >= 1"),
        ("optimizer.head_learning_rate=0", r"^'optimizer.head_learning_rate': head_learning_rate must be a finite"),
    ],
)
def test_bad_values_fail_before_any_data_is_read(override, match, monkeypatch, tmp_path):
    monkeypatch.setattr(builders, "dataset", lambda data: pytest.fail("data was read"))
    config = load_config(CONFIGS / "cub200_plg_128.yaml", [override, f"runs_dir={tmp_path}"])  # the schema lets it by
    with pytest.raises(ConfigError, match=match):
        training.train(config)
    assert not list(tmp_path.iterdir())  # nor was a run directory written


@pytest.mark.parametrize(
    "overrides,match",
    [
        (
            ["loss.dml=margin", "loss.dml_arguments={miner: hardest}"],
            r"'loss.dml_arguments': Unknown miner 'hardest'; expected one of \['random', 'semihard', 'softhard', "
            r"'distance', 'rho_distance'\]",
        ),
        (
            ["loss.dml=margin", "loss.dml_arguments={miner: rho_distance, rho: 1.5}"],
            r"^'loss.dml_arguments': rho must be a probability in \[0, 1\] .*got 1\.5; the paper's code uses 0\.2\.$",
        ),
        (
            ["loss.dml=triplet", "loss.dml_arguments={miner: rho_distance, rho: [0.2]}"],
            r"^'loss.dml_arguments.rho' must be a number \(triplet's rho\); got a list",
        ),
        (
            ["loss.dml=proxy_anchor", "loss.dml_arguments={alpha: -1}"],
            r"'loss.dml_arguments': alpha must be a finite number > 0",
        ),
        (
            ["loss.dml=s2sd", "loss.dml_arguments={feature_pooling: sum}"],
            r"'loss.dml_arguments': Unknown feature_pooling 'sum'",
        ),
        (
            ["loss.dml=s2sd", "loss.dml_arguments={target: s2sd}"],
            r"'loss.dml_arguments': S2SD's target loss cannot be 's2sd'",
        ),
        (
            ["loss.dml=margin", "loss.dml_arguments={xbm_memory_size: 8}"],
            r"'loss.dml_arguments': xbm_memory_size works with TensorFlow-Similarity's losses",
        ),
        # A list where the loss takes a number (the shape of the reproduced alias bomb, without the alias).
        (
            ["loss.dml=circle", "loss.dml_arguments={gamma: [80, 80]}"],
            r"^'loss.dml_arguments.gamma' must be a number \(circle's gamma\); got a list \(\[80, 80\]\)\.$",
        ),
        (
            ["loss.dml=margin", "loss.dml_arguments={beta_constant: [false]}"],
            r"^'loss.dml_arguments.beta_constant' must be true or false \(margin's beta_constant\); got a list",
        ),
        (
            ["loss.dml=s2sd", "loss.dml_arguments={target_arguments: {margin: [0.1]}}"],
            r"^'loss.dml_arguments.target_arguments.margin' must be a number \(multisimilarity's margin\)",
        ),
    ],
)
def test_bad_arguments_of_the_paper_s_losses_name_dml_arguments_before_any_data(overrides, match):
    config = load_config(CONFIGS / "cub200_plg_128.yaml", overrides)
    with pytest.raises(ConfigError, match=match):
        training.preflight(config)


def test_losses_that_mine_take_the_training_seed_unless_the_config_sets_one():
    config = load_config(None, ["loss.dml=margin", "training.seed=7"])
    assert builders.dml_loss_spec(config.loss, config.training) == {"name": "margin", "seed": 7}
    config = load_config(None, ["loss.dml=margin", "training.seed=7", "loss.dml_arguments={seed: 3}"])
    assert builders.dml_loss_spec(config.loss, config.training)["seed"] == 3
    assert "seed" not in builders.dml_loss_spec(load_config(None, []).loss, config.training)  # multisimilarity


def test_a_builder_error_names_the_key_and_the_library_s_own_valid_values():
    from tf_langdml.losses import DIRECTIONS

    config = load_config(None, ["loss.direction=sideways"])
    with pytest.raises(ConfigError) as info:
        builders.check_model(config.loss, config.optimizer, config.training)
    assert "loss.direction" in str(info.value) and str(list(DIRECTIONS)) in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)  # the library's error, re-raised
    # The real build names it the same way.
    config = load_config(
        None, ["loss.direction=sideways", "model.backbone=toy_cnn", "model.weights=null", "data.image_size=16"]
    )
    with pytest.raises(ConfigError, match=r"'loss.direction': .*\['image_to_language', 'language_to_image'\]"):
        builders.guided_model(config.model, config.data.image_size, config.loss, config.optimizer, config.training)


def test_what_the_library_accepts_passes_the_checks():
    # The loss takes any finite shift (γ), negative ones too; the checks agree with it.
    config = load_config(
        CONFIGS / "cub200_plg_128.yaml",
        ["loss.shift=-1", "loss.direction=language_to_image", "model.pooling=avg+max", "language.level=sample"],
    )
    training.preflight(config)
    for path in sorted(CONFIGS.glob("*.yaml")):
        training.preflight(load_config(path))


def test_an_unknown_dataset_is_named_by_the_data_builder():
    with pytest.raises(ConfigError, match=r"'data.dataset': Unknown TFDS dataset 'cub2000'.*did you mean 'cub200'"):
        builders.check_data(load_config(None, ["data.dataset=cub2000"]).data)


def test_a_missing_weights_file_is_found_before_any_data_is_read(tmp_path):
    config = load_config(None, [f"model.weights={tmp_path / 'nope.h5'}"])
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        builders.check_embedder(config.model, config.data.image_size)


def test_background_and_max_pixels_reach_the_split():
    config = load_config(overrides=["data.dataset=demo", "data.background=black", "data.max_pixels=5000"])
    split = builders.dataset(config.data).train_split
    assert split.background == (0, 0, 0) and split.max_pixels == 5000


def test_too_many_classes_per_batch_for_the_split_is_named(tmp_path):
    config = load_config(overrides=["data.dataset=demo", "data.batch_size=400"])
    split = builders.dataset(config.data).train_split
    with pytest.raises(
        ConfigError, match=r"'data.batch_size' / 'data.examples_per_class': .*distinct classes per batch"
    ):
        builders.train_batches(config.data, split, seed=0)


def test_a_folder_with_a_gallery_is_scored_by_the_query_gallery_protocol(tmp_path):
    import numpy as np
    from PIL import Image

    from tf_langdml import keras
    from tf_langdml.evaluation import RetrievalEvaluation, embed_split, embedding_space_metrics, retrieval_metrics

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name in ["a", "b", "c", "d", "e"]:
        for where, count in [("", 3), ("gallery", 3)]:
            (root / name / where).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / name / where / f"{index}.png")
    (tmp_path / "test.txt").write_text("# test classes\nc\nd\ne\n")
    config = load_config(
        overrides=[
            "data.dataset=folder",
            f"data.data_dir={root}",
            f"data.test_classes={tmp_path}/test.txt",
            "data.image_size=8",
            "evaluation.clustering=false",
            "evaluation.semantic=false",
            "evaluation.ks=[1, 2]",
        ]
    )
    split = builders.dataset(config.data).test_split
    assert split.raw_class_names == ("c", "d", "e") and split.gallery.sum() == 9 and len(split.labels) == 18
    network = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])  # mean colour
    metrics = builders.evaluation_metrics(config.evaluation, config.data, config.language, 0, network, split, verbose=0)
    embeddings, gallery = embed_split(network, split, 64, 8, verbose=0), split.gallery
    assert metrics == {
        **retrieval_metrics(
            embeddings[~gallery],
            split.labels[~gallery],
            (1, 2),
            gallery_embeddings=embeddings[gallery],
            gallery_labels=split.labels[gallery],
        ),
        **embedding_space_metrics(embeddings, split.labels),  # the diagnostics: all 18 images, queries and gallery
    }
    leave_one_out = retrieval_metrics(embeddings, split.labels, (1, 2))
    assert {name: metrics[name] for name in leave_one_out} != leave_one_out  # not leave-one-out
    callback = RetrievalEvaluation(split, batch_size=64, image_size=8, ks=(1, 2), verbose=0)  # during training too
    callback.set_model(network)
    assert callback.evaluate() == metrics
    # Wrong names come back naming the key, before any image is read.
    bad = load_config(overrides=["data.dataset=folder", f"data.data_dir={root}", "data.test_classes=[c, x]"])
    with pytest.raises(ConfigError, match=r"'data.test_classes': test_classes \['x'\] are not class folders"):
        builders.dataset(bad.data)
    (tmp_path / "gallery.txt").write_text("a/0.png\na/9.png\n")
    bad = load_config(
        overrides=["data.dataset=folder", f"data.data_dir={root}", f"data.gallery_list={tmp_path}/gallery.txt"]
    )
    with pytest.raises(ConfigError, match=r"'data.gallery_list': .*\['a/9.png'\]"):
        builders.dataset(bad.data)


@pytest.mark.parametrize(
    "override,match",
    [
        ("optimizer.decay_factor=0", r"^'optimizer.decay_factor': decay_factor must be a finite number > 0"),
        ("optimizer.decay_epochs=[0]", r"^'optimizer.decay_epochs': decay_epochs must be a list of whole epochs >= 1"),
        ("optimizer.decay_epochs=[55, 30]", r"^'optimizer.decay_epochs': decay_epochs must be strictly increasing"),
    ],
)
def test_a_bad_step_decay_is_named_before_any_data(override, match):
    config = load_config(
        CONFIGS / "cub200_plg_128.yaml", ["optimizer.schedule=step", "optimizer.decay_epochs=[30]", override]
    )
    with pytest.raises(ConfigError, match=match):
        training.preflight(config)


def test_decay_epochs_and_warmup_epochs_become_optimizer_steps_of_the_run_s_epochs():
    overrides = [
        "model.backbone=toy_cnn",
        "model.weights=null",
        "model.embed_dim=8",
        "optimizer.schedule=step",
        "optimizer.decay_epochs=[2, 5]",
        "optimizer.decay_factor=0.5",
        "optimizer.head_learning_rate=0.1",
        "training.warmup_epochs=1",
    ]
    config = load_config(None, overrides)
    model = builders.guided_model(config.model, 16, config.loss, config.optimizer, config.training, steps_per_epoch=7)
    schedule = model.optimizer._learning_rate  # the schedule as given (.learning_rate is the last step's value)
    assert (schedule.boundaries, schedule.factor, schedule.initial_learning_rate) == ([14, 35], 0.5, 1e-5)
    assert model.head_optimizer._learning_rate.initial_learning_rate == 0.1
    assert model.warmup_steps == 7


def test_a_warmup_as_long_as_the_training_freezes_the_backbone_for_the_whole_run():
    overrides = ["model.backbone=toy_cnn", "model.weights=null", "training.epochs=2", "training.warmup_epochs=2"]
    config = load_config(None, overrides)
    model = builders.guided_model(config.model, 16, config.loss, config.optimizer, config.training, steps_per_epoch=7)
    assert model.warmup_steps == 14  # every step of the run: the backbone's optimizer is never applied
    with pytest.raises(ConfigError, match=r"'training.warmup_epochs' \(3\) must be at most training.epochs \(2\)"):
        load_config(None, [*overrides[:-1], "training.warmup_epochs=3"])
