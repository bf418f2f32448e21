"""Mixed precision (float16, bfloat16) and XLA: the losses stay float32 and agree with the float32, non-XLA step."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import global_policy, synthetic_problem

from tf_langdml import keras
from tf_langdml.models import LanguageGuidedModel, build_embedder
from tf_langdml.runs import builders
from tf_langdml.runs.schema import load_config

RNG = np.random.default_rng(0)
LABELS = np.repeat(np.arange(4), 2).astype("int32")
IMAGES = RNG.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
TABLE = RNG.normal(size=(4, 1, 5)).astype("float32")


def make(jit_compile=False):
    keras.utils.set_random_seed(1)
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=8, input_shape=(32, 32, 3))
    model = LanguageGuidedModel(embedder, language_table=TABLE)
    model.compile(optimizer=keras.optimizers.SGD(0.1), language_weight=2.0, jit_compile=jit_compile)
    return model


@pytest.fixture
def mixed_policy():
    with global_policy("mixed_float16"):
        yield


def test_mixed_precision_losses_match_float32(mixed_policy):
    keras.mixed_precision.set_global_policy("float32")
    reference = make()
    expected = [float(value) for value in reference.compute_losses((IMAGES, LABELS), training=False)]
    keras.mixed_precision.set_global_policy("mixed_float16")
    mixed = make()
    mixed.embedder.set_weights(reference.embedder.get_weights())
    assert mixed.embedder.layers[1].compute_dtype == "float16"  # the backbone really runs in float16
    embeddings = mixed(IMAGES)
    assert embeddings.dtype == "float32"  # L2Normalize computes in float32
    losses = mixed.compute_losses((IMAGES, LABELS), training=False)
    assert all(loss.dtype == "float32" for loss in losses)
    # Stated tolerance: 1e-3 relative (float16 activations, float32 losses). float16 rounds to 2^-11 =
    # 4.9e-4 relative: embeddings move by ~4e-4 here, the losses by ~2.5e-5 (the errors average out).
    np.testing.assert_allclose([float(value) for value in losses], expected, rtol=1e-3)
    assert isinstance(mixed.optimizer, keras.mixed_precision.LossScaleOptimizer)
    history = mixed.fit(IMAGES, LABELS, batch_size=8, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))


def test_xla_step_matches_the_plain_step():
    plain, compiled = make(), make(jit_compile=True)
    compiled.embedder.set_weights(plain.embedder.get_weights())
    first = plain.fit(IMAGES, LABELS, batch_size=8, epochs=2, verbose=0, shuffle=False).history
    second = compiled.fit(IMAGES, LABELS, batch_size=8, epochs=2, verbose=0, shuffle=False).history
    # XLA fuses the float32 ops differently and uses its own exp / log approximations (a few ulps each);
    # after one SGD step the weights differ by ulps too. Relative differences ~1e-6 seen; the language
    # loss (0.05) carries a ~1e-6 absolute rounding floor (2e-5 relative); 1e-4 covers both.
    for name in ("loss", "dml_loss", "language_loss"):
        np.testing.assert_allclose(second[name], first[name], rtol=1e-4)


def test_config_options_reach_the_model():
    config = load_config(
        None,
        [
            "training.precision=mixed_float16",
            "training.jit_compile=true",
            "model.backbone=toy_cnn",
            "model.weights=null",
            "data.image_size=32",
            "language.guidance=elg",
            "loss.language_weight=1",
        ],
    )
    model = builders.guided_model(
        config.model, config.data.image_size, config.loss, config.optimizer, config.training, TABLE
    )
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    assert model._jit_compile is True
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after building


def test_bfloat16_config_builds_bfloat16_layers_without_loss_scaling():
    config = load_config(
        None,
        [
            "training.precision=mixed_bfloat16",
            "model.backbone=toy_cnn",
            "model.weights=null",
            "data.image_size=32",
            "language.guidance=elg",
            "loss.language_weight=1",
            "loss.dml=s2sd",
            "loss.dml_arguments={dims: [16]}",
        ],
    )
    model = builders.guided_model(
        config.model, config.data.image_size, config.loss, config.optimizer, config.training, TABLE
    )
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after building
    assert model.embedder.get_layer("toy_cnn").get_layer("toy_conv0").compute_dtype == "bfloat16"
    assert not isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)  # bfloat16: float32's range
    # What the losses read is float32: the embeddings and S2SD's pooled backbone features (bfloat16 maps).
    embeddings, features = model.forward(IMAGES)
    assert embeddings.dtype == tf.float32 and features.dtype == tf.float32
    assert all(loss.dtype == tf.float32 for loss in model.compute_losses((IMAGES, LABELS), training=False))


# -- bfloat16: one step against float32, fit ----------------------------------------------------

U_BFLOAT16 = 2.0**-8  # unit roundoff: 8 significant bits (7 stored + the implicit one), round to nearest
U_FLOAT32 = 2.0**-24
# Roundings of bfloat16 a value passes through in toy_cnn + the embedder head, forward: the input cast, per
# conv block the kernel cast, the conv output and the (frozen, affine) batch-norm output (3 x 3), the pooled
# features, the projection's kernel cast and output: 13. Backward: the projection's dx and dW, the pooling,
# per block batch-norm dx, conv dx and conv dW (3 x 3): 12. Each adds at most u relative (first order, the
# layers well conditioned; L2Normalize, the losses and the similarity matrices are float32 and add nothing).
FORWARD_ROUNDINGS, BACKWARD_ROUNDINGS = 13, 12


def _step(policy, weights=None):
    """(loss, gradients, embeddings, d loss / d embeddings, weights) of one training step from ``weights`` (None: seed 1)."""
    images, labels = synthetic_problem(4, 2, 16)
    with global_policy(policy):
        keras.utils.set_random_seed(1)
        embedder = build_embedder("toy_cnn", weights=None, embed_dim=8, input_shape=(16, 16, 3))
        model = LanguageGuidedModel(embedder, language_table=TABLE)
        model.compile(optimizer=keras.optimizers.SGD(0.1), language_weight=2.0)
    if weights is not None:
        model.set_weights(weights)
    with tf.GradientTape(persistent=True) as tape:
        embeddings, _ = model.forward(tf.constant(images), training=True)
        tape.watch(embeddings)
        dml, language, weight = model.loss_terms(embeddings, tf.constant(labels), training=True)
        total = dml + weight * language
    gradients = tape.gradient(total, model.trainable_variables)
    flat = np.concatenate([gradient.numpy().ravel() for gradient in gradients]).astype(np.float64)
    return (
        float(total),
        flat,
        embeddings.numpy().astype(np.float64),
        tape.gradient(total, embeddings).numpy(),
        model.get_weights(),
    )


def test_a_bfloat16_step_matches_float32_within_the_mantissa_bound(mixed_policy):
    loss_32, gradient_32, embeddings_32, loss_gradient, weights = _step("float32")
    loss_16, gradient_16, embeddings_16, _, _ = _step("mixed_bfloat16", weights)
    loss_64, gradient_64, _, _, _ = _step("float64", weights)  # layers in float64 (L2Normalize and losses float32)
    # Embeddings: each forward rounding moves them by <= u relative: ||dE|| <= 13 u ||E|| (13 u = 0.051; 1.5 u seen).
    embedding_error = np.linalg.norm(embeddings_16 - embeddings_32)
    embedding_bound = FORWARD_ROUNDINGS * U_BFLOAT16 * np.linalg.norm(embeddings_32)
    assert 0 < embedding_error <= embedding_bound
    # Loss, computed in float32 from those embeddings: first order |dL| <= ||dL/dE|| ||dE|| (0.076 here, a worst
    # case; 9e-6 seen: the rounding errors of the 8 x 8 similarities mostly cancel).
    loss_bound = np.linalg.norm(loss_gradient) * embedding_bound
    assert abs(loss_16 - loss_32) <= loss_bound
    # Gradients (all variables as one vector): forward and backward roundings, 25 u = 0.098 relative (0.036 seen).
    gradient_bound = (FORWARD_ROUNDINGS + BACKWARD_ROUNDINGS) * U_BFLOAT16
    gradient_error = np.linalg.norm(gradient_16 - gradient_32) / np.linalg.norm(gradient_32)
    assert gradient_error <= gradient_bound
    # Not vacuous: bfloat16 really differs (by more than a tenth of a bfloat16 rounding), while float32 itself is
    # within the same count of float32 roundings of float64 layers (1.3e-6 seen; bound 1.5e-6), 1000x below.
    assert gradient_error > U_BFLOAT16 / 10 and loss_16 != loss_32
    float32_error = np.linalg.norm(gradient_32 - gradient_64) / np.linalg.norm(gradient_64)
    assert float32_error <= 4 * (FORWARD_ROUNDINGS + BACKWARD_ROUNDINGS) * U_FLOAT32 < gradient_bound / 1000
    assert abs(loss_64 - loss_32) <= 4 * FORWARD_ROUNDINGS * U_FLOAT32 * np.linalg.norm(loss_gradient) * np.sqrt(8)


def test_fit_lowers_the_loss_under_bfloat16(mixed_policy):
    images, labels = synthetic_problem(4, 4, 16)
    with global_policy("mixed_bfloat16"):
        keras.utils.set_random_seed(2)
        embedder = build_embedder("toy_cnn", weights=None, embed_dim=8, input_shape=(16, 16, 3))
        model = LanguageGuidedModel(embedder, language_table=TABLE)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), language_weight=1.0)
    history = model.fit(images, labels, batch_size=16, epochs=15, verbose=0, shuffle=False).history
    assert embedder.get_layer("toy_cnn").get_layer("toy_conv1").compute_dtype == "bfloat16"
    assert all(np.isfinite(history["loss"]))
    assert np.mean(history["loss"][-3:]) < 0.8 * np.mean(history["loss"][:3]), history["loss"]
