"""S2SD (tf_langdml/losses/s2sd.py) against float64 numpy references of its module docstring.

The target DML loss (multi-similarity) is TF-Similarity's, checked against its own reference
in test_dml.py; here its values come from ``dml_loss_value`` on the embeddings that the
numpy reference computes (base embedding, and each head's from the head weights), and the
rest of S2SD (heads, distillation, feature distillation, their weights and the gate) is
numpy.

Tolerance: float32 vs float64. The KL terms are sums of p (log p − log q) over rows with
|log p| <= ~3 here: a rounding of ~2^-24 per log-softmax entry changes them by ~1e-7
relative to their size; the heads' outputs (two small Dense layers) are off by ~1e-7
relative. ``rel=1e-5`` leaves a wide margin.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from helpers import unit_rows

from tf_langdml.errors import ArgumentError
from tf_langdml.losses import S2SDLoss, build_dml_loss, similarity_distillation
from tf_langdml.losses.base import dml_loss_value

LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4], np.int32)  # uneven, 2 and 4 singletons
NUM_CLASSES, EMBED_DIM, FEATURE_DIM = 6, 6, 5
SETTINGS = dict(dims=[8, 12], distill_weight=0.7, feature_weight=2.0, feature_delay=5, temperature=2.0)


def log_softmax(x):
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def reference_distillation(student, teacher, temperature):
    """KLd(A, B) = (T² / B) Σ_i Σ_j softmax(B/T)_ij (log softmax(B/T)_ij − log softmax(A/T)_ij)."""
    student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    log_p, log_q = log_softmax(teacher / temperature), log_softmax(student / temperature)
    total = 0.0
    for i in range(len(teacher)):
        for j in range(teacher.shape[1]):
            total += np.exp(log_p[i, j]) * (log_p[i, j] - log_q[i, j])
    return temperature**2 / len(teacher) * total


def s2sd_case(seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(LABELS).astype(np.int32)
    centers = rng.normal(size=(NUM_CLASSES, EMBED_DIM))
    embeddings = unit_rows(centers[labels] + 0.9 * rng.normal(size=(len(labels), EMBED_DIM))).astype(np.float32)
    features = (rng.normal(size=(len(labels), FEATURE_DIM)) + 0.5 * labels[:, None]).astype(np.float32)
    return embeddings, labels, features


def set_up_loss(seed=0, **settings):
    """An S2SDLoss set up for the case, its heads given random biases (Keras initialises them to 0)."""
    loss = build_dml_loss("s2sd", **{**SETTINGS, **settings})
    loss.setup(NUM_CLASSES, EMBED_DIM, FEATURE_DIM)
    rng = np.random.default_rng(50 + seed)
    for head in loss.heads:
        w1, b1, w2, b2 = head.get_weights()
        head.set_weights([w1, rng.normal(scale=0.3, size=b1.shape), w2, rng.normal(scale=0.3, size=b2.shape)])
    return loss


def reference_heads(loss, features):
    """h_i = normalise(W2ᵀ relu(W1ᵀ f + b1) + b2) in float64, from the heads' weights."""
    heads = []
    for head in loss.heads:
        w1, b1, w2, b2 = [np.asarray(w, np.float64) for w in head.get_weights()]
        heads.append(unit_rows(np.maximum(features.astype(np.float64) @ w1 + b1, 0.0) @ w2 + b2))
    return heads


def multisimilarity(labels, x):
    """The target loss on ``x``: TF-Similarity's multi-similarity, tested in test_dml.py."""
    return float(dml_loss_value(build_dml_loss("multisimilarity"), labels, tf.constant(x, tf.float32)))


def reference_parts(loss, labels, embeddings, features, temperature=2.0):
    """The terms of S2SD: ½(L(e) + mean_i L(h_i)), mean_i KLd(eeᵀ, h_i h_iᵀ) and KLd(eeᵀ, f̂f̂ᵀ)."""
    e = np.asarray(embeddings, np.float64)
    heads = reference_heads(loss, features)
    dml = 0.5 * (multisimilarity(labels, e) + np.mean([multisimilarity(labels, h) for h in heads]))
    distillation = np.mean([reference_distillation(e @ e.T, h @ h.T, temperature) for h in heads])
    f = unit_rows(features)
    return dml, distillation, reference_distillation(e @ e.T, f @ f.T, temperature)


def reference_s2sd(parts, step, distill_weight=0.7, feature_weight=2.0, feature_delay=5):
    """L = ½(L(e) + mean_i L(h_i)) + w · mean_i KLd(eeᵀ, h_i h_iᵀ) + [step ≥ delay] · w_feat · KLd(eeᵀ, f̂f̂ᵀ)."""
    dml, distillation, feature_distillation = parts
    gate = 1.0 if step >= feature_delay else 0.0
    return dml + distill_weight * distillation + gate * feature_weight * feature_distillation


# --- the distillation term -------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_similarity_distillation_matches_reference(temperature, run_mode):
    rng = np.random.default_rng(int(10 * temperature))
    student = rng.normal(size=(7, 7)).astype(np.float32)
    teacher = (2 * rng.normal(size=(7, 7))).astype(np.float32)
    value = float(run_mode(lambda a, b: similarity_distillation(a, b, temperature))(student, teacher))
    expected = reference_distillation(student, teacher, temperature)
    assert expected > 0.05
    assert value == pytest.approx(expected, rel=1e-5)
    assert float(similarity_distillation(teacher, teacher, temperature)) == pytest.approx(0.0, abs=1e-6)


def test_similarity_distillation_gradient_reaches_the_student_only():
    rng = np.random.default_rng(3)
    student_value = rng.normal(size=(6, 6)).astype(np.float32)
    teacher_value = rng.normal(size=(6, 6)).astype(np.float32)
    student, teacher = tf.Variable(student_value), tf.Variable(teacher_value)
    with tf.GradientTape() as tape:
        value = similarity_distillation(student, teacher, 2.0)
    student_gradient, teacher_gradient = tape.gradient(value, [student, teacher])
    assert teacher_gradient is None  # the teacher is held constant (stop-gradient)
    eps = 1e-6
    numeric = np.zeros((6, 6))
    for index in np.ndindex(6, 6):
        plus, minus = student_value.astype(np.float64), student_value.astype(np.float64)
        plus[index] += eps
        minus[index] -= eps
        numeric[index] = (
            reference_distillation(plus, teacher_value, 2.0) - reference_distillation(minus, teacher_value, 2.0)
        ) / (2 * eps)
    assert np.abs(numeric).max() > 1e-2
    np.testing.assert_allclose(student_gradient.numpy(), numeric, rtol=1e-4, atol=1e-5 * np.abs(numeric).max())


# --- the full loss ---------------------------------------------------------------------------------------------


def test_s2sd_loss_matches_reference_before_and_after_the_feature_delay(run_mode):
    embeddings, labels, features = s2sd_case()
    loss = set_up_loss()
    call = run_mode(lambda y, e, f, s: loss(y, e, features=f, step=s))
    values = {step: float(call(labels, embeddings, features, tf.constant(step, tf.int64))) for step in (0, 4, 5, 9)}
    parts = reference_parts(loss, labels, embeddings, features)
    assert min(parts) > 1e-2  # every term counts
    for step, value in values.items():
        assert value == pytest.approx(reference_s2sd(parts, step), rel=1e-5), step
    # the feature distillation switches on at step 5 (= feature_delay): the only change between the steps
    # (multi-similarity draws nothing at random)
    feature_term = 2.0 * parts[2]
    assert values[0] == pytest.approx(values[4], rel=1e-6)
    assert values[5] == pytest.approx(values[9], rel=1e-6)
    assert values[5] - values[4] == pytest.approx(feature_term, rel=1e-4)


@pytest.mark.parametrize("settings", [{"distill_weight": 0.0, "feature_weight": 0.0}, {"temperature": 0.5}])
def test_s2sd_loss_other_weights_match_reference(settings):
    embeddings, labels, features = s2sd_case(seed=1)
    loss = set_up_loss(seed=1, **settings)
    value = float(loss(labels, embeddings, features=features, step=6))
    arguments = {**SETTINGS, **settings}
    parts = reference_parts(loss, labels, embeddings, features, arguments["temperature"])
    expected = reference_s2sd(parts, 6, arguments["distill_weight"], arguments["feature_weight"])
    assert value == pytest.approx(expected, rel=1e-5)


def test_s2sd_gradients():
    """The distillation terms reach the base embedding only: the heads and the features get the gradients of the
    target losses alone (both teachers are held constant), and the base embedding's extra gradient is that of
    w · mean KLd + w_feat · KLd."""
    embeddings, labels, features = s2sd_case(seed=2)
    full = set_up_loss(seed=2)
    plain = set_up_loss(seed=2, distill_weight=0.0, feature_weight=0.0)
    plain.set_weights(full.get_weights())

    def gradients(loss, step):
        e, f = tf.Variable(embeddings), tf.Variable(features)
        head_variables = [v for head in loss.heads for v in head.trainable_variables]
        with tf.GradientTape() as tape:
            value = loss(labels, e, features=f, step=step)
        return [g.numpy() for g in tape.gradient(value, [e, f, *head_variables])]

    full_gradients, plain_gradients = gradients(full, 7), gradients(plain, 7)
    assert len(full_gradients) == 2 + 4 * 2
    for full_gradient, plain_gradient in zip(full_gradients[1:], plain_gradients[1:]):
        assert np.abs(plain_gradient).max() > 0
        np.testing.assert_allclose(full_gradient, plain_gradient, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gradients(full, 3)[1], full_gradients[1], rtol=1e-5, atol=1e-7)  # gate off or on

    heads = reference_heads(full, features)
    f = unit_rows(features)

    def distillation_terms(e):
        similarities = e @ e.T
        return 0.7 * np.mean(
            [reference_distillation(similarities, h @ h.T, 2.0) for h in heads]
        ) + 2.0 * reference_distillation(similarities, f @ f.T, 2.0)

    eps = 1e-6
    numeric = np.zeros(embeddings.shape)
    for index in np.ndindex(embeddings.shape):
        plus, minus = embeddings.astype(np.float64), embeddings.astype(np.float64)
        plus[index] += eps
        minus[index] -= eps
        numeric[index] = (distillation_terms(plus) - distillation_terms(minus)) / (2 * eps)
    assert np.abs(numeric).max() > 1e-2
    np.testing.assert_allclose(
        full_gradients[0] - plain_gradients[0], numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max()
    )


@pytest.mark.parametrize("pooling", ["avg+max", "avg", "max"])
def test_pool_features(pooling, run_mode):
    maps = np.random.default_rng(4).normal(size=(3, 4, 5, FEATURE_DIM)).astype(np.float32)
    loss = build_dml_loss("s2sd", dims=[4], feature_pooling=pooling)
    pooled = run_mode(loss.pool_features)(maps).numpy()
    average, maximum = maps.astype(np.float64).mean(axis=(1, 2)), maps.astype(np.float64).max(axis=(1, 2))
    expected = {"avg+max": average + maximum, "avg": average, "max": maximum}[pooling]
    assert pooled.shape == (3, FEATURE_DIM)
    np.testing.assert_allclose(pooled, expected, rtol=1e-6, atol=1e-6)


def test_target_losses_get_their_own_seeds_and_variables():
    loss = build_dml_loss("s2sd", target="margin", dims=[4, 6], seed=3)
    assert [loss.base_loss.seed, *(head.seed for head in loss.head_losses)] == [3, 4, 5]
    assert loss.needs_classes
    with pytest.raises(ValueError, match="needs num_classes >= 2"):
        loss.setup(None, EMBED_DIM, FEATURE_DIM)
    loss.setup(NUM_CLASSES, EMBED_DIM, FEATURE_DIM)
    assert [tuple(loss.beta.shape) for loss in [loss.base_loss, *loss.head_losses]] == [(NUM_CLASSES,)] * 3
    assert not build_dml_loss("s2sd", dims=[4]).needs_classes  # multi-similarity has no class variables


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments,message",
    [
        ({"target": "s2sd"}, r"S2SD's target loss cannot be 's2sd' itself"),
        ({"target": "S2SD"}, r"S2SD's target loss cannot be 's2sd' itself"),
        ({"target": "multisimilarty"}, r"Unknown DML loss 'multisimilarty'; known losses"),
        ({"dims": []}, r"dims must be a non-empty list of positive head sizes .*got \[\]"),
        ({"dims": [8, 0]}, r"dims must be a non-empty list of positive head sizes .*got \[8, 0\]"),
        ({"dims": -4}, r"dims must be a non-empty list of positive head sizes .*got \[-4\]"),
        ({"feature_pooling": "sum"}, r"Unknown feature_pooling 'sum'; expected one of \['avg\+max', 'avg', 'max'\]"),
        ({"feature_delay": -1}, r"feature_delay must be a whole number of steps >= 0, got -1"),
        ({"feature_delay": 2.5}, r"feature_delay must be a whole number of steps >= 0, got 2.5"),
        ({"distill_weight": -0.1}, r"^distill_weight must be a finite number >= 0"),
        ({"feature_weight": -1.0}, r"^feature_weight must be a finite number >= 0"),
        ({"temperature": 0.0}, r"^temperature must be a finite number > 0"),
    ],
)
def test_bad_arguments_are_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        build_dml_loss("s2sd", **{"dims": [4], **arguments})


def test_setup_and_call_errors():
    embeddings, labels, features = s2sd_case()
    loss = build_dml_loss("s2sd", dims=[4])
    with pytest.raises(RuntimeError, match=r"call loss\.setup\(num_classes, embed_dim\) first"):
        loss(labels, embeddings, features=features)
    with pytest.raises(ValueError, match="S2SD needs the backbone's feature size"):
        loss.setup(NUM_CLASSES, EMBED_DIM)
    loss.setup(NUM_CLASSES, EMBED_DIM, FEATURE_DIM)
    with pytest.raises(ValueError, match=r"S2SD needs the backbone's pooled features"):
        loss(labels, embeddings)
    assert np.isfinite(float(loss(labels, embeddings, features=features)))


# --- the loss takes its target losses built (the registry builds them by name) -----------------------------------


def test_s2sd_takes_built_target_losses_and_keeps_them_through_its_config():
    targets = [build_dml_loss("margin", seed=index) for index in range(3)]
    loss = S2SDLoss(targets, dims=[4, 6], seed=3)
    assert loss.base_loss is targets[0] and list(loss.head_losses) == targets[1:]
    config = json.loads(json.dumps(loss.get_config()))
    restored = S2SDLoss.from_config(config)
    assert restored.get_config() == config
    assert [type(target).__name__ for target in [restored.base_loss, *restored.head_losses]] == ["MarginLoss"] * 3
    assert [target.seed for target in [restored.base_loss, *restored.head_losses]] == [0, 1, 2]
    # TF-Similarity's losses too (their distance is kept by name: their from_config refuses its object config)
    restored = S2SDLoss.from_config(json.loads(json.dumps(build_dml_loss("s2sd", dims=[4]).get_config())))
    assert (
        type(restored.base_loss).__name__ == "MultiSimilarityLoss" and restored.base_loss.get_config()["beta"] == 40.0
    )


@pytest.mark.parametrize(
    "targets,dims,argument,message",
    [
        (
            1,
            [4, 6],
            "target_losses",
            r"S2SD needs 3 target losses \(one for the embedding, one per head of dims=\[4, 6\]\), got 1",
        ),
        ("s2sd", [4], "target_losses", r"S2SD's target loss cannot be 's2sd' itself"),
        (2, [], "dims", r"dims must be a non-empty list of positive head sizes"),
    ],
)
def test_s2sd_refuses_a_wrong_number_or_kind_of_target_losses(targets, dims, argument, message):
    if targets == "s2sd":
        targets = [build_dml_loss("multisimilarity"), build_dml_loss("s2sd", dims=[4])]
    else:
        targets = [build_dml_loss("multisimilarity") for _ in range(targets)]
    with pytest.raises(ArgumentError, match=message) as info:
        S2SDLoss(targets, dims=dims)
    assert info.value.argument == argument
