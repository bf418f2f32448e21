"""Every custom Keras layer, model and loss of tf_langdml survives serialisation with the same outputs.

For each class: ``get_config`` -> JSON -> ``from_config`` (weights copied) computes the same
outputs on the same input, eagerly and inside a ``tf.function``; the layers and models also
go through ``model.save`` / ``keras.models.load_model`` in every format tf-keras offers them
(``.keras``, ``.h5`` for functional models, SavedModel). Same class, same config, same
weights and same ops on the same device give bit-identical results, so the comparisons are
exact. Each config value checked here is also perturbed to show the outputs depend on it:
a round trip that dropped it would fail.
"""

import importlib
import inspect
import json
import pkgutil

import numpy as np
import pytest
import tensorflow as tf
from helpers import toy_backbone, unit_rows

import tf_langdml
from tf_langdml import keras
from tf_langdml.losses import LanguageMatchingLoss, build_dml_loss
from tf_langdml.losses.base import BatchLoss
from tf_langdml.losses.dml import TFSIM_LOSSES, _batch_losses
from tf_langdml.losses.proxy_losses import ClassVectorLoss
from tf_langdml.losses.tuple_losses import MinedTupleLoss
from tf_langdml.models import (
    FrozenStatisticsBatchNormalization,
    ImageNormalization,
    L2Normalize,
    LanguageGuidedModel,
    build_embedder,
)
from tf_langdml.models.learning_rates import StepDecay
from tf_langdml.models.loss_optimizers import ScaledLearningRate

# The classes this module checks; test_every_custom_class_is_covered keeps the list complete.
# BatchLoss, MinedTupleLoss and ClassVectorLoss are abstract: their subclasses are checked.
COVERED = {
    ImageNormalization,
    L2Normalize,
    FrozenStatisticsBatchNormalization,
    LanguageMatchingLoss,
    LanguageGuidedModel,
    BatchLoss,
    MinedTupleLoss,
    ClassVectorLoss,
    *_batch_losses().values(),
    ScaledLearningRate,
    StepDecay,
}

SAVE_FORMATS = ("model.keras", "model.h5", "saved_model")
# HDF5 is legacy but still what tf-keras writes for a path ending in .h5, so it is checked too.
pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")


def json_round_trip(config):
    return json.loads(json.dumps(config))


def package_classes():
    """Classes defined in tf_langdml that Keras serialises: layers, models, losses, registered objects."""
    modules = [tf_langdml] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(tf_langdml.__path__, "tf_langdml.")
        if not info.name.endswith("__main__")  # running it would start the CLI
    ]
    registered = {value for key, value in keras.utils.get_custom_objects().items() if key.startswith("tf_langdml>")}
    found = set(registered)
    for module in modules:
        for _, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == module.__name__ and issubclass(
                value, (keras.layers.Layer, keras.Model, keras.losses.Loss)
            ):
                found.add(value)
    return found


def test_every_custom_class_is_covered():
    assert package_classes() == COVERED


# ---------------------------------------------------------------- layers


def frozen_batch_norm():
    layer = FrozenStatisticsBatchNormalization(epsilon=0.5, momentum=0.9)
    layer.build((None, 3, 3, 4))
    rng = np.random.default_rng(3)
    # gamma, beta, moving mean, moving variance: none of them the initial 1, 0, 0, 1.
    layer.set_weights([rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.2, 0.8, 4)])
    return layer


# name -> (build the layer, input, config changes that must change the outputs)
LAYER_CASES = {
    "image_normalization_caffe": (lambda: ImageNormalization("caffe"), "images", {"mode": "tf"}),
    "image_normalization_efficientnet_lite": (
        lambda: ImageNormalization("efficientnet_lite"),
        "images",
        {"mode": "none"},
    ),
    "image_normalization_tf": (lambda: ImageNormalization("tf"), "images", {"mode": "caffe"}),
    "image_normalization_none": (lambda: ImageNormalization("none"), "images", {"mode": "efficientnet_lite"}),
    # Rows with squared norm below epsilon = 0.5 are divided by sqrt(epsilon), not by their norm.
    "l2_normalize": (lambda: L2Normalize(epsilon=0.5), "small_vectors", {"epsilon": 1e-12}),
    "frozen_batch_norm": (frozen_batch_norm, "feature_maps", {"epsilon": 1e-3}),
}


def layer_input(kind):
    rng = np.random.default_rng(0)
    if kind == "images":
        return rng.uniform(0, 255, (2, 3, 3, 3)).astype("float32")
    if kind == "small_vectors":
        return np.concatenate([rng.normal(0, 0.1, (3, 5)), rng.normal(0, 3, (3, 5))]).astype("float32")
    return rng.normal(size=(2, 3, 3, 4)).astype("float32")


def restored_layer(layer, changes=None):
    """A new layer from the (JSON) config with ``changes`` applied, holding the same weights."""
    config = {**json_round_trip(layer.get_config()), **(changes or {})}
    restored = type(layer).from_config(config)
    if layer.weights:  # only the batch norm has weights; it was built for (None, 3, 3, 4)
        restored.build((None, 3, 3, 4))
        restored.set_weights(layer.get_weights())
    return restored


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_config_round_trip_gives_the_same_outputs(case, run_mode):
    make, kind, _ = LAYER_CASES[case]
    layer, inputs = make(), layer_input(kind)
    restored = restored_layer(layer)
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()
    # training=True: FrozenStatisticsBatchNormalization must still use its moving statistics.
    expected = run_mode(lambda x: layer(x, training=True))(inputs).numpy()
    np.testing.assert_array_equal(run_mode(lambda x: restored(x, training=True))(inputs).numpy(), expected)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_outputs_depend_on_the_config_values_checked(case, run_mode):
    make, kind, changes = LAYER_CASES[case]
    layer, inputs = make(), layer_input(kind)
    changed = restored_layer(layer, changes)
    expected = run_mode(lambda x: layer(x, training=True))(inputs).numpy()
    difference = np.abs(run_mode(lambda x: changed(x, training=True))(inputs).numpy() - expected).max()
    assert difference > 1e-2, (changes, difference)


def test_a_batch_norm_reloaded_as_the_keras_class_would_give_other_outputs():
    """The class matters too: a plain BatchNormalization with the same config and weights uses batch statistics."""
    layer = frozen_batch_norm()
    plain = keras.layers.BatchNormalization.from_config(layer.get_config())
    plain.build((None, 3, 3, 4))
    plain.set_weights(layer.get_weights())
    inputs = layer_input("feature_maps")
    assert np.abs(plain(inputs, training=True).numpy() - layer(inputs, training=True).numpy()).max() > 1e-2


@pytest.fixture(scope="module")
def every_layer_model():
    """One functional model holding every custom layer, with non-trivial weights."""
    images = keras.Input((6, 6, 3), name="images")
    x = ImageNormalization("caffe", name="normalization")(images)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = FrozenStatisticsBatchNormalization(epsilon=0.5, name="frozen_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = L2Normalize(epsilon=1e-3, name="l2_normalize")(x)
    model = keras.Model(images, x, name="every_layer")
    model.get_layer("frozen_bn").set_weights(frozen_batch_norm().get_weights())
    return model


@pytest.fixture(scope="module")
def saved_and_loaded(tmp_path_factory):
    """A function (key, model, file_name) -> the model saved in that format and loaded back, once per key and format.

    The eager/graph parametrisation compares outputs, never saves: one save serves both modes.
    """
    root = tmp_path_factory.mktemp("saves")
    loaded = {}

    def save_and_load(key, model, file_name):
        if (key, file_name) not in loaded:
            path = root / key / file_name
            path.parent.mkdir(exist_ok=True)
            model.save(str(path))
            loaded[key, file_name] = keras.models.load_model(str(path), compile=False)
        return loaded[key, file_name]

    return save_and_load


@pytest.mark.parametrize("file_name", SAVE_FORMATS)
def test_functional_model_with_every_layer_saves_and_loads(every_layer_model, file_name, saved_and_loaded, run_mode):
    model = every_layer_model
    loaded = saved_and_loaded("every_layer", model, file_name)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert [layer.get_config() for layer in loaded.layers[1:]] == [layer.get_config() for layer in model.layers[1:]]
    images = np.random.default_rng(1).uniform(0, 255, (3, 6, 6, 3)).astype("float32")
    expected = run_mode(lambda x: model(x, training=False))(images).numpy()
    np.testing.assert_array_equal(run_mode(lambda x: loaded(x, training=False))(images).numpy(), expected)
    # The reloaded frozen BatchNorm still ignores training=True.
    np.testing.assert_array_equal(run_mode(lambda x: loaded(x, training=True))(images).numpy(), expected)


# ---------------------------------------------------------------- models


@pytest.fixture(scope="module")
def guided_model():
    embedder = build_embedder(toy_backbone(), weights=None, embed_dim=8, input_shape=(16, 16, 3))
    table = np.random.default_rng(2).normal(size=(3, 5)).astype("float32")
    model = LanguageGuidedModel(embedder, table, table_index="sample_id", name="guided")
    bn = [layer for layer in embedder.submodules if isinstance(layer, FrozenStatisticsBatchNormalization)]
    assert len(bn) == 3  # build_embedder froze the backbone's BatchNorm layers (toy_cnn has three)
    rng = np.random.default_rng(4)
    for layer in bn:  # gamma, beta and the moving statistics away from 1, 0, 0, 1, so a wrong restore shows
        layer.set_weights([w + rng.uniform(0.1, 0.5, w.shape) for w in layer.get_weights()])
    return model


def guided_images():
    return np.random.default_rng(5).uniform(0, 255, (4, 16, 16, 3)).astype("float32")


def test_language_guided_model_config_round_trip(guided_model, run_mode):
    restored = LanguageGuidedModel.from_config(json_round_trip(guided_model.get_config()))
    assert type(restored) is LanguageGuidedModel
    assert (restored.table_index, restored.name) == ("sample_id", "guided")
    assert restored.language_table is None  # training-time data, never part of the config
    restored.set_weights(guided_model.get_weights())
    images = guided_images()
    expected = run_mode(lambda x: guided_model(x, training=False))(images).numpy()
    np.testing.assert_array_equal(run_mode(lambda x: restored(x, training=False))(images).numpy(), expected)


def test_language_guided_model_outputs_depend_on_the_embedder_config(guided_model):
    config = json_round_trip(guided_model.get_config())
    layers = config["embedder"]["config"]["layers"]
    [normalization] = [layer for layer in layers if layer["config"]["name"] == "normalization"]
    assert normalization["config"]["mode"] == "none"  # the default for a backbone passed in
    normalization["config"]["mode"] = "tf"
    changed = LanguageGuidedModel.from_config(config)
    changed.set_weights(guided_model.get_weights())
    images = guided_images()
    assert np.abs(changed(images).numpy() - guided_model(images).numpy()).max() > 1e-2


@pytest.mark.parametrize("file_name", ["model.keras", "saved_model"])  # HDF5 takes functional models only
def test_language_guided_model_saves_and_loads(guided_model, file_name, saved_and_loaded, run_mode):
    loaded = saved_and_loaded("guided", guided_model, file_name)
    images = guided_images()
    expected = run_mode(lambda x: guided_model(x, training=False))(images).numpy()
    np.testing.assert_array_equal(run_mode(lambda x: loaded(x, training=False))(images).numpy(), expected)
    np.testing.assert_array_equal(run_mode(lambda x: loaded(x, training=True))(images).numpy(), expected)


@pytest.mark.parametrize(
    "file_name",
    [
        "model.keras",
        "saved_model",
    ],
)
def test_language_guided_model_reloads_as_its_own_class(guided_model, file_name, saved_and_loaded):
    loaded = saved_and_loaded("guided", guided_model, file_name)
    assert type(loaded) is LanguageGuidedModel and loaded.table_index == "sample_id"


@pytest.mark.parametrize("file_name", SAVE_FORMATS)
def test_embedder_saves_and_loads(guided_model, file_name, saved_and_loaded, run_mode):
    embedder = guided_model.embedder  # build_embedder's model: ImageNormalization, frozen BN, L2Normalize
    loaded = saved_and_loaded("embedder", embedder, file_name)
    types = {type(layer) for layer in loaded.submodules}
    assert {ImageNormalization, L2Normalize, FrozenStatisticsBatchNormalization} <= types
    assert keras.layers.BatchNormalization not in types  # not silently reloaded as a training BatchNorm
    images = guided_images()
    expected = run_mode(lambda x: embedder(x, training=False))(images).numpy()
    np.testing.assert_array_equal(run_mode(lambda x: loaded(x, training=True))(images).numpy(), expected)


# ---------------------------------------------------------------- learning-rate schedules


def test_scaled_learning_rate_round_trips_and_loads_its_config_from_before_it_was_registered():
    schedule = ScaledLearningRate(keras.optimizers.schedules.ExponentialDecay(1e-4, 10, 0.5), 2000.0)
    config = json_round_trip(keras.optimizers.schedules.serialize(schedule))
    assert config["registered_name"] == "tf_langdml>ScaledLearningRate"
    assert isinstance(keras.optimizers.schedules.deserialize(config), ScaledLearningRate)
    # Unregistered (in models.language_guided_model) it serialised as below, which loaded only with
    # custom_objects naming the class (without, Keras returns the string "ScaledLearningRate"); it still does.
    earlier = {**config, "module": "tf_langdml.models.language_guided_model", "registered_name": "ScaledLearningRate"}
    for saved, custom_objects in ((config, None), (earlier, {"ScaledLearningRate": ScaledLearningRate})):
        restored = keras.optimizers.schedules.deserialize(saved, custom_objects=custom_objects)
        assert isinstance(restored, ScaledLearningRate) and restored.multiplier == 2000.0
        assert float(restored(20)) == float(schedule(20)) == pytest.approx(0.05)
    assert float(ScaledLearningRate(schedule.schedule, 1000.0)(20)) != float(schedule(20))  # the multiplier counts


def test_step_decay_round_trips_with_its_rates_and_inside_a_scaled_rate():
    schedule = StepDecay(1e-3, [6, 15], 0.3)
    config = json_round_trip(keras.optimizers.schedules.serialize(ScaledLearningRate(schedule, 2000.0)))
    restored = keras.optimizers.schedules.deserialize(config)
    assert isinstance(restored.schedule, StepDecay) and restored.schedule.get_config() == schedule.get_config()
    steps = tf.constant([0, 5, 6, 14, 15, 100], tf.int64)
    # float32(rate) then x float32(2000): the same two roundings in both
    expected = [
        np.float32(np.float32(rate) * np.float32(2000.0))
        for rate in [1e-3] * 2 + [1e-3 * 0.3] * 2 + [1e-3 * 0.3**2] * 2
    ]
    assert [restored(step).numpy() for step in steps] == expected


def test_scaled_learning_rate_offset_reads_the_schedule_later_and_round_trips():
    schedule = StepDecay(1e-3, [6, 15], 0.3)
    shifted = ScaledLearningRate(schedule, 1.0, offset=4)  # a backbone optimizer after a 4-step warmup
    restored = keras.optimizers.schedules.deserialize(json_round_trip(keras.optimizers.schedules.serialize(shifted)))
    assert restored.offset == 4
    for step in (0, 1, 2, 10, 11):  # its step 2 is the base step 6 (the first boundary)
        assert restored(tf.constant(step, tf.int64)).numpy() == schedule(tf.constant(step + 4, tf.int64)).numpy()
    assert "offset" not in ScaledLearningRate(schedule, 2.0).get_config()  # without one: the config as before


# ---------------------------------------------------------------- losses


def matching_case():
    rng = np.random.default_rng(6)
    embeddings = unit_rows(rng.normal(size=(8, 6))).astype("float32")
    labels = np.repeat(np.arange(4), 2).astype("int32")
    table = rng.normal(size=(4, 3, 5)).astype("float32")
    return embeddings, labels, table


LANGUAGE_MATCHING_CONFIG = {"shift": 0.5, "temperature": 2.0, "direction": "language_to_image", "name": "matching"}


@pytest.mark.parametrize("serialize", ["config", "keras_object"])
def test_language_matching_loss_round_trip(serialize, run_mode):
    loss = LanguageMatchingLoss(**LANGUAGE_MATCHING_CONFIG)
    if serialize == "config":
        restored = LanguageMatchingLoss.from_config(json_round_trip(loss.get_config()))
    else:
        restored = keras.utils.deserialize_keras_object(json_round_trip(keras.utils.serialize_keras_object(loss)))
    assert type(restored) is LanguageMatchingLoss and restored.get_config() == LANGUAGE_MATCHING_CONFIG
    case = matching_case()
    expected = float(run_mode(lambda *args: loss(*args))(*case))
    assert expected > 0
    assert float(run_mode(lambda *args: restored(*args))(*case)) == expected


@pytest.mark.parametrize("key,value", [("shift", 1.0), ("temperature", 1.0), ("direction", "image_to_language")])
def test_language_matching_loss_depends_on_each_config_value(key, value, run_mode):
    loss = LanguageMatchingLoss(**LANGUAGE_MATCHING_CONFIG)
    changed = LanguageMatchingLoss.from_config({**loss.get_config(), key: value})
    case = matching_case()
    before = float(run_mode(lambda *args: loss(*args))(*case))
    after = float(run_mode(lambda *args: changed(*args))(*case))
    assert abs(after - before) > 1e-3 * abs(before), (key, before, after)


# What build_dml_loss configures (the classes are TF-Similarity's; the values are ours) and a
# value whose change must change the per-anchor losses.
DML_CHANGES = {
    "multisimilarity": {"beta": 10.0},
    "tfsim_triplet": {"margin": 1.0},
    "pn": {"margin": 1.0},
    "circle": {"gamma": 20.0},
    "soft_nearest_neighbor": {"temperature": 0.1},
}


def test_every_dml_loss_has_a_change_to_check():
    assert set(DML_CHANGES) == set(TFSIM_LOSSES)  # the BatchLoss layers: tests/losses/


def dml_case():
    rng = np.random.default_rng(7)
    return np.repeat(np.arange(4), 2).reshape(-1, 1), unit_rows(rng.normal(size=(8, 6))).astype("float32")


def per_anchor(loss, run_mode):
    labels, embeddings = dml_case()
    return run_mode(lambda y, x: loss.call(y, x))(labels, embeddings).numpy()  # TF-Similarity's (labels, embeddings)


@pytest.mark.parametrize("name", sorted(TFSIM_LOSSES))
def test_dml_loss_config_round_trip(name, run_mode):
    loss = build_dml_loss(name)
    restored = type(loss).from_config(loss.get_config())
    assert restored.get_config().keys() == loss.get_config().keys()
    expected = per_anchor(loss, run_mode)
    assert expected.shape[0] == 8 and expected.max() > 0  # one value per anchor: (8, 1), or (8,) for soft NN
    np.testing.assert_array_equal(per_anchor(restored, run_mode), expected)
    changed = type(loss).from_config({**loss.get_config(), **DML_CHANGES[name]})
    assert np.abs(per_anchor(changed, run_mode) - expected).max() > 1e-3


# The BatchLoss layers (tuple, proxy and S2SD losses): a change of one argument that must change the loss.
BATCH_LOSS_CHANGES = {
    "margin": {"margin": 0.5},
    "triplet": {"margin": 1.0},
    "contrastive": {"negative_margin": 0.5},
    "npair": {"l2_weight": 1.0},
    "proxy_anchor": {"alpha": 8.0},
    "proxy_nca": {"scale": 1.0},
    "normalized_softmax": {"temperature": 1.0},
    "arcface": {"angular_margin": 0.1},
    "s2sd": {"feature_weight": 5.0},
}


def test_every_batch_loss_has_a_change_to_check():
    assert set(BATCH_LOSS_CHANGES) == set(_batch_losses())


def batch_loss_value(loss, run_mode, source=None):
    rng = np.random.default_rng(11)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3], np.int32)
    embeddings = unit_rows(rng.normal(size=(10, 6))).astype("float32")
    features = rng.normal(size=(10, 3, 3, 5)).astype("float32")
    loss.setup(4, 6, 5)
    if source is not None:
        loss.set_weights(source.get_weights())
    return float(
        run_mode(lambda y, x, f: loss(y, x, features=loss.pool_features(f) if loss.needs_features else None, step=3))(
            labels, embeddings, features
        )
    )


@pytest.mark.parametrize("name", sorted(BATCH_LOSS_CHANGES))
def test_batch_loss_config_round_trip(name, run_mode):
    arguments = {"dims": [8, 12]} if name == "s2sd" else {}
    loss = build_dml_loss(name, **arguments)
    expected = batch_loss_value(loss, run_mode)
    config = json_round_trip(loss.get_config())
    restored = type(loss).from_config(config)
    assert restored.get_config() == loss.get_config()
    assert batch_loss_value(restored, run_mode, source=loss) == expected
    changed = type(loss).from_config({**config, **BATCH_LOSS_CHANGES[name]})
    assert abs(batch_loss_value(changed, run_mode, source=loss) - expected) > 1e-4 * max(1.0, abs(expected))
