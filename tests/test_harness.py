"""The shared harness of tests/helpers.py checks itself: folders, models, fake runs, the subprocess runner."""

import json
import sys

import numpy as np
import pytest
from helpers import (
    global_policy,
    quiet_env,
    run_cli,
    run_process,
    run_python,
    tiny_embedder,
    tiny_guided_model,
    toy_backbone,
    user_env,
    write_colour_folder,
    write_fake_run,
)
from PIL import Image

from tf_langdml import keras
from tf_langdml.data import load_image_folder
from tf_langdml.models import LanguageGuidedModel
from tf_langdml.runs.trained_embedder import check_finished_run


def read_folder(root):
    return {path.relative_to(root).as_posix(): np.asarray(Image.open(path)) for path in sorted(root.rglob("*.png"))}


def test_the_colour_folder_has_the_classes_and_images_asked_for_and_repeats_for_a_seed(tmp_path):
    root = write_colour_folder(
        tmp_path / "a", num_classes=3, per_class=2, size=(6, 10), noise=5, seed=4, class_name="{0:02d}.class_{0}"
    )
    assert sorted(path.name for path in root.iterdir()) == ["00.class_0", "01.class_1", "02.class_2"]
    images = read_folder(root)
    assert sorted(images) == [f"{index:02d}.class_{index}/{image}.png" for index in range(3) for image in range(2)]
    assert all(pixels.shape == (6, 10, 3) and pixels.dtype == np.uint8 for pixels in images.values())
    for index in range(3):  # one colour per class: every image of it within ±noise of the class's first pixel
        first = images[f"{index:02d}.class_{index}/0.png"].astype(int)
        second = images[f"{index:02d}.class_{index}/1.png"].astype(int)
        assert np.abs(second - first[0, 0]).max() <= 10 and np.abs(first - first[0, 0]).max() <= 10
    again = read_folder(
        write_colour_folder(
            tmp_path / "b", num_classes=3, per_class=2, size=(6, 10), noise=5, seed=4, class_name="{0:02d}.class_{0}"
        )
    )
    assert images.keys() == again.keys() and all(np.array_equal(images[key], again[key]) for key in images)
    other = read_folder(
        write_colour_folder(
            tmp_path / "c", num_classes=3, per_class=2, size=(6, 10), noise=5, seed=5, class_name="{0:02d}.class_{0}"
        )
    )
    assert any(not np.array_equal(images[key], other[key]) for key in images)
    split = load_image_folder(root, test_classes=[]).train_split
    assert len(split.labels) == 6


def test_the_colour_folder_takes_names_and_fixed_colours(tmp_path):
    root = write_colour_folder(
        tmp_path, per_class=1, noise=0, class_names=["red", "blue"], colours=[(255, 0, 0), (0, 0, 255)]
    )
    images = read_folder(root)
    assert sorted(images) == ["blue/0.png", "red/0.png"]
    assert (images["red/0.png"] == [255, 0, 0]).all() and (images["blue/0.png"] == [0, 0, 255]).all()
    with pytest.raises(ValueError, match="colours has 1 entries for 2 classes; give one per class"):
        write_colour_folder(tmp_path / "again", class_names=["red", "blue"], colours=[(255, 0, 0)])


def test_the_tiny_models_are_the_library_toy_cnn_and_repeat_for_a_seed():
    assert toy_backbone().name == "toy_cnn"
    assert tiny_embedder(embed_dim=4, image_size=8).output_shape == (None, 4)
    table = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    model = tiny_guided_model(table, seed=2, language_weight=2.0)
    assert isinstance(model, LanguageGuidedModel) and model.optimizer is not None
    assert model.embedder.get_layer("toy_cnn") is not None
    images = np.random.default_rng(1).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    same = tiny_guided_model(table, seed=2, optimizer=None)
    np.testing.assert_array_equal(model(images).numpy(), same(images).numpy())
    assert tiny_guided_model(optimizer=None, model_arguments={"name": "named"}).name == "named"
    with pytest.raises(ValueError, match=r"compile arguments \['language_weight'\] need an optimizer"):
        tiny_guided_model(optimizer=None, language_weight=1.0)


def test_the_global_policy_is_float32_again_after_the_block_even_after_an_error():
    with pytest.raises(RuntimeError, match="inside"):
        with global_policy("mixed_float16"):
            assert keras.mixed_precision.global_policy().name == "mixed_float16"
            raise RuntimeError("inside")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_a_fake_run_is_a_finished_run(tmp_path):
    folder = write_colour_folder(tmp_path / "images", num_classes=2, per_class=2)
    run = write_fake_run(
        tmp_path / "runs" / "fake",
        folder,
        embed_dim=4,
        seed=1,
        train_class_names=["class 0"],
        overrides=["evaluation.batch_size=2"],
    )
    check_finished_run(run)  # raises FileNotFoundError on a folder that is not a finished run
    assert sorted(path.name for path in run.iterdir()) == [
        "config.yaml",
        "embedder.weights.h5",
        "train_class_names.json",
    ]
    assert json.loads((run / "train_class_names.json").read_text()) == ["class 0"]
    config = (run / "config.yaml").read_text()
    assert "embed_dim: 4" in config and "batch_size: 2" in config and str(folder) in config


def test_the_child_environments_keep_this_one_and_drop_what_is_asked(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    environment = quiet_env(drop=["TF_USE_LEGACY_KERAS"], EXTRA="x")
    assert environment["PYTHONPATH"] == "/somewhere" and environment["EXTRA"] == "x"
    assert environment["TF_CPP_MIN_LOG_LEVEL"] == "3" and "TF_USE_LEGACY_KERAS" not in environment
    assert quiet_env(TF_CPP_MIN_LOG_LEVEL="2")["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert "TF_CPP_MIN_LOG_LEVEL" not in quiet_env(drop=["TF_CPP_MIN_LOG_LEVEL"])
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    shell = user_env(EXTRA="y")
    assert "TF_CPP_MIN_LOG_LEVEL" not in shell and "TF_USE_LEGACY_KERAS" not in shell
    assert shell["PYTHONPATH"] == "/somewhere" and shell["EXTRA"] == "y"


def test_the_runner_returns_the_process_and_a_failure_shows_its_output():
    result = run_python("import os, sys; print(sys.argv[1], os.environ['TF_CPP_MIN_LOG_LEVEL'])", "hello")
    assert result.returncode == 0 and result.stdout.split() == ["hello", "3"]
    with pytest.raises(AssertionError, match=r"(?s)exited with 3, expected 0.*said on stdout.*said on stderr"):
        run_python("import sys; print('said on stdout'); sys.exit(print('said on stderr', file=sys.stderr) or 3)")
    assert run_process([sys.executable, "-c", "raise SystemExit(2)"], returncode=None).returncode == 2
    with pytest.raises(AssertionError, match=r"(?s)did not end within 0.5 s.*started"):
        run_python("import sys, time; print('started', flush=True); time.sleep(60)", timeout=0.5)


def test_run_cli_runs_the_package():
    assert "usage" in run_cli(["--help"], timeout=120).stdout.lower()
