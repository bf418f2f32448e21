"""LanguageTable: validated and normalised once; its S_lang is the one the loss, the model and the metrics use."""

import collections
import copy
import pickle

import numpy as np
import pytest
import tensorflow as tf
from helpers import synthetic_problem, tiny_embedder, tiny_guided_model, unit_rows

from tf_langdml import keras
from tf_langdml.evaluation import language_similarity
from tf_langdml.language import LanguageTable
from tf_langdml.losses import language_matching_loss
from tf_langdml.models import LanguageGuidedModel

NAMES = ("sparrow", "finch", "truck", "car")


def raw_table(num_rows=4, num_names=3, dim=7, seed=0):
    return np.random.default_rng(seed).normal(size=(num_rows, num_names, dim)).astype(np.float32)


def reference_similarities(array, indices):
    """float64 loop: S[i, j] = (1/K) sum_k cos(L[a, k], L[b, k]) for a = indices[i], b = indices[j]."""
    table = np.asarray(array, np.float64)
    if table.ndim == 2:
        table = table[:, None, :]
    size, num_names = len(indices), table.shape[1]
    result = np.zeros((size, size))
    for i, a in enumerate(indices):
        for j, b in enumerate(indices):
            for k in range(num_names):
                u, v = table[a, k], table[b, k]
                result[i, j] += float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v)) / num_names
    return result


def reference_loss_from_sims(embeddings, labels, language_sims, shift=1.0):
    """docs/loss.md at T = 1, image_to_language, in float64, given the batch's S_lang."""
    embeddings = np.asarray(embeddings, np.float64)
    same = labels[:, None] == labels[None, :]
    a = np.where(same, 1.0 + shift, embeddings @ embeddings.T)
    b = np.where(same, 1.0 + shift, np.asarray(language_sims, np.float64) + shift)
    log_p = a - np.log(np.exp(a).sum(1, keepdims=True))
    log_q = b - np.log(np.exp(b).sum(1, keepdims=True))
    return float((np.exp(log_p) * (log_p - log_q)).sum() / len(labels))


# -- construction: validation and normalisation, once --------------------------------------


def test_validation_errors_name_the_rows():
    table = raw_table()
    table[1, 2, 0] = np.nan
    table[3, 0, 4] = np.inf
    with pytest.raises(ValueError, match=r"NaN or Inf values in row\(s\) \[1, 3\]; recompute"):
        LanguageTable.from_array(table)
    with pytest.raises(ValueError, match=r"NaN or Inf values in row\(s\) \[1, 3\] \('finch', 'car'\)"):
        LanguageTable.from_array(table, names=NAMES)
    zeros = raw_table()
    zeros[2, 1] = 0.0
    with pytest.raises(ValueError, match=r"all-zero embedding\(s\) in row\(s\) \[2\] \('truck'\); a zero vector"):
        LanguageTable.from_array(zeros, names=NAMES)
    many = np.zeros((12, 2), np.float32)
    with pytest.raises(ValueError, match=r"row\(s\) \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] \.\.\."):
        LanguageTable.from_array(many)
    with pytest.raises(
        ValueError, match=r"\(C, D\) for expert labels or \(C, K, D\) for top-k pseudo-labels; got shape \(7,\)"
    ):
        LanguageTable.from_array(raw_table()[0, 0])
    with pytest.raises(ValueError, match=r"language_table is empty \(shape \(0, 1, 4\)\)"):
        LanguageTable.from_array(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="4 rows but 3 names"):
        LanguageTable.from_array(raw_table(), names=NAMES[:3])
    with pytest.raises(TypeError, match="not one string"):
        LanguageTable.from_array(raw_table(), names="sparrow")
    with pytest.raises(TypeError, match="encoder_id must be a string"):
        LanguageTable.from_array(raw_table(), encoder_id=3)


def test_rows_are_normalised_once_at_construction():
    table = raw_table()
    scaled = LanguageTable.from_array(table * 5.0, names=NAMES, encoder_id="minilm")
    plain = LanguageTable(table)  # the constructor is from_array
    assert scaled.shape == (4, 3, 7) and (scaled.num_rows, scaled.k, scaled.dim) == (4, 3, 7)
    assert scaled.rows.dtype == np.float32
    assert scaled.names == NAMES and scaled.encoder_id == "minilm" and plain.names is None
    # Normalised in float64, then rounded once to float32 (<= 2^-24 relative per entry); a float64 norm of
    # 7 such entries is then within ~2^-24 of 1.
    np.testing.assert_allclose(np.linalg.norm(scaled.rows.astype(np.float64), axis=-1), 1.0, rtol=2e-7)
    # float64 unit rows rounded once to float32: within 2^-24 relative of the exact unit rows.
    np.testing.assert_allclose(plain.rows, unit_rows(table), rtol=2**-24)
    # 5 * table rounds each float32 entry (<= 2^-24 relative) before that: <= ~2 x 2^-24 + the norm's 2^-24.
    np.testing.assert_allclose(scaled.rows, plain.rows, rtol=2.5e-7)
    # Scaling by a power of two is exact in float32, so the unit rows are bit-identical.
    np.testing.assert_array_equal(LanguageTable.from_array(table * 4.0).rows, plain.rows)
    expert = LanguageTable.from_array(table[:, 0, :])  # (C, D) -> K = 1
    assert expert.shape == (4, 1, 7)
    assert LanguageTable.coerce(scaled) is scaled
    assert LanguageTable.coerce(table).shape == (4, 3, 7)


def test_the_table_is_immutable():
    source = raw_table()
    table = LanguageTable.from_array(source, names=list(NAMES))
    before = table.rows.copy()
    source[:] = 0.0  # the caller's array is not shared
    np.testing.assert_array_equal(table.rows, before)
    with pytest.raises(ValueError):
        table.rows[0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        table.rows.flags.writeable = True
    with pytest.raises(AttributeError, match="immutable"):
        table.names = ("a", "b", "c", "d")
    with pytest.raises(AttributeError, match="immutable"):
        del table._rows
    assert isinstance(table.names, tuple)
    for clone in (pickle.loads(pickle.dumps(table)), copy.deepcopy(table)):
        np.testing.assert_array_equal(clone.rows, table.rows)
        assert clone.names == table.names and clone.encoder_id == table.encoder_id
    assert "num_rows=4, k=3, dim=7" in repr(table)


# -- similarities ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_names", [1, 3])
def test_similarities_match_a_float64_loop(num_names, run_mode):
    array = raw_table(num_rows=6, num_names=num_names, dim=7, seed=num_names) * 3.0
    table = LanguageTable.from_array(array)
    indices = np.array([5, 0, 2, 2, 4, 1], np.int32)
    value = run_mode(table.similarities)(indices)
    assert isinstance(value, tf.Tensor) and value.dtype == tf.float32 and value.shape == (6, 6)
    # Unit entries rounded to float32 (<= 2^-24 relative, so <= 2 x 2^-24 on each unit dot product) and
    # a float32 sum of K*D products of unit vectors (<= K*D x 2^-24 over the K dots); divided by K.
    tolerance = (num_names * 7 + 2) * 2**-24
    np.testing.assert_allclose(value.numpy(), reference_similarities(array, indices), rtol=0, atol=tolerance)


def test_similarities_work_with_xla_and_in_a_replica():
    table = LanguageTable.from_array(raw_table())
    indices = tf.constant([3, 1, 0], tf.int32)
    eager = table.similarities(indices).numpy()
    compiled = tf.function(lambda rows: table.similarities(rows, check_indices=False), jit_compile=True)(indices)
    strategy = tf.distribute.MirroredStrategy(["CPU:0"])
    replica = strategy.run(tf.function(lambda: table.similarities(indices)))
    # XLA may fuse and reorder the 21-term float32 sums: a few ulps of values <= 1.
    np.testing.assert_allclose(compiled.numpy(), eager, rtol=0, atol=1e-6)
    np.testing.assert_allclose(strategy.experimental_local_results(replica)[0].numpy(), eager, rtol=0, atol=1e-6)


def test_indices_outside_the_table_are_refused(run_mode):
    table = LanguageTable.from_array(raw_table())
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=r"outside the language table.*\[0, 4\)"):
        run_mode(table.similarities)(np.array([0, 4], np.int32))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        table.similarities(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="must be integers"):
        table.similarities(np.zeros(2, np.float32))


def test_callback_and_semantic_helper_use_the_same_similarities():
    array = raw_table(seed=3)
    table = LanguageTable.from_array(array)
    indices = np.array([0, 3, 3, 1])
    expected = table.similarities(indices).numpy()
    np.testing.assert_array_equal(language_similarity(table, indices), expected)
    np.testing.assert_array_equal(language_similarity(array, indices), expected)  # an array goes through from_array


# -- the loss and the model use the prepared rows as they are ---------------------------------


def loss_case(seed=1, batch=8, num_classes=4):
    rng = np.random.default_rng(seed)
    embeddings = unit_rows(rng.normal(size=(batch, 6))).astype(np.float32)
    labels = np.repeat(np.arange(num_classes), batch // num_classes).astype(np.int32)
    return embeddings, labels, raw_table(num_rows=num_classes, seed=seed) * 4.0


def test_loss_with_a_table_equals_the_loss_of_the_normalised_raw_array(run_mode):
    embeddings, labels, array = loss_case()
    loss = run_mode(language_matching_loss)
    prepared = float(loss(embeddings, labels, LanguageTable.from_array(array)))
    raw = float(loss(embeddings, labels, unit_rows(array).astype(np.float32)))
    unnormalised_raw = float(loss(embeddings, labels, array))
    expected = reference_loss_from_sims(embeddings, labels, reference_similarities(array, labels))
    # The KL (~0.02) is a small difference of terms ~ log 8 ~ 2 per row; log_softmax rounds each entry by
    # ~2 x 2^-24 x 2, so float32 paths agree to ~1e-6 absolute, not much better in relative terms.
    assert prepared == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert raw == pytest.approx(prepared, rel=1e-5, abs=1e-6)
    assert unnormalised_raw == pytest.approx(prepared, rel=1e-5, abs=1e-6)  # a raw array is normalised in the call


def test_loss_does_not_renormalise_a_language_table(run_mode):
    embeddings, labels, array = loss_case(seed=2)
    # Bypass from_array: rows of norm ~ 4 * sqrt(7), trusted as they are.
    trusted = LanguageTable._from_unit_rows(array)
    value = float(run_mode(language_matching_loss)(embeddings, labels, trusted))
    raw_sims = np.einsum("ikd,jkd->ij", array[labels].astype(np.float64), array[labels].astype(np.float64)) / 3
    normalised = reference_loss_from_sims(embeddings, labels, reference_similarities(array, labels))
    # The loss of the un-normalised S_lang (entries up to ~100, so the softmax is sharp): float32 rounds those
    # logits by ~100 x 2^-24 = 6e-6, which moves the KL (~10) by ~1e-5 at most.
    assert value == pytest.approx(reference_loss_from_sims(embeddings, labels, raw_sims), rel=1e-5)
    assert abs(value - normalised) > 1.0  # normalising in the loss would land here


def op_types(function, *args):
    return collections.Counter(
        op.type for op in tf.function(function).get_concrete_function(*args).graph.get_operations()
    )


def test_no_normalisation_or_finiteness_check_in_a_step_with_a_language_table():
    embeddings, labels, array = loss_case()
    table = LanguageTable.from_array(array)
    raw_ops = op_types(lambda e, y: language_matching_loss(e, y, array), embeddings, labels)
    table_ops = op_types(lambda e, y: language_matching_loss(e, y, table), embeddings, labels)
    assert raw_ops["Rsqrt"] and raw_ops["IsFinite"]  # the raw path: l2_normalize and the NaN check, per call
    assert not table_ops["Rsqrt"] and not table_ops["IsFinite"]

    # The model's step: the ops it adds to plain DML are the loss's, with no normalisation or check of the table.
    images, image_labels = synthetic_problem(num_classes=4, per_class=2)
    steps = {}
    for name, language_table in (("plain", None), ("language", array * 5.0)):
        model = tiny_guided_model(language_table, optimizer=keras.optimizers.SGD(0.0), language_weight=1.0)
        steps[name] = op_types(lambda x, y: model.compute_losses((x, y), training=True)[0], images, image_labels)  # noqa: B023  (traced at once, in this iteration)
    added = steps["language"] - steps["plain"]
    assert added["MatMul"] and added["LogSoftmax"]  # the language loss is there
    assert not added["Rsqrt"] and not added["IsFinite"] and not added["Square"]


def test_model_uses_the_table_as_given():
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    array = raw_table(seed=5) * 4.0
    keras.utils.set_random_seed(0)
    embedder = tiny_embedder()
    trusted = LanguageTable._from_unit_rows(array)  # not unit: only a re-normalising step would undo it
    model = LanguageGuidedModel(embedder, trusted)
    assert model.language_table is trusted
    model.compile(optimizer=keras.optimizers.SGD(0.0), language_weight=1.0)
    logs = model.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)
    embeddings = model(images, training=False)
    expected = float(language_matching_loss(embeddings, labels, trusted))
    normalised = float(language_matching_loss(embeddings, labels, array))
    # Graph (evaluate) and eager float32 paths of a KL ~10 with logits up to ~100: ~1e-5 relative.
    assert logs["language_loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(logs["language_loss"] - normalised) > 1.0

    # Replacing the table drops the traced step: the next evaluate uses the new one.
    model.set_language_table(array)
    assert isinstance(model.language_table, LanguageTable) and model.language_table is not trusted
    logs = model.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)
    # As above, at a KL ~1e-2: the ~1e-6 absolute floor of two float32 paths.
    assert logs["language_loss"] == pytest.approx(normalised, rel=1e-5, abs=1e-6)
    model.set_language_table(None)
    assert model.language_table is None
    assert model.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)["language_loss"] == 0.0

    config = model.get_config()
    assert set(config) == {"embedder", "table_index", "name"}  # the table is never part of the config
    restored = LanguageGuidedModel.from_config(config)
    assert restored.language_table is None
    restored.set_language_table(trusted)
    assert restored.language_table is trusted
