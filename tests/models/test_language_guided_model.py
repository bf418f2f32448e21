"""LanguageGuidedModel: the training step, the delay gate, tables, weight decay, errors."""

import json

import numpy as np
import pytest
import tensorflow as tf
from helpers import synthetic_problem, tiny_guided_model, unit_rows

from tf_langdml import keras
from tf_langdml.errors import ArgumentError
from tf_langdml.language import LanguageTable
from tf_langdml.losses import build_dml_loss, language_matching_loss
from tf_langdml.models import LanguageGuidedModel, compile_arguments


def language_table_for(num_classes, num_names=1, seed=0):
    rng = np.random.default_rng(seed)
    shape = (num_classes, 12) if num_names == 1 else (num_classes, num_names, 12)
    return rng.normal(size=shape).astype("float32")


def dataset(images, labels, batch_size, *extra):
    return tf.data.Dataset.from_tensor_slices((images, labels, *extra)).batch(batch_size)


@pytest.mark.parametrize("run_eagerly", [False, True])
def test_delay_gate_switches_on_at_the_right_step(run_eagerly):
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    model = tiny_guided_model(language_table_for(4), optimizer=None)
    weight, delay = 3.0, 2
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        language_weight=weight,
        language_delay=delay,
        run_eagerly=run_eagerly,
    )
    # One step per epoch, so each epoch's logs are exactly one step's values.
    history = model.fit(dataset(images, labels, 8).repeat(), steps_per_epoch=1, epochs=5, verbose=0).history
    for step in range(5):
        gate = 1.0 if step >= delay else 0.0
        assert history["language_loss"][step] > 0
        expected = history["dml_loss"][step] + weight * gate * history["language_loss"][step]
        # The float32 step rounds dml + w * gate * language twice (all terms >= 0, no cancellation):
        # <= 2 x 2^-24 = 1.2e-7 relative; 1e-6 leaves room and still catches a wrong gate.
        assert history["loss"][step] == pytest.approx(expected, rel=1e-6), step
    assert int(model.optimizer.iterations) == 5


def test_losses_match_the_loss_functions_on_one_batch():
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    table = language_table_for(4, num_names=5)
    model = tiny_guided_model(table, optimizer=None)
    model.compile(optimizer=keras.optimizers.SGD(0.0), language_weight=2.0)
    logs = model.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)
    embeddings = model(images, training=False)
    dml = float(build_dml_loss("multisimilarity")(labels, embeddings))
    language = float(language_matching_loss(embeddings, labels, table))
    # evaluate (graph) and these eager calls are two float32 paths. Multi-similarity: no cancellation;
    # sims of 8-d unit vectors are off by <= ~8 ulps and each enters with a weight <= 1: ~2e-6 of 0.7.
    assert logs["dml_loss"] == pytest.approx(dml, rel=1e-5)
    # The KL (2.2e-3 here) is a small difference: sum p (|log p| + |log q|) ~ 2 log 8 ~ 4 per row,
    # ~1800x the loss. log_softmax rounds each entry by ~2 x 2^-24 x |log p|, i.e. ~5e-7 absolute per
    # path and ~1e-6 for two paths, whatever the loss value: an absolute floor, not rel alone.
    assert logs["language_loss"] == pytest.approx(language, rel=1e-5, abs=1e-6)
    # ~0.7 total: the two errors above stay below 1e-5 relative.
    assert logs["loss"] == pytest.approx(dml + 2.0 * language, rel=1e-5)


@pytest.mark.parametrize("with_language", [False, True])
def test_fit_lowers_the_loss(with_language):
    images, labels = synthetic_problem(num_classes=6, per_class=4)
    model = tiny_guided_model(language_table_for(6) if with_language else None, embed_dim=16, optimizer=None)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), language_weight=1.0 if with_language else 0.0)
    data = dataset(images, labels, 24).shuffle(24, seed=0).cache()
    before = model.evaluate(data, verbose=0, return_dict=True)
    model.fit(data, epochs=30, verbose=0)
    after = model.evaluate(data, verbose=0, return_dict=True)
    assert after["loss"] < 0.7 * before["loss"]
    if with_language:
        assert after["language_loss"] < before["language_loss"]
    else:
        assert before["language_loss"] == after["language_loss"] == 0.0


def test_sample_level_table_is_indexed_by_sample_ids():
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    sample_ids = np.arange(8, dtype="int32")[::-1].copy()
    table = language_table_for(8, num_names=3)
    model = tiny_guided_model(table, optimizer=None, model_arguments={"table_index": "sample_id"})
    model.compile(optimizer=keras.optimizers.SGD(0.0), language_weight=1.0)
    logs = model.evaluate(dataset(images, labels, 8, sample_ids), verbose=0, return_dict=True)
    embeddings = model(images, training=False)
    expected = float(language_matching_loss(embeddings, labels, table, table_indices=sample_ids))
    # Same cancellation as above (KL ~9e-3, cross-entropy terms ~4 per row): ~1e-6 absolute floor.
    assert logs["language_loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    model.fit(dataset(images, labels, 8, sample_ids), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"needs batches of \(images, labels, sample_ids\)"):
        model.fit(dataset(images, labels, 8), epochs=1, verbose=0)


def test_weight_zero_and_no_table_are_the_plain_baseline():
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    results = []
    for table in (None, language_table_for(4)):
        model = tiny_guided_model(table, seed=3, optimizer=None)
        model.compile(optimizer=keras.optimizers.SGD(0.05), language_weight=0.0)
        history = model.fit(dataset(images, labels, 8), epochs=3, verbose=0).history
        results.append((history, [w.numpy() for w in model.embedder.weights]))
    (plain, plain_weights), (zero_weight, zero_weights) = results
    # In IEEE arithmetic dml + 0 * language == dml and g + 0 * g' == g, so both runs are bit-identical on
    # one machine (they are here); the tolerances (~8 ulps of the loss, 1e-5 / 1e-7 on the weights)
    # only allow grappler to fuse the two graphs differently.
    np.testing.assert_allclose(plain["loss"], zero_weight["loss"], rtol=1e-6)
    np.testing.assert_allclose(zero_weight["loss"], zero_weight["dml_loss"], rtol=1e-6)
    for a, b in zip(plain_weights, zero_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_table_is_a_normalised_constant_not_a_weight():
    table = language_table_for(4, num_names=2) * 7
    model = tiny_guided_model(table, optimizer=None)
    assert isinstance(model.language_table, LanguageTable)
    assert isinstance(model.language_table.tensor, tf.Tensor) and not isinstance(
        model.language_table.tensor, tf.Variable
    )
    # float32 normalisation then a float32 norm of 12 terms: each <= ~(12/2 + 1) ulps, < 1e-6 together.
    np.testing.assert_allclose(np.linalg.norm(model.language_table.rows, axis=-1), 1.0, rtol=1e-6)
    assert model.language_table.shape == (4, 2, 12)
    model.compile(language_weight=1.0)
    model(np.zeros((1, 16, 16, 3), "float32"))
    assert all(variable.shape != (4, 2, 12) for variable in model.weights)


def test_coupled_weight_decay_adds_decay_times_weight_to_the_gradient():
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    learning_rate, decay = 0.1, 4e-4
    updated = []
    for weight_decay in (0.0, decay):
        model = tiny_guided_model(seed=5, optimizer=None)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate), weight_decay=weight_decay)
        initial = [v.numpy().copy() for v in model.trainable_variables]
        model.fit(dataset(images, labels, 8), epochs=1, verbose=0)
        updated.append([v.numpy() for v in model.trainable_variables])
    # SGD: w1 = w0 - lr (g + decay w0)  =>  w1(decay) - w1(no decay) = -lr decay w0.
    # One step from the same weights and gradients: the float32 roundings of w1 (|w| <= ~1, ulp 1.2e-7)
    # and of lr * (g + decay w0) differ by a few 1e-7 at most; the expected values reach 4e-5.
    for without, with_decay, start in zip(updated[0], updated[1], initial):
        np.testing.assert_allclose(with_decay - without, -learning_rate * decay * start, atol=1e-6)


def test_evaluate_changes_no_weights_and_reports_the_same_metrics():
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    model = tiny_guided_model(language_table_for(4), optimizer=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), language_weight=1.0)
    train_logs = model.fit(dataset(images, labels, 8), epochs=1, verbose=0).history
    before = [w.numpy().copy() for w in model.embedder.weights]
    logs = model.evaluate(dataset(images, labels, 8), verbose=0, return_dict=True)
    assert set(logs) == set(train_logs) == {"loss", "dml_loss", "language_loss"}
    for a, w in zip(before, model.embedder.weights):
        np.testing.assert_array_equal(a, w.numpy())


def test_xbm_memory_only_sees_training_batches():
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    model = tiny_guided_model(optimizer=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), dml_loss={"name": "multisimilarity", "xbm_memory_size": 16})
    model.fit(dataset(images, labels, 8), epochs=3, verbose=0)
    memory = model.dml_loss._y_pred_memory.numpy().copy()
    assert memory.shape == (16, 8)
    model.evaluate(dataset(images[::-1], labels[::-1], 8), verbose=0)
    np.testing.assert_array_equal(memory, model.dml_loss._y_pred_memory.numpy())


def test_config_round_trips_and_reproduces_embeddings():
    model = tiny_guided_model(language_table_for(4), optimizer=None, model_arguments={"table_index": "label"})
    config = json.loads(json.dumps(model.get_config()))
    restored = LanguageGuidedModel.from_config(config)
    restored.set_weights(model.get_weights())
    images, _ = synthetic_problem(num_classes=2, per_class=2)
    # Same layers, same weights, same eager ops: bit-identical here; 1e-6 = ~8 ulps of unit-vector entries.
    np.testing.assert_allclose(restored(images).numpy(), model(images).numpy(), atol=1e-6)
    assert restored.language_table is None  # training-time data, never part of the config


def test_label_outside_the_table_fails_before_any_weight_changes():
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    model = tiny_guided_model(language_table_for(3), optimizer=None)  # labels go up to 3, the table has 3 rows
    model.compile(optimizer=keras.optimizers.SGD(0.1), language_weight=1.0)
    before = [w.numpy().copy() for w in model.embedder.weights]
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the language table"):
        model.fit(dataset(images, labels, 8), epochs=1, verbose=0)
    for a, w in zip(before, model.embedder.weights):
        np.testing.assert_array_equal(a, w.numpy())


def test_bad_configuration_is_rejected_before_training():
    bad_table = language_table_for(4)
    bad_table[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf values in row\(s\) \[1\]"):
        tiny_guided_model(bad_table, optimizer=None)
    with pytest.raises(ValueError, match=r"all-zero embedding\(s\) in row\(s\) \[0\]"):
        tiny_guided_model(np.zeros((2, 4), "float32") + np.array([[0], [1]], "float32"), optimizer=None)
    with pytest.raises(ValueError, match="Unknown table_index 'class'"):
        tiny_guided_model(optimizer=None, model_arguments={"table_index": "class"})
    model = tiny_guided_model(language_table_for(4), optimizer=None)
    with pytest.raises(ValueError, match="Unknown DML loss 'contrastiv'"):
        model.compile(dml_loss="contrastiv")
    with pytest.raises(ValueError, match="Unknown direction 'backward'"):
        model.compile(language_direction="backward")
    with pytest.raises(ValueError, match="language_weight must be a finite number >= 0"):
        model.compile(language_weight=-1.0)
    with pytest.raises(ValueError, match="language_delay must be a whole number"):
        model.compile(language_delay=-3)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        model.compile(weight_decay=float("nan"))
    with pytest.raises(ValueError, match="pass dml_loss="):
        model.compile(loss="mse")
    with pytest.raises(ValueError, match="drop metrics=... from compile"):
        model.compile(metrics=["accuracy"])
    with pytest.raises(RuntimeError, match="Call compile"):
        LanguageGuidedModel(model.embedder).compute_losses((np.zeros((2, 16, 16, 3), "float32"), [0, 1]), False)


@pytest.mark.parametrize(
    "arguments, argument",
    [
        ({"language_weight": -1.0}, "language_weight"),
        ({"language_delay": 1.5}, "language_delay"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"loss": "mse"}, "loss"),
        ({"metrics": ["accuracy"]}, "metrics"),
        ({"weighted_metrics": ["accuracy"]}, "weighted_metrics"),
        ({"dml_loss": {"margin": 0.2}}, "dml_loss"),
        ({"dml_loss": 3}, "dml_loss"),
    ],
)
def test_compile_refusals_name_the_compile_argument(arguments, argument):
    model = tiny_guided_model(language_table_for(4), optimizer=None)
    with pytest.raises(ArgumentError) as info:
        model.compile(**arguments)
    assert info.value.argument == argument


def test_table_index_refusal_names_its_argument():
    with pytest.raises(ArgumentError, match="Unknown table_index 'class'") as info:
        tiny_guided_model(optimizer=None, model_arguments={"table_index": "class"})
    assert info.value.argument == "table_index"


def test_refusals_from_the_losses_come_out_under_compile_names(monkeypatch):
    # The losses name their own parameters (shift, the loss name); compile() names its own
    # (language_shift, dml_loss), which is what callers mapping arguments to config keys read.
    def refusing(argument):
        def build(*args, **kwargs):
            raise ArgumentError(f"bad {argument}", argument=argument)

        return build

    model = tiny_guided_model(language_table_for(4), optimizer=None)
    for own, compiles_as in [
        ("shift", "language_shift"),
        ("temperature", "language_temperature"),
        ("direction", "language_direction"),
    ]:
        monkeypatch.setattr(compile_arguments, "LanguageMatchingLoss", refusing(own))
        with pytest.raises(ArgumentError, match=f"^bad {own}$") as info:
            model.compile()
        assert info.value.argument == compiles_as
    monkeypatch.undo()
    monkeypatch.setattr(compile_arguments, "build_dml_loss", refusing("name"))
    for dml_loss in ("margin", {"name": "margin"}):
        with pytest.raises(ArgumentError, match="^bad name$") as info:
            model.compile(dml_loss=dml_loss)
        assert info.value.argument == "dml_loss"
    monkeypatch.setattr(compile_arguments, "build_dml_loss", refusing("beta_learning_rate"))
    with pytest.raises(ArgumentError) as info:  # one of the loss's own arguments keeps its name
        model.compile(dml_loss={"name": "margin", "beta_learning_rate": -1.0})
    assert info.value.argument == "beta_learning_rate"


def test_scaling_table_rows_does_not_change_the_loss():
    # The table is normalised inside; scaling a row must not change the loss.
    images, labels = synthetic_problem(num_classes=4, per_class=2)
    table = language_table_for(4)
    values = []
    for scale in (1.0, 5.0):
        model = tiny_guided_model(table * scale, seed=9, optimizer=None)
        model.compile(optimizer=keras.optimizers.SGD(0.0), language_weight=1.0)
        values.append(model.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)["language_loss"])
    # Mathematically equal, not bit-equal: the float32 unit rows of table and 5 * table differ by an
    # ulp or two, and log_softmax rounds each log q (|log q| ~ log 8 ~ 2) to ~2 x 2^-24 x 2 = 2.4e-7.
    # The KL (0.018) is ~220x smaller than sum p |log q|, so the p-weighted rounding can move it by
    # ~2.4e-7 absolute (~1.4e-5 relative): 1.2e-6 and 2.1e-6 relative seen on two CPUs, up to 4.2e-6
    # with the unit rows perturbed by 1-2 ulps. Without the normalisation the loss changes by O(1).
    assert values[0] == pytest.approx(values[1], rel=1e-5, abs=3e-7)
    # numpy: 5 * table rounds each float32 entry by <= 2^-24 relative, the renormalised row by <= 2^-23.
    np.testing.assert_allclose(unit_rows(table), unit_rows(table * 5.0), rtol=2.5e-7)
