"""Mixed precision and XLA: the losses stay float32 and agree with the float32, non-XLA step."""

import numpy as np
import pytest

from tf_langdml import keras
from tf_langdml.runs import builders
from tf_langdml.runs.schema import load_config
from tf_langdml.models import LanguageGuidedModel, build_embedder

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
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


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
    config = load_config(None, ["training.mixed_precision=true", "training.jit_compile=true", "model.backbone=toy_cnn",
                                "model.weights=null", "data.image_size=32", "language.guidance=elg",
                                "loss.language_weight=1"])
    model = builders.guided_model(config.model, config.data.image_size, config.loss, config.optimizer, config.training,
                                  TABLE)
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    assert model._jit_compile is True
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after building
