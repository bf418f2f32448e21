"""build_embedder: structure, pooling, normalisation, frozen BatchNorm, weights handling."""

import urllib.error

import numpy as np
import pytest
import tensorflow as tf
from helpers import toy_backbone

from tf_langdml import keras
from tf_langdml.errors import argument_of
from tf_langdml.models import FrozenStatisticsBatchNormalization, ImageNormalization, build_embedder
from tf_langdml.models.embedder import embedder_with_feature_maps


def _one_sgd_step(embedder, images):
    optimizer = keras.optimizers.SGD(0.1)
    target = tf.random.stateless_normal((images.shape[0], embedder.output_shape[-1]), seed=(1, 2))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(embedder(images, training=True) * target)
    optimizer.apply_gradients(zip(tape.gradient(loss, embedder.trainable_variables), embedder.trainable_variables))


def _bn_state(model):
    layers = [layer for layer in model.submodules if isinstance(layer, keras.layers.BatchNormalization)]
    return layers, [
        [w.numpy().copy() for w in (layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta)]
        for layer in layers
    ]


@pytest.mark.parametrize("freeze", [True, False])
def test_resnet50_frozen_bn_keeps_statistics_and_trains_affine(freeze):
    embedder = build_embedder(
        "resnet50", weights=None, embed_dim=16, input_shape=(32, 32, 3), freeze_bn_statistics=freeze
    )
    layers, before = _bn_state(embedder)
    assert len(layers) == 53
    assert all(isinstance(layer, FrozenStatisticsBatchNormalization) == freeze for layer in layers)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    _one_sgd_step(embedder, images)
    _, after = _bn_state(embedder)
    statistics_changed = any(
        not np.array_equal(b[0], a[0]) or not np.array_equal(b[1], a[1]) for b, a in zip(before, after)
    )
    affine_changed = any(
        not np.array_equal(b[2], a[2]) or not np.array_equal(b[3], a[3]) for b, a in zip(before, after)
    )
    assert affine_changed
    assert statistics_changed is not freeze


def test_embeddings_are_unit_norm_float32_with_the_requested_size():
    embedder = build_embedder(toy_backbone(), weights=None, embed_dim=12, input_shape=(16, 16, 3))
    embeddings = embedder(np.random.default_rng(0).uniform(0, 255, (5, 16, 16, 3)).astype("float32"))
    assert embeddings.shape == (5, 12) and embeddings.dtype == tf.float32
    # float32 l2_normalize then a float32 norm of 12 terms: <= ~(12/2 + 2) x 2^-24 each, < 1e-6 together.
    np.testing.assert_allclose(np.linalg.norm(embeddings.numpy(), axis=1), 1.0, rtol=1e-6)


def test_avg_plus_max_pooling_is_the_sum_of_both():
    backbone = toy_backbone()
    images = np.random.default_rng(1).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    embedder = build_embedder(
        backbone, weights=None, embed_dim=4, pooling="avg+max", freeze_bn_statistics=False, input_shape=(16, 16, 3)
    )
    feature_maps = backbone(images, training=False).numpy()
    pooled = feature_maps.mean(axis=(1, 2)) + feature_maps.max(axis=(1, 2))
    projection = embedder.get_layer("projection")
    expected = pooled @ projection.kernel.numpy() + projection.bias.numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    # float32 on both sides, different kernels. toy_cnn leaves 2 x 2 x 64 maps: a mean of 4 non-negative values
    # (<= 3 x 2^-24 relative), a 64-term projection whose |terms| add up to <= ~15x its norm, rounded in <= ~6
    # levels of a blocked sum, normalisation: <= ~95 x 2^-24 ~ 6e-6 on unit-vector entries (1.8e-7 seen).
    # A relative term adds nothing.
    np.testing.assert_allclose(embedder(images, training=False).numpy(), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"Unknown pooling 'mean'; expected one of \['avg', 'max', 'avg\+max'\]"):
        build_embedder(toy_backbone(), weights=None, pooling="mean", input_shape=(16, 16, 3))


def test_caffe_normalization_matches_keras_applications():
    images = np.random.default_rng(2).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = ImageNormalization("caffe")(images).numpy()
    theirs = keras.applications.resnet50.preprocess_input(images.copy())
    # One float32 subtraction of the same float32 mean on each side, results below 256: <= half an ulp
    # (7.6e-6) each, bit-identical in practice.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)
    embedder = build_embedder("resnet50", weights=None, embed_dim=8, input_shape=(32, 32, 3))
    assert embedder.get_layer("normalization").mode == "caffe"


def test_local_weights_file_is_loaded(tmp_path):
    source = build_embedder("resnet50", weights=None, embed_dim=8, input_shape=(32, 32, 3))
    path = str(tmp_path / "resnet50_notop.h5")
    source.get_layer("resnet50").save_weights(path)
    loaded = build_embedder("resnet50", weights=path, embed_dim=8, input_shape=(32, 32, 3))
    for ours, theirs in zip(loaded.get_layer("resnet50").weights, source.get_layer("resnet50").weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_missing_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.h5' for backbone 'resnet50' does not exist"):
        build_embedder("resnet50", weights=str(missing), input_shape=(32, 32, 3))


def test_imagenet_weights_offline_names_the_local_alternative(tmp_path, monkeypatch):
    from tf_keras.src.utils import data_utils

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("HOME", str(tmp_path))  # an empty ~/.keras cache
    monkeypatch.setattr(data_utils, "urlretrieve", no_network)
    with pytest.raises(
        RuntimeError, match=r"pass weights='/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop\.h5'"
    ):
        build_embedder("resnet50", weights="imagenet", input_shape=(32, 32, 3))


@pytest.mark.parametrize(
    "arguments, argument",
    [
        ({"pooling": "mean"}, "pooling"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"input_shape": (16, 16)}, "input_shape"),
        ({"weights": "imagenet"}, "weights"),
        ({"input_shape": (32, 32, 3)}, "input_shape"),  # the backbone takes (16, 16, 3)
        ({"normalization": "zscore"}, "normalization"),
    ],
)
def test_refusals_name_their_argument(arguments, argument):
    with pytest.raises(ValueError) as info:
        build_embedder(toy_backbone(), **{"weights": None, "input_shape": (16, 16, 3), **arguments})
    assert argument_of(info.value) == argument


def test_the_feature_model_needs_a_named_global_pooling_layer():
    embedder = build_embedder(toy_backbone(), weights=None, embed_dim=4, input_shape=(16, 16, 3))
    features = embedder_with_feature_maps(embedder)
    feature_maps = tuple(embedder.get_layer("avg_pool").input.shape)
    assert len(feature_maps) == 4
    assert [tuple(output.shape) for output in features.outputs] == [(None, 4), feature_maps]
    images = keras.Input((16, 16, 3))
    plain = keras.Model(images, keras.layers.Flatten()(images), name="flat")
    with pytest.raises(ValueError, match="has no global pooling layer named avg_pool or max_pool") as info:
        embedder_with_feature_maps(plain)
    assert argument_of(info.value) == "embedder"


def test_bad_arguments_are_clear_errors():
    with pytest.raises(
        ValueError, match="Unknown backbone 'vgg'; known backbones: \\['efficientnet_lite0', 'resnet50', 'toy_cnn'\\]"
    ):
        build_embedder("vgg", weights=None)
    with pytest.raises(ValueError, match="embed_dim must be a positive integer"):
        build_embedder(toy_backbone(), weights=None, embed_dim=0, input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="input_shape must be \\(height, width, 3\\)"):
        build_embedder(toy_backbone(), weights=None, input_shape=(16, 16))
    with pytest.raises(ValueError, match="weights='imagenet' applies to named backbones only"):
        build_embedder(toy_backbone(), weights="imagenet", input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match=r"takes inputs of shape \(16, 16, 3\).*pass input_shape=\(16, 16, 3\)"):
        build_embedder(toy_backbone(), weights=None)
