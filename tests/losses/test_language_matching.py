"""The language-matching loss against docs/loss.md, a numpy loop and a hand-derived case."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from helpers import unit_rows

from tf_langdml import keras
from tf_langdml.losses import LanguageMatchingLoss, language_matching_loss


def reference_loss(embeddings, labels, table, shift, temperature, direction):
    """Independent float64 loop over docs/loss.md ("Step by step"), one matrix entry at a time."""
    table = np.asarray(table, dtype=np.float64)
    if table.ndim == 2:
        table = table[:, None, :]
    table = table / np.linalg.norm(table, axis=-1, keepdims=True)
    embeddings = np.asarray(embeddings, dtype=np.float64)
    batch, num_names = len(labels), table.shape[1]
    total = 0.0
    for i in range(batch):
        image_row, language_row = [], []
        for j in range(batch):
            if labels[i] == labels[j]:
                image_row.append(1.0 + shift)
                language_row.append(1.0 + shift)
            else:
                image_sim = sum(embeddings[i, d] * embeddings[j, d] for d in range(embeddings.shape[1]))
                language_sim = (
                    sum(float(np.dot(table[labels[i], k], table[labels[j], k])) for k in range(num_names)) / num_names
                )
                image_row.append(image_sim)
                language_row.append(language_sim + shift)
        p = [math.exp(a / temperature) for a in image_row]
        q = [math.exp(b / temperature) for b in language_row]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        if direction == "image_to_language":
            total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        else:
            total += sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q))
    return temperature**2 * total / batch


def random_case(seed, num_names, batch=12, num_classes=5, dim=8, language_dim=6):
    rng = np.random.default_rng(seed)
    embeddings = unit_rows(rng.normal(size=(batch, dim))).astype("float32")
    labels = rng.integers(0, num_classes, size=batch).astype("int32")
    shape = (num_classes, language_dim) if num_names == 1 else (num_classes, num_names, language_dim)
    table = rng.normal(size=shape).astype("float32") * 3.0  # not normalised on purpose
    return embeddings, labels, table


@pytest.mark.parametrize("num_names", [1, 5])
@pytest.mark.parametrize("direction", ["image_to_language", "language_to_image"])
@pytest.mark.parametrize("shift,temperature", [(1.0, 1.0), (0.0, 0.5), (2.5, 2.0), (0.3, 0.25)])
def test_matches_reference_loop(num_names, direction, shift, temperature, run_mode):
    embeddings, labels, table = random_case(seed=num_names + int(10 * shift), num_names=num_names)
    loss_fn = run_mode(
        lambda e, y, t: language_matching_loss(e, y, t, shift=shift, temperature=temperature, direction=direction)
    )
    value = float(loss_fn(embeddings, labels, table))
    expected = reference_loss(embeddings, labels, table, shift, temperature, direction)
    assert expected > 0
    # float32 TF vs a float64 loop. The KL is a small difference: sum p (|log p| + |log q|) is up to
    # kappa ~ 70x the loss in these 16 cases (T = 0.5, K = 5), and log_softmax rounds each entry by
    # ~2 x 2^-24 x |log p|: relative error <= ~2 kappa 2^-24 ~ 8e-6 (6.6e-7 seen).
    assert value == pytest.approx(expected, rel=1e-5)


def test_hand_derived_three_samples():
    # e1 = e3 = (1, 0), e2 = (0, 1); all labels differ; language: L0 = L1 = (1, 0), L2 = (0, 1).
    # γ = 1, T = 1.  A = [[2,0,1],[0,2,0],[1,0,2]],  Bm = [[2,2,1],[2,2,1],[1,1,2]].
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype="float32")
    labels = np.array([0, 1, 2])
    table = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype="float32")
    e = math.e

    def kl(p_logits, q_logits):
        p = [math.exp(v) / sum(math.exp(w) for w in p_logits) for v in p_logits]
        q = [math.exp(v) / sum(math.exp(w) for w in q_logits) for v in q_logits]
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    # Row 1: P ∝ (e², 1, e), Q ∝ (e², e², e) -> KL = Σ p log p/q written out:
    z_p1, z_q1 = e**2 + 1 + e, 2 * e**2 + e
    row1 = (
        (e**2 / z_p1) * math.log(z_q1 / z_p1)
        + (1 / z_p1) * math.log(z_q1 / (z_p1 * e**2))
        + (e / z_p1) * math.log(z_q1 / z_p1)
    )
    assert row1 == pytest.approx(kl([2, 0, 1], [2, 2, 1]), rel=1e-12)  # float64 on both sides
    expected = (row1 + kl([0, 2, 0], [2, 2, 1]) + kl([1, 0, 2], [1, 1, 2])) / 3
    assert expected == pytest.approx(0.21035499, rel=1e-7)  # the literal has 8 significant digits
    # Exact inputs (logits 0, 1, 2); only float32 exp / log round: sum p (|log p| + |log q|) = 1.76,
    # kappa = 8.4x the loss, so ~2 kappa 2^-24 = 1e-6, with nothing to average over 3 rows (2.4e-7
    # seen, 0.5 kappa 2^-24): 2e-6.
    assert float(language_matching_loss(embeddings, labels, table)) == pytest.approx(expected, rel=2e-6)


def test_zero_when_images_reproduce_language_geometry():
    rng = np.random.default_rng(3)
    table = unit_rows(rng.normal(size=(4, 8))).astype("float32")
    labels = np.array([0, 1, 2, 3, 0, 2])
    embeddings = table[labels]
    # P = Q up to float32 rounding: the float32 KL is the rounding of sum p (log p - log q), terms of
    # size ~log 6 ~ 1.8: <= ~2 x 2^-24 x 3.6 ~ 4e-7 absolute (1.2e-8 seen).
    assert float(language_matching_loss(embeddings, labels, table, shift=0.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(language_matching_loss(embeddings, labels, table, shift=1.0)) > 1e-3


@pytest.mark.parametrize("direction", ["image_to_language", "language_to_image"])
def test_gradient_matches_finite_differences(direction):
    embeddings, labels, table = random_case(seed=7, num_names=5, batch=6, dim=4)
    kwargs = dict(shift=1.0, temperature=0.5, direction=direction)
    variable = tf.Variable(embeddings)
    with tf.GradientTape() as tape:
        loss = language_matching_loss(variable, labels, table, **kwargs)
    gradient = tape.gradient(loss, variable).numpy()

    step = 1e-5
    numeric = np.zeros_like(embeddings, dtype=np.float64)
    base = embeddings.astype(np.float64)
    for index in np.ndindex(*base.shape):
        plus, minus = base.copy(), base.copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (
            reference_loss(plus, labels, table, **kwargs) - reference_loss(minus, labels, table, **kwargs)
        ) / (2 * step)
    assert np.abs(numeric).max() > 1e-3
    # Central differences in float64 are exact to ~1e-10 here (steps 1e-5 and 1e-4 agree to 4e-11).
    # The float32 gradient: ~2^-24 |log p| per entry of dL/dlogits (~p T / B <= 0.1), summed over
    # 2 x 6 pairs, plus float32 sims off by ~4 ulps through the Hessian: <= ~2e-7 absolute
    # (5e-9 seen, also with the inputs perturbed by 1-2 ulps), against entries of 2e-4 .. 2e-2.
    np.testing.assert_allclose(gradient, numeric, rtol=0, atol=5e-7)


def test_eager_and_tf_function_agree():
    embeddings, labels, table = random_case(seed=11, num_names=5)
    eager = language_matching_loss(embeddings, labels, table)
    graph = tf.function(language_matching_loss)(embeddings, labels, table)
    assert eager.dtype == tf.float32 and eager.shape == ()
    # Two float32 paths (grappler rewrites the graph): kappa = 32 here, ~2 kappa 2^-24 per path,
    # so up to ~8e-6 relative between them (2.3e-7 seen).
    assert float(eager) == pytest.approx(float(graph), rel=1e-5)


def test_no_gradient_reaches_the_table():
    embeddings, labels, table = random_case(seed=2, num_names=5)
    table = tf.Variable(table)
    embeddings = tf.Variable(embeddings)
    with tf.GradientTape() as tape:
        loss = language_matching_loss(embeddings, labels, table)
    table_gradient, embedding_gradient = tape.gradient(loss, [table, embeddings])
    assert table_gradient is None
    assert float(tf.reduce_max(tf.abs(embedding_gradient))) > 0


def test_sample_level_table_indices():
    rng = np.random.default_rng(5)
    embeddings = unit_rows(rng.normal(size=(6, 4))).astype("float32")
    labels = np.array([0, 0, 1, 1, 2, 2])
    sample_table = rng.normal(size=(10, 3, 5)).astype("float32")
    sample_ids = np.array([9, 3, 4, 0, 7, 1])
    value = language_matching_loss(embeddings, labels, sample_table, table_indices=sample_ids)
    # Same as a class table whose rows are the selected samples, with "classes" 0..5
    # for the language side only: check via the reference on a re-indexed table.
    reindexed = sample_table[sample_ids]

    def reference_by_position():
        table = reindexed / np.linalg.norm(reindexed, axis=-1, keepdims=True)
        language = np.einsum("ikd,jkd->ij", table, table) / 3
        image = embeddings.astype(np.float64) @ embeddings.T
        same = labels[:, None] == labels[None, :]
        a = np.where(same, 2.0, image)
        b = np.where(same, 2.0, language + 1.0)
        log_p = a - np.log(np.exp(a).sum(1, keepdims=True))
        log_q = b - np.log(np.exp(b).sum(1, keepdims=True))
        return float((np.exp(log_p) * (log_p - log_q)).sum() / 6)

    # The reference is float64 for the images but float32 for the language sims; kappa = 26 here:
    # ~2 kappa 2^-24 = 3e-6 per side (4e-7 seen).
    assert float(value) == pytest.approx(reference_by_position(), rel=1e-5)


def test_bad_inputs_raise_clear_errors(run_mode):
    embeddings, labels, table = random_case(seed=1, num_names=1, num_classes=5)
    loss_fn = run_mode(language_matching_loss)
    with pytest.raises(ValueError, match="embeddings must be 2-D"):
        loss_fn(embeddings[None], labels, table)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="same length"):
        loss_fn(embeddings, labels[:-1], table)
    bad_labels = labels.copy()
    bad_labels[0] = 5
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="outside the language table"):
        loss_fn(embeddings, bad_labels, table)
    nan_table = table.copy()
    nan_table[labels[0], 0] = np.nan
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="NaN or Inf"):
        loss_fn(embeddings, labels, nan_table)
    with pytest.raises(ValueError, match="Unknown direction 'forward'"):
        language_matching_loss(embeddings, labels, table, direction="forward")
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        language_matching_loss(embeddings, labels, table, temperature=0.0)
    with pytest.raises(ValueError, match=r"\(C, D\) for expert labels"):
        language_matching_loss(embeddings, labels, table[0])


def test_loss_class_round_trips_through_json():
    loss = LanguageMatchingLoss(shift=0.5, temperature=2.0, direction="language_to_image")
    config = json.loads(json.dumps(loss.get_config()))
    restored = LanguageMatchingLoss.from_config(config)
    assert restored.get_config() == loss.get_config()
    serialized = json.loads(json.dumps(keras.utils.serialize_keras_object(loss)))
    deserialized = keras.utils.deserialize_keras_object(serialized)
    assert isinstance(deserialized, LanguageMatchingLoss)
    embeddings, labels, table = random_case(seed=4, num_names=5)
    expected = reference_loss(embeddings, labels, table, 0.5, 2.0, "language_to_image")
    # float32 vs float64 at T = 2: logits within 0.75 of each other, so P ~ Q ~ uniform and the KL
    # (0.05) is kappa ~ 400x smaller than sum q (|log q| + |log p|): <= ~2 kappa 2^-24 ~ 5e-5 (4e-6 seen).
    assert float(deserialized(embeddings, labels, table)) == pytest.approx(expected, rel=5e-5)
    assert float(loss(embeddings, labels, table)) == pytest.approx(expected, rel=5e-5)


def test_with_a_shift_the_loss_pulls_other_class_images_together():
    """docs/loss.md, "What the shift does": with γ > 0 the image side's target for a pair of
    different classes is S_lang + γ, above 1 when S_lang > 1 - γ, so descending L_match raises
    every such image similarity; with γ = 0 the language geometry itself is the optimum."""
    rng = np.random.default_rng(5)
    common = rng.normal(size=16)
    table = unit_rows(common + 0.9 * rng.normal(size=(6, 16))).astype("float32")  # S_lang ~ 0.5 > 0
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])
    start = tf.constant(table[labels])  # images that reproduce the language geometry exactly
    other = ~np.equal.outer(labels, labels)

    def step(shift, learning_rate=0.05):
        with tf.GradientTape() as tape:
            tape.watch(start)
            loss = language_matching_loss(start, labels, table, shift=shift)
        gradient = tape.gradient(loss, start)
        moved = tf.math.l2_normalize(start - learning_rate * gradient, axis=1).numpy()
        return float(tf.norm(gradient)), (moved @ moved.T)[other]

    before = (table[labels] @ table[labels].T)[other]
    assert before.min() > 0.05  # every other-class language similarity is positive here
    norm, after = step(1.0)
    assert norm > 1e-3 and after.mean() > before.mean() + 1e-3
    assert (after > before - 1e-6).mean() > 0.9  # nearly every pair moves together, not only on average
    norm_zero, after_zero = step(0.0)
    assert norm_zero < 1e-5 and np.abs(after_zero - before).max() < 1e-5
