"""The head's own learning rate, the backbone warmup and the step decay (tf_langdml.models.learning_rates).

Expected values are computed by hand in float32 with the optimizer's own formula: Keras'
SGD without momentum does ``w += -g * float32(lr)``, one rounding per element, so numpy
reproduces it exactly; a decayed rate is ``float32(lr * factor**k)`` (rounded once).
"""

import numpy as np
import pytest
import tensorflow as tf
from helpers import synthetic_problem, tiny_guided_model

from tf_langdml import keras
from tf_langdml.errors import ArgumentError, argument_of
from tf_langdml.models.learning_rates import backbone_variables, head_variables, step_decay

LR, HEAD_LR = 0.01, 0.25


def sgd_step(variable, gradient, rate):
    """What Keras' SGD (momentum 0) makes of ``variable`` after ``gradient`` at ``rate``: w + (-g * float32(rate))."""
    return variable + (-gradient * np.float32(rate))


def batch():
    return synthetic_problem(num_classes=4, per_class=2, seed=1)


def test_the_head_is_the_projection_after_the_pooling_and_the_backbone_the_rest():
    model = tiny_guided_model()
    assert [variable.name for variable in head_variables(model.embedder)] == [
        "projection/kernel:0",
        "projection/bias:0",
    ]
    head = {variable.ref() for variable in head_variables(model.embedder)}
    backbone = backbone_variables(model.embedder)
    assert backbone and not head & {variable.ref() for variable in backbone}
    assert len(backbone) + len(head) == len(model.embedder.trainable_variables)


def test_without_head_learning_rate_the_model_has_no_head_optimizer():
    model = tiny_guided_model(optimizer=keras.optimizers.SGD(LR))
    assert model.head_optimizer is None and model.loss_optimizers == []


def test_one_sgd_step_moves_the_head_by_head_rate_and_the_backbone_by_the_base_rate():
    model = tiny_guided_model(optimizer=keras.optimizers.SGD(LR), head_learning_rate=HEAD_LR)
    model.build_optimizers()
    rng = np.random.default_rng(0)
    variables = model.trainable_variables
    before = [variable.numpy() for variable in variables]
    gradients = [rng.normal(size=variable.shape).astype("float32") for variable in variables]
    model._apply_gradients([(tf.constant(g), v) for g, v in zip(gradients, variables)])
    head = {variable.ref() for variable in head_variables(model.embedder)}
    for variable, old, gradient in zip(variables, before, gradients):
        rate = HEAD_LR if variable.ref() in head else LR
        np.testing.assert_array_equal(variable.numpy(), sgd_step(old, gradient, rate), err_msg=variable.name)
    assert int(model.optimizer.iterations) == 1 and int(model.head_optimizer.iterations) == 1


# "xla" takes ~7 s on 2 busy cores: two XLA compilations (the warmup's function and its retrace)
WARMUP_MODES = {"graph": {}, "eager": {"run_eagerly": True}, "xla": {"jit_compile": True}, "mirrored": {}}


def warmup_model(mode, **compile_arguments):
    """A tiny model with ``compile_arguments`` in ``mode``; "mirrored": built under a one-CPU MirroredStrategy."""
    arguments = {**WARMUP_MODES[mode], **compile_arguments}
    if mode != "mirrored":
        return tiny_guided_model(**arguments)
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        return tiny_guided_model(**arguments)


# Adam's rate, beta_1, beta_2 and epsilon as Keras holds them (float32): 1 - float32(b) is exact in float32.
ADAM = tuple(float(np.float32(x)) for x in (1e-3, 0.9, 0.999, 1e-7))


def assert_adams_step_one(adam, variables, before):
    """Keras' Adam at step t from moments m, v: w -= lr sqrt(1-b2^t)/(1-b1^t) m/(sqrt(v)+eps). After the
    warmup the backbone's optimizer is at t=1 with m = (1-b1) g, v = (1-b2) g^2 (zero moments before;
    g includes the coupled weight decay), so the update is about lr sign(g); a step count run on through
    the warmup (t=3) would be 3.16x larger. Tolerances: the float32 update is <= 8 roundings of a value
    <= lr and the new weight one rounding of |w|; m^2/v carries m's one rounding twice and v's two (g^2,
    then the product), so 4 eps relative."""
    lr, b1, b2, eps = ADAM
    f32 = np.finfo(np.float32)
    assert adam.iterations.numpy() == 1
    for variable, old in zip(variables, before):
        old = np.asarray(old, np.float64)
        index = adam._index_dict[adam._var_key(variable)]  # Keras' slot lookup (no public one)
        m, v = (slot[index].numpy().astype(np.float64) for slot in (adam._momentums, adam._velocities))
        normal = v >= f32.tiny  # g^2 not subnormal
        ratio = m[normal] ** 2 / v[normal] / ((1 - b1) ** 2 / (1 - b2))
        assert np.all(np.abs(ratio - 1) <= 4 * f32.eps), variable.name
        expected = lr * np.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps)
        error = np.abs(old - variable.numpy().astype(np.float64) - expected)
        assert np.all(error <= 8 * f32.eps * (lr + np.abs(old))), (variable.name, float(np.max(error)))


@pytest.mark.parametrize("mode", list(WARMUP_MODES))
def test_warmup_keeps_the_backbone_bit_identical_then_trains_it_from_adams_step_one(mode):
    images, labels = batch()
    lr, b1, b2, eps = ADAM
    # the head's own rate leaves the model's optimizer no variable: its step still counts
    model = warmup_model(
        mode,
        optimizer=keras.optimizers.Adam(lr, beta_1=b1, beta_2=b2, epsilon=eps),
        weight_decay=4e-4,
        warmup_steps=2,
        head_learning_rate=HEAD_LR,
    )
    backbone, head = backbone_variables(model.embedder), head_variables(model.embedder)
    start = [variable.numpy() for variable in backbone]
    head_start = [variable.numpy() for variable in head]
    for _ in range(2):
        model.train_on_batch(images, labels)
        for variable, old in zip(backbone, start):
            np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.name)
    assert model.backbone_optimizer.iterations.numpy() == 0  # never applied during the warmup
    assert all(not np.array_equal(variable.numpy(), old) for variable, old in zip(head, head_start))
    model.train_on_batch(images, labels)  # optimizer step 2: the warmup is over
    assert any(not np.array_equal(variable.numpy(), old) for variable, old in zip(backbone, start))
    assert model.backbone_optimizer.iterations.numpy() == 1 and model.optimizer.iterations.numpy() == 3
    assert_adams_step_one(model.backbone_optimizer, backbone, start)  # (start: the backbone before this step)


def traced_op_types(model, images, labels):
    """The op types of one traced ``train_step``, the bodies of its nested functions included."""
    graph = tf.function(model.train_step).get_concrete_function((images, labels)).graph.as_graph_def()
    return {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}


def test_during_the_warmup_no_gradient_is_taken_for_the_backbone():
    # the backbone's convolutions are the tiny model's only Conv2D: their weight gradient is
    # Conv2DBackpropFilter, which the step must not even build while the backbone waits
    # (benchmarks/warmup_step.py: a warmup step of the demo's model costs about a quarter of a full one)
    images, labels = batch()
    model = tiny_guided_model(optimizer=keras.optimizers.SGD(LR), warmup_steps=1)
    warmup_ops = traced_op_types(model, images, labels)
    assert "Conv2D" in warmup_ops and "Conv2DBackpropFilter" not in warmup_ops
    model.train_on_batch(images, labels)
    model.make_train_function()  # the warmup is over: the phase flag turns (fit does this per call)
    assert "Conv2DBackpropFilter" in traced_op_types(model, images, labels)


def test_without_warmup_there_is_no_backbone_optimizer():
    model = tiny_guided_model(optimizer=keras.optimizers.Adam(1e-3), head_learning_rate=HEAD_LR)
    assert model.backbone_optimizer is None and model._backbone_trains
    assert [optimizer for optimizer, _ in model._loss_groups.value] == [model.head_optimizer]


@pytest.mark.parametrize("mode", ["graph"])  # XLA's retrace is covered by train_on_batch above
def test_one_fit_starts_the_backbones_optimizer_at_the_first_call_after_the_warmup(mode):
    images, labels = batch()
    model = warmup_model(mode, optimizer=keras.optimizers.Adam(1e-3), warmup_steps=2)  # the head: the model's
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model.fit(dataset, epochs=2, steps_per_epoch=2, verbose=0)  # steps 0, 1: warmup; 2, 3: the backbone trains
    assert model.optimizer.iterations.numpy() == 4 and model.backbone_optimizer.iterations.numpy() == 2


def resumed_models(tmp_path, stops, steps, optimizer=keras.optimizers.SGD, **compile_arguments):
    """(unbroken, {stop: resumed}) after ``steps`` steps; one unbroken run saves a checkpoint at each of ``stops``,
    and each resumed model is restored from its stop's checkpoint, then trained to ``steps``."""
    images, labels = batch()

    def build():
        model = tiny_guided_model(seed=5, optimizer=optimizer(schedule()), **compile_arguments)
        model.build_optimizers()
        return model

    unbroken, paths = build(), {}
    for step in range(steps):
        if step in stops:
            checkpoint = tf.train.Checkpoint(model=unbroken, optimizer=unbroken.optimizer)
            paths[step] = checkpoint.save(str(tmp_path / f"at-{step}" / "ckpt"))
        unbroken.train_on_batch(images, labels)
    resumed = {}
    for stop in stops:
        resumed[stop] = build()
        checkpoint = tf.train.Checkpoint(model=resumed[stop], optimizer=resumed[stop].optimizer)
        checkpoint.restore(paths[stop]).assert_existing_objects_matched()
        for _ in range(stop, steps):
            resumed[stop].train_on_batch(images, labels)
    return unbroken, resumed


def schedule():
    return step_decay(LR, [1, 2], 0.5, steps_per_epoch=2)  # boundaries at steps 2 and 4


@pytest.mark.parametrize("optimizer", [keras.optimizers.SGD, keras.optimizers.Adam], ids=["sgd", "adam"])
def test_a_resume_around_the_warmup_boundary_is_bit_identical(tmp_path, optimizer):
    stops = {1: "mid warmup", 2: "at the boundary", 3: "after the boundary"}  # one unbroken run for the three
    unbroken, resumed = resumed_models(
        tmp_path, stops=list(stops), steps=5, optimizer=optimizer, warmup_steps=2, head_learning_rate=HEAD_LR
    )
    for stop, when in stops.items():
        assert int(resumed[stop].backbone_optimizer.iterations) == 3, when
        for a, b in zip(unbroken.variables, resumed[stop].variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{a.name}, resumed {when}")


def test_a_resume_after_a_decay_boundary_continues_at_the_decayed_rate(tmp_path):
    unbroken, resumed_at = resumed_models(tmp_path, stops=[3], steps=5, head_learning_rate=HEAD_LR)
    resumed = resumed_at[3]
    for a, b in zip(unbroken.variables, resumed.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    # .learning_rate: the rate the last step (optimizer step 4, after both boundaries) used.
    assert int(resumed.optimizer.iterations) == 5
    assert resumed.optimizer.learning_rate.numpy() == np.float32(LR * 0.25)
    assert resumed.head_optimizer.learning_rate.numpy() == np.float32(HEAD_LR * 0.25)


@pytest.mark.parametrize(
    ("step", "rate"), [(0, LR), (5, LR), (6, LR * 0.3), (14, LR * 0.3), (15, LR * 0.3**2), (10**6, LR * 0.3**2)]
)
def test_step_decay_before_at_and_after_each_boundary(step, rate):
    schedule = step_decay(LR, [2, 5], 0.3, steps_per_epoch=3)  # epochs 2 and 5: optimizer steps 6 and 15
    assert schedule.boundaries == [6, 15]
    assert schedule(tf.constant(step, tf.int64)).numpy() == np.float32(rate)


def test_the_head_and_the_losses_groups_decay_alike():
    model = tiny_guided_model(
        optimizer=keras.optimizers.SGD(schedule()), dml_loss="margin", num_classes=4, head_learning_rate=HEAD_LR
    )
    model.build_optimizers()
    beta, head = model.loss_optimizers[0], model.head_optimizer  # margin's β: the absolute 5e-4 of the paper's code
    beta_rate = 5e-4
    zeros = [(tf.zeros_like(variable), variable) for variable in model.trainable_variables]
    rates = []
    for step in (1, 4):  # before the first boundary (step 2), after the second (step 4)
        for optimizer in (model.optimizer, beta, head):
            optimizer.iterations.assign(step)
        model._apply_gradients(zeros)  # the rate an optimizer step at `step` uses
        rates.append([optimizer.learning_rate.numpy() for optimizer in (model.optimizer, beta, head)])
    assert rates[0] == [np.float32(LR), np.float32(beta_rate), np.float32(HEAD_LR)]
    assert rates[1] == [np.float32(LR * 0.25), np.float32(beta_rate * 0.25), np.float32(HEAD_LR * 0.25)]


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [
        ({"decay_epochs": []}, "decay_epochs"),
        ({"decay_epochs": [0, 3]}, "decay_epochs"),
        ({"decay_epochs": [3, 3]}, "decay_epochs"),
        ({"decay_epochs": [5, 3]}, "decay_epochs"),
        ({"decay_factor": 0.0}, "decay_factor"),
        ({"decay_factor": -0.5}, "decay_factor"),
    ],
)
def test_step_decay_refuses_bad_epochs_and_factors(arguments, argument):
    values = {"learning_rate": LR, "decay_epochs": [3], "decay_factor": 0.1, "steps_per_epoch": 2, **arguments}
    with pytest.raises(ArgumentError) as error:
        step_decay(**values)
    assert argument_of(error.value) == argument and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [({"head_learning_rate": 0.0}, "head_learning_rate"), ({"warmup_steps": -1}, "warmup_steps")],
)
def test_compile_refuses_a_bad_head_rate_or_warmup(arguments, argument):
    with pytest.raises(ArgumentError) as error:
        tiny_guided_model(**arguments)
    assert argument_of(error.value) == argument


def test_a_warmup_under_loss_scaling_needs_a_variable_on_the_models_optimizer():
    """The head's own rate and the warmup's backbone optimizer leave the LossScaleOptimizer no variable, so no step
    of its own would update its loss scale: refused at compile."""
    optimizer = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.Adam(1e-3))
    with pytest.raises(ArgumentError) as error:
        tiny_guided_model(optimizer=optimizer, warmup_steps=2, head_learning_rate=HEAD_LR)
    assert argument_of(error.value) == "warmup_steps" and "\n" not in str(error.value)


def test_a_warmup_under_mixed_float16_watches_the_cast_variables_of_the_head_only():
    # the warmup's tape watches the head's variables itself; under a mixed policy they are AutoCastVariables
    images, labels = batch()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tiny_guided_model(optimizer=keras.optimizers.Adam(1e-3), warmup_steps=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    backbone, head = backbone_variables(model.embedder), head_variables(model.embedder)
    start, head_start = [v.numpy() for v in backbone], [v.numpy() for v in head]
    for _ in range(2):
        model.train_on_batch(images, labels)
    for variable, old in zip(backbone, start):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.name)
    assert all(not np.array_equal(variable.numpy(), old) for variable, old in zip(head, head_start))
    model.train_on_batch(images, labels)
    assert any(not np.array_equal(variable.numpy(), old) for variable, old in zip(backbone, start))


def test_a_custom_loop_keeps_the_phase_of_compile_time_until_make_train_function():
    images, labels = batch()
    data = (tf.constant(images), tf.constant(labels))
    model = tiny_guided_model(optimizer=keras.optimizers.SGD(LR), warmup_steps=1)
    backbone = backbone_variables(model.embedder)
    start = [variable.numpy() for variable in backbone]
    for _ in range(2):  # steps 0 and 1: the phase set at compile (warmup) holds
        model.train_step(data)
    assert all(np.array_equal(variable.numpy(), old) for variable, old in zip(backbone, start))
    model.make_train_function()  # reads step 2: the warmup is over
    model.train_step(data)
    assert model.backbone_optimizer.iterations.numpy() == 1
    assert any(not np.array_equal(variable.numpy(), old) for variable, old in zip(backbone, start))
