"""Losses with learned state (proxies, β, class vectors, S2SD heads) inside LanguageGuidedModel.

Owned by the model (created at compile), trained by train_step at their own learning
rate and without weight decay (S2SD's heads: with it), checkpointed, absent from the
export; S2SD reads pooled features from the same forward pass as the embeddings.
(kill -9 resume: tests/test_experiment.py; MirroredStrategy: tests/distribute/test_mirrored.py.)
"""

import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_embedder, tiny_guided_model

from tf_langdml import keras
from tf_langdml.export import export_embedder
from tf_langdml.losses import DML_LOSSES, build_dml_loss
from tf_langdml.losses.dml import TFSIM_LOSSES
from tf_langdml.models import LanguageGuidedModel, build_embedder

NEW_LOSSES = sorted(set(DML_LOSSES) - set(TFSIM_LOSSES))
S2SD_SMALL = {"name": "s2sd", "dims": [16, 24], "distill_weight": 1.0, "feature_weight": 2.0}


def problem(seed=0):
    """6 classes with 4, 4, 3, 3, 2, 2 images (uneven), 16 x 16, class prototypes + noise; a (6, 2, 5) table."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), [4, 4, 3, 3, 2, 2]).astype("int32")
    prototypes = rng.uniform(0, 255, (6, 16, 16, 3))
    images = np.clip(prototypes[labels] + rng.normal(0, 25, (labels.size, 16, 16, 3)), 0, 255).astype("float32")
    return images, labels, rng.normal(size=(6, 2, 5)).astype("float32")


def make_model(dml_loss, learning_rate=1e-3, weight_decay=0.0, table=True, **compile_arguments):
    """(model, images, labels): helpers.tiny_guided_model (seed 3) on :func:`problem`, its loss optimizers built."""
    images, labels, language = problem()
    model = tiny_guided_model(
        language if table else None,
        seed=3,
        optimizer=keras.optimizers.Adam(learning_rate),
        dml_loss=dml_loss,
        language_weight=1.0 if table else 0.0,
        weight_decay=weight_decay,
        **compile_arguments,
    )
    model.build_optimizers()
    return model, images, labels


def spec(name):
    return dict(S2SD_SMALL) if name == "s2sd" else {"name": name}


# Four in the default suite (a mined loss with learned β, a proxy loss, a class-weight loss, S2SD); the other five
# (about 20 s) with make test-slow.
IN_DEFAULT_SUITE = ("margin", "proxy_anchor", "arcface", "s2sd")


@pytest.mark.parametrize(
    "name", [name if name in IN_DEFAULT_SUITE else pytest.param(name, marks=pytest.mark.slow) for name in NEW_LOSSES]
)
def test_fit_with_each_loss_and_elg_lowers_the_total_loss(name):
    model, images, labels = make_model(spec(name), learning_rate=3e-3)
    # train_on_batch returns each step's loss, computed before its update (one traced function).
    steps = [model.train_on_batch(images, labels, return_dict=True) for _ in range(25)]
    first, last = steps[0], steps[-1]
    assert np.isfinite(last["loss"]) and last["language_loss"] > 0
    assert last["loss"] < 0.9 * first["loss"], (first, last)


def test_loss_variables_are_owned_by_the_model_and_train_at_their_own_rate_without_weight_decay():
    plain, images, labels = make_model({"name": "proxy_anchor"}, learning_rate=1e-4, weight_decay=0.0)
    decayed, _, _ = make_model({"name": "proxy_anchor"}, learning_rate=1e-4, weight_decay=50.0)
    proxies = plain.dml_loss.class_vectors
    assert proxies.shape == (6, 8)  # num_classes from the table's rows, embed_dim from the embedder
    assert any(variable is proxies for variable in plain.trainable_variables)
    assert not any(variable is proxies for variable in plain.embedder.variables)
    assert [optimizer.learning_rate.numpy() for optimizer in plain.loss_optimizers] == pytest.approx(
        [0.2]
    )  # 1e-4 x 2000
    start_proxies, start_embedder = proxies.numpy(), [w.numpy() for w in plain.embedder.trainable_variables]
    for model in (plain, decayed):
        model.train_on_batch(images, labels)
    # Adam's first step moves every coordinate with a non-zero gradient by about its learning rate.
    proxy_step = np.abs(proxies.numpy() - start_proxies).max()
    embedder_step = max(
        np.abs(w.numpy() - w0).max() for w, w0 in zip(plain.embedder.trainable_variables, start_embedder)
    )
    assert 0.15 < proxy_step <= 0.2 + 1e-6 and embedder_step <= 1e-4 + 1e-7
    # Weight decay reaches the network, not the proxies (the paper's code: only the network's group decays).
    np.testing.assert_array_equal(decayed.dml_loss.class_vectors.numpy(), proxies.numpy())
    assert (
        max(
            np.abs(a.numpy() - b.numpy()).max()
            for a, b in zip(decayed.embedder.trainable_variables, plain.embedder.trainable_variables)
        )
        > 0
    )


def test_margin_beta_trains_at_its_absolute_learning_rate():
    # The rho_distance miner (rho 0.5: the step has both (a, p, n) and (a, a, p) triplets): its step is finite too.
    margin = {"name": "margin", "beta_learning_rate": 5e-4, "miner": "rho_distance", "rho": 0.5}
    model, images, labels = make_model(margin, learning_rate=1e-5)
    beta = model.dml_loss.beta
    assert beta.shape == (6,) and np.allclose(beta.numpy(), 1.2)
    network = [w.numpy() for w in model.embedder.trainable_weights]
    logs = model.train_on_batch(images, labels, return_dict=True)
    moved = np.abs(beta.numpy() - 1.2)
    assert moved.max() == pytest.approx(5e-4, rel=1e-3)  # Adam's first step: the group's own rate, not 1e-5
    assert np.isfinite(logs["loss"]) and all(np.isfinite(w.numpy()).all() for w in model.trainable_weights)
    assert any((w.numpy() != w0).any() for w, w0 in zip(model.embedder.trainable_weights, network))


def test_s2sd_heads_train_without_weight_decay_and_beta_constant_is_fixed():
    plain, images, labels = make_model(S2SD_SMALL, weight_decay=0.0)
    decayed, _, _ = make_model(S2SD_SMALL, weight_decay=50.0)
    heads = [len(head.trainable_variables) for head in plain.dml_loss.heads]
    assert heads == [4, 4]  # 2 layers x (kernel, bias)
    before = [v.numpy() for head in plain.dml_loss.heads for v in head.trainable_variables]
    for model in (plain, decayed):
        model.train_on_batch(images, labels)
    after = [v.numpy() for head in plain.dml_loss.heads for v in head.trainable_variables]
    assert max(np.abs(a - b).max() for a, b in zip(after, before)) > 0  # the heads train
    for a, b in zip([v for head in decayed.dml_loss.heads for v in head.trainable_variables], after):
        np.testing.assert_array_equal(a.numpy(), b)  # and weight decay never reaches them
    fixed, _, _ = make_model({"name": "margin", "beta_constant": True, "beta": 1.1})
    assert fixed.dml_loss.beta is None and fixed.loss_optimizers == [] and not fixed.dml_loss.trainable_variables


class CountingLayer(keras.layers.Layer):
    """Identity that counts its (eager) calls."""

    calls = 0

    def call(self, inputs):
        CountingLayer.calls += 1
        return inputs


def test_s2sd_reads_features_of_the_same_forward_pass_and_leaves_the_embedder_as_built():
    inputs = keras.Input((16, 16, 3))
    maps = keras.layers.Conv2D(6, 3, strides=2, padding="same")(CountingLayer()(inputs))
    backbone = keras.Model(inputs, maps)
    embedder = build_embedder(backbone, weights=None, embed_dim=8, input_shape=(16, 16, 3), freeze_bn_statistics=False)
    images, labels, language = problem()
    model = LanguageGuidedModel(embedder, language_table=language)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), dml_loss={**S2SD_SMALL, "feature_pooling": "avg"}, run_eagerly=True
    )
    assert len(embedder.outputs) == 1 and embedder.output_shape == (None, 8)  # what build_embedder returned
    CountingLayer.calls = 0
    model.train_on_batch(images, labels)
    assert CountingLayer.calls == 1  # one forward pass gives the embeddings and the features
    embeddings, features = model.forward(images)
    np.testing.assert_allclose(embeddings.numpy(), embedder(images).numpy(), atol=1e-6)
    np.testing.assert_allclose(features.numpy(), backbone(images).numpy().mean(axis=(1, 2)), atol=1e-5)


def test_checkpoint_round_trip_of_proxies_and_their_optimizer(tmp_path):
    model, images, labels = make_model({"name": "proxy_anchor"})
    model.train_on_batch(images, labels)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(tmp_path / "ckpt"))
    fresh, _, _ = make_model({"name": "proxy_anchor"})
    assert not np.array_equal(fresh.dml_loss.class_vectors.numpy(), model.dml_loss.class_vectors.numpy())
    tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(fresh.dml_loss.class_vectors.numpy(), model.dml_loss.class_vectors.numpy())
    slots = [v.numpy() for v in model.loss_optimizers[0].variables]
    assert [np.array_equal(a, v.numpy()) for a, v in zip(slots, fresh.loss_optimizers[0].variables)] == [True] * len(
        slots
    )
    # The next step is then the same step.
    model.train_on_batch(images, labels)
    fresh.train_on_batch(images, labels)
    np.testing.assert_array_equal(fresh.dml_loss.class_vectors.numpy(), model.dml_loss.class_vectors.numpy())


def test_the_export_of_an_s2sd_run_with_proxies_is_a_plain_run_s_export(tmp_path):
    sizes, signatures = {}, {}
    s2sd_with_proxies = {**S2SD_SMALL, "target": "proxy_anchor"}  # heads and a proxy set per head
    for name, loss in (("plain", "multisimilarity"), ("s2sd", s2sd_with_proxies)):
        model, images, labels = make_model(loss)
        model.train_on_batch(images, labels)
        if name == "s2sd":
            assert len(model.dml_loss.head_losses[0].class_vectors.shape) == 2
        folder = export_embedder(model.embedder, tmp_path / name)
        reader = tf.train.load_checkpoint(str(folder / "variables" / "variables"))
        shapes = reader.get_variable_to_shape_map()
        assert not any("class_vectors" in key or "s2sd" in key or "head_" in key for key in shapes), name
        sizes[name] = sum(int(np.prod(shape)) for key, shape in shapes.items() if "OPTIMIZER" not in key)
        loaded = tf.saved_model.load(str(folder))
        signatures[name] = {
            key: (str(function.structured_input_signature), str(function.structured_outputs))
            for key, function in loaded.signatures.items()
        }
    assert sizes["s2sd"] == sizes["plain"]
    assert signatures["s2sd"] == signatures["plain"]


def test_clear_errors_for_losses_that_cannot_be_set_up():
    embedder = tiny_embedder()
    with pytest.raises(ValueError, match=r"needs num_classes >= 2 .*Pass num_classes=\.\.\. to compile\(\)"):
        LanguageGuidedModel(embedder).compile(dml_loss="proxy_anchor")
    model = LanguageGuidedModel(embedder)
    model.compile(dml_loss="proxy_anchor", num_classes=7)
    assert model.dml_loss.class_vectors.shape == (7, 8)
    with pytest.raises(ValueError, match="already set up .*build a new one"):  # one loss's proxies, one model
        LanguageGuidedModel(embedder).compile(dml_loss=model.dml_loss, num_classes=7)
    plain = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(8)])
    with pytest.raises(ValueError, match="no global pooling layer named avg_pool or max_pool"):
        LanguageGuidedModel(plain).compile(dml_loss=S2SD_SMALL)
    with pytest.raises(RuntimeError, match="call loss.setup"):
        build_dml_loss("margin")(np.zeros(4), np.ones((4, 8), "float32"))


@pytest.mark.parametrize("miner", ["random", "semihard", "softhard", "distance", "rho_distance"])
def test_the_miners_draw_the_same_triplets_under_xla(miner):
    from tf_langdml.losses import mine_triplets
    from tf_langdml.losses.base import mining_seed

    rng = np.random.default_rng(4)
    embeddings = tf.math.l2_normalize(tf.constant(rng.normal(size=(12, 8)), tf.float32), axis=1)
    labels = tf.constant([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])

    def mine(step):
        return mine_triplets(embeddings, labels, miner, seed=mining_seed(7, step))

    compiled = tf.function(mine, jit_compile=True)
    for step in range(3):
        for plain, jit in zip(mine(tf.constant(step)), compiled(tf.constant(step))):
            np.testing.assert_array_equal(plain.numpy(), jit.numpy())
    assert not np.array_equal(mine(tf.constant(0))[2].numpy(), mine(tf.constant(1))[2].numpy())  # steps differ


@pytest.mark.slow  # two XLA compilations per loss (about 40 s); make test-slow
@pytest.mark.parametrize("name", ["margin", "s2sd"])
def test_mined_and_s2sd_losses_compile_under_xla(name):
    values = {}
    for jit in (False, True):
        model, images, labels = make_model(spec(name), jit_compile=jit)
        values[jit] = [float(model.train_on_batch(images, labels)[0]) for _ in range(2)]
    # The miners draw with stateless uniforms (Gumbel-max), which XLA compiles: same triplets, same losses.
    np.testing.assert_allclose(values[True], values[False], rtol=1e-4)


def test_an_overflowing_loss_scaled_step_leaves_the_loss_variables_finite():
    model, images, labels = make_model({"name": "proxy_anchor"})
    model.compile(
        optimizer=keras.mixed_precision.LossScaleOptimizer(keras.optimizers.Adam(1e-3)),
        dml_loss={"name": "proxy_anchor"},
        language_weight=1.0,
        run_eagerly=True,
    )
    proxies, kernel = model.dml_loss.class_vectors, model.embedder.get_layer("projection").kernel
    before, kernel_before = proxies.numpy(), kernel.numpy()
    # What a float16 overflow gives: the unscaled gradients are Inf. The loss-scale optimizer skips the step.
    model.optimizer.get_unscaled_gradients = lambda gradients: [None if g is None else g * np.inf for g in gradients]
    model.train_on_batch(images, labels)
    np.testing.assert_array_equal(kernel.numpy(), kernel_before)
    np.testing.assert_array_equal(proxies.numpy(), before)  # a zero gradient on Adam's first step moves nothing
