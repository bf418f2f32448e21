"""NaN or Inf in training: the step is not applied, fit raises NonFiniteLossError, run files stay finite."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from helpers import global_policy, run_python, tiny_embedder, tiny_guided_model, tiny_run_overrides, write_colour_folder

from tf_langdml import keras
from tf_langdml.models import LanguageGuidedModel, NonFiniteLossError
from tf_langdml.runs import builders
from tf_langdml.runs.checkpoints import ResumeCheckpoints, checkpoint_manager, latest_finite_checkpoint
from tf_langdml.runs.run_dir import HistoryFile
from tf_langdml.runs.schema import load_config
from tf_langdml.runs.train import train

RNG = np.random.default_rng(0)
LABELS = np.repeat(np.arange(4), 2).astype("int32")  # 4 classes x 2 images: one batch of 8
IMAGES = RNG.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
TABLE = RNG.normal(size=(4, 1, 5)).astype("float32")


def toy_model(optimizer, **compile_arguments):
    # BatchNorm statistics that move in training, so the tests see them put back after a NaN step.
    return tiny_guided_model(
        TABLE,
        seed=1,
        optimizer=optimizer,
        embedder_arguments={"freeze_bn_statistics": False},
        language_weight=1.0,
        **compile_arguments,
    )


def batches(nan_at=None, count=50):
    """The same batch ``count`` times; at step ``nan_at`` one pixel is NaN."""

    def generate():
        for step in range(count):
            images = IMAGES.copy()
            if step == nan_at:
                images[5, 0, 0, 0] = np.nan
            yield images, LABELS

    signature = (tf.TensorSpec((8, 16, 16, 3), tf.float32), tf.TensorSpec((8,), tf.int32))
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def state(model):
    """Every variable: weights, BatchNorm statistics, loss trackers, optimizer slots and step."""
    return [variable.numpy().copy() for variable in model.variables + list(model.optimizer.variables)]


class Capture(keras.callbacks.Callback):
    """The model's state after each finished train-function call."""

    def __init__(self):
        super().__init__()
        self.states = []

    def on_train_batch_end(self, batch, logs=None):
        self.states.append(state(self.model))


def assert_state_is(model, expected):
    now = state(model)
    assert len(now) == len(expected)
    for value in now:
        assert np.isfinite(value).all()
    for value, reference in zip(now, expected):
        np.testing.assert_array_equal(value, reference)


MODES = {"eager": {"run_eagerly": True}, "graph": {}, "xla": {"jit_compile": True}}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_an_absurd_learning_rate_stops_fit_at_the_first_nonfinite_step(mode):
    model = toy_model(keras.optimizers.SGD(1e30), **MODES[mode])
    capture = Capture()
    with pytest.raises(NonFiniteLossError) as info:
        model.fit(batches(), epochs=1, steps_per_epoch=20, verbose=0, callbacks=[capture])
    error = info.value
    finite_steps = len(capture.states)
    assert finite_steps >= 1  # step 0's loss is finite; its update blows the weights up
    assert error.step == finite_steps == int(model.optimizer.iterations.numpy())
    message = str(error)
    assert f"optimizer step {finite_steps} (0-based" in message and "learning rate" in message and "1e+30" in message
    assert error.learning_rate == pytest.approx(1e30)
    assert not math.isfinite(error.values["loss"])
    # Nothing moved: weights, BatchNorm statistics, optimizer state are those after the last finite step.
    assert_state_is(model, capture.states[-1])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_nan_pixels_at_step_k_stop_fit_at_step_k(mode):
    with pytest.raises(ValueError, match="NaN or Inf values in row"):  # a NaN table is refused up front
        LanguageGuidedModel(tiny_embedder(), language_table=np.where(np.arange(4)[:, None, None] == 2, np.nan, TABLE))
    model = toy_model(keras.optimizers.Adam(1e-3), weight_decay=1e-3, **MODES[mode])
    capture = Capture()
    with pytest.raises(NonFiniteLossError, match=r"optimizer step 3 \(0-based optimizer.iterations; the 4th update\)"):
        model.fit(batches(nan_at=3), epochs=1, steps_per_epoch=10, verbose=0, callbacks=[capture])
    assert len(capture.states) == 3 and int(model.optimizer.iterations.numpy()) == 3
    assert_state_is(model, capture.states[-1])
    # The error is not sticky: training goes on from there with good data.
    model.fit(batches(), epochs=1, steps_per_epoch=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 5


def test_several_steps_per_execution_stop_at_the_nonfinite_one():
    model = toy_model(keras.optimizers.Adam(1e-3), steps_per_execution=4)
    with pytest.raises(NonFiniteLossError) as info:
        model.fit(batches(nan_at=6), epochs=1, steps_per_epoch=12, verbose=0)
    assert info.value.step == 6 == int(model.optimizer.iterations.numpy())
    assert all(np.isfinite(value).all() for value in state(model))


@pytest.fixture
def mixed_policy():
    with global_policy("mixed_float16"):
        yield


def test_loss_scaling_skips_overflowing_steps_without_an_error(mixed_policy):
    initial_scale = 2.0**40
    model = toy_model(keras.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=initial_scale))
    before = [variable.numpy().copy() for variable in model.trainable_variables]
    capture = Capture()
    history = model.fit(batches(), epochs=1, steps_per_epoch=40, verbose=0, callbacks=[capture]).history
    assert int(model.optimizer.iterations.numpy()) == 40  # the loss scale optimizer counts skipped steps too
    assert float(model.optimizer.loss_scale) < initial_scale / 2**10
    trainable = [index for index, variable in enumerate(model.variables) if variable.trainable]
    # The first steps' float16 gradients overflowed: the optimizer skipped them itself ...
    np.testing.assert_array_equal(capture.states[0][trainable[0]], before[0])
    # ... and later steps trained.
    assert any(
        not np.array_equal(variable.numpy(), value) for variable, value in zip(model.trainable_variables, before)
    )
    assert np.isfinite(history["loss"]).all()


def test_loss_scaling_still_stops_on_a_nonfinite_loss(mixed_policy):
    model = toy_model(keras.optimizers.SGD(0.1))  # compile wraps it in a LossScaleOptimizer
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    with pytest.raises(NonFiniteLossError, match="optimizer step 2 .*gradients not checked") as info:
        model.fit(batches(nan_at=2), epochs=1, steps_per_epoch=10, verbose=0)
    assert info.value.values["gradients_finite"] is None
    assert int(model.optimizer.iterations.numpy()) == 2


# -- runs.train.train --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """8 named classes x 6 noisy solid-colour PNGs."""
    return write_colour_folder(
        tmp_path_factory.mktemp("folder"), per_class=6, size=24, noise=30, class_name="{0:02d}.class_{0}"
    )


def diverging_config(folder, runs):
    # SGD at learning rate 1e4 on the toy backbone: finite for a few steps, then NaN.
    return load_config(
        None,
        [
            *tiny_run_overrides(folder, runs, "diverge"),
            "language.guidance=none",
            "loss.language_weight=0",
            "optimizer.name=sgd",
            "optimizer.learning_rate=1.0e+4",
            "training.epochs=3",
            "training.steps_per_epoch=5",
            "training.eval_every=1",
            "training.checkpoint_every=1",
            "evaluation.batch_size=16",
            "evaluation.semantic=false",
            "evaluation.clustering=false",
        ],
    )


def checkpoint_steps(folder):
    return sorted(int(path.name.split("-")[1].split(".")[0]) for path in (folder / "checkpoints").glob("ckpt-*.index"))


def run_log(folder):
    return [json.loads(line) for line in (folder / "run_log.jsonl").read_text().splitlines()]


def test_a_diverging_run_writes_only_finite_files_and_resumes_from_a_finite_checkpoint(image_folder, tmp_path, capsys):
    config = diverging_config(image_folder, tmp_path)
    folder = tmp_path / "diverge"
    with pytest.raises(NonFiniteLossError, match="learning rate is too high") as info:
        train(config, verbose=0)
    failed_at = info.value.step
    assert failed_at >= 2
    # checkpoint_every=1: the newest checkpoint is the state after the last finite step.
    assert checkpoint_steps(folder)[-1] == failed_at
    for step in checkpoint_steps(folder):
        reader = tf.train.load_checkpoint(str(folder / "checkpoints" / f"ckpt-{step}"))
        floats = [name for name, dtype in reader.get_variable_to_dtype_map().items() if dtype.is_floating]
        assert len(floats) > 10
        for name in floats:
            assert np.isfinite(reader.get_tensor(name)).all(), (step, name)
    assert not (folder / "embedder.weights.h5").exists() and not (folder / "metrics.json").exists()
    if (folder / "history.json").exists():
        for line in json.loads((folder / "history.json").read_text()).values():
            assert all(isinstance(value, float) and math.isfinite(value) for value in line.values()), line
    events = run_log(folder)
    assert [event["event"] for event in events] == ["start", "nonfinite"]
    assert events[1]["optimizer_step"] == failed_at and events[1]["loss"] == "nan"
    assert "learning rate" in events[1]["message"]

    # Corrupt the newest checkpoint (NaN weights one step later): a restart skips it.
    model = builders.guided_model(config.model, config.data.image_size, config.loss, config.optimizer, config.training)
    checkpoint, manager = checkpoint_manager(model, folder)
    checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    kernel = model.embedder.trainable_variables[0]
    kernel.assign(tf.fill(kernel.shape, float("nan")))
    model.optimizer.iterations.assign(failed_at + 1)
    manager.save(checkpoint_number=failed_at + 1)
    capsys.readouterr()
    with pytest.raises(NonFiniteLossError) as again:
        train(config, verbose=1)
    out, err = capsys.readouterr()
    assert f"ckpt-{failed_at + 1} holds NaN or Inf" in err
    assert f"from optimizer step {failed_at}." in out
    events = run_log(folder)
    assert events[2] == {**events[2], "event": "start", "optimizer_step": failed_at}
    assert again.value.step == failed_at == events[3]["optimizer_step"]  # the same batch fails again


def test_without_a_finite_checkpoint_a_run_starts_from_scratch(tmp_path, capsys):
    variable = tf.Variable([1.0, 2.0])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), str(tmp_path), max_to_keep=2)
    manager.save(checkpoint_number=1)
    variable.assign([1.0, float("inf")])
    manager.save(checkpoint_number=2)
    assert latest_finite_checkpoint(manager).endswith("ckpt-1")
    variable.assign([float("nan"), 0.0])
    manager.save(checkpoint_number=3)
    assert latest_finite_checkpoint(manager) is None
    assert "starting this run from scratch" in capsys.readouterr().err


def test_checkpoints_and_history_refuse_nonfinite_values(tmp_path):
    model = toy_model(keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    _, manager = checkpoint_manager(model, tmp_path)
    checkpoints = ResumeCheckpoints(manager, every=1)
    history = HistoryFile(tmp_path / "history.json")
    for callback in (checkpoints, history):
        callback.set_model(model)
    checkpoints.on_train_end()
    history.on_epoch_end(0, {"loss": 0.5})
    model.optimizer.iterations.assign(1)
    kernel = model.embedder.trainable_variables[0]
    kernel.assign(tf.fill(kernel.shape, float("inf")))
    with pytest.raises(NonFiniteLossError, match="Not writing checkpoint ckpt-1: after optimizer step 1"):
        checkpoints.on_train_batch_end(0)
    assert checkpoint_steps(tmp_path) == [0]
    with pytest.raises(NonFiniteLossError, match="Not writing epoch 2 to history.json: loss is NaN"):
        history.on_epoch_end(1, {"loss": float("nan"), "dml_loss": 0.5})
    assert json.loads((tmp_path / "history.json").read_text()) == {"1": {"loss": 0.5}}


# -- MirroredStrategy ---------------------------------------------------------------------------

MIRRORED = r"""
import json
import tf_langdml
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tf_langdml import keras
from tf_langdml.models import LanguageGuidedModel, NonFiniteLossError, build_embedder

rng = np.random.default_rng(0)
labels = np.repeat(np.arange(4), 2).astype("int32")
images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
table = rng.normal(size=(6, 2, 5)).astype("float32")

def generate():
    for step in range(20):
        batch = images.copy()
        if step == 3:
            batch[5, 0, 0, 0] = np.nan  # in the second replica's half of the global batch
        yield batch, labels

data = tf.data.Dataset.from_generator(generate, output_signature=(tf.TensorSpec((8, 16, 16, 3)),
                                                                   tf.TensorSpec((8,), tf.int32)))
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    keras.utils.set_random_seed(1)
    model = LanguageGuidedModel(build_embedder("toy_cnn", weights=None, embed_dim=8, input_shape=(16, 16, 3),
                                               freeze_bn_statistics=False), language_table=table)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), language_weight=2.0, weight_decay=1e-3)

def state():
    return [v.numpy().copy() for v in model.variables + list(model.optimizer.variables)]

saved = []
class Capture(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        saved.append(state())

report = {"raised": False}
try:
    model.fit(data, epochs=1, steps_per_epoch=10, verbose=0, callbacks=[Capture()])
except NonFiniteLossError as error:
    now = state()
    report = {"raised": True, "step": error.step, "message": str(error), "finite_steps": len(saved),
              "iterations": int(model.optimizer.iterations.numpy()),
              "finite": bool(all(np.isfinite(value).all() for value in now)),
              "unchanged": bool(all(np.array_equal(a, b) for a, b in zip(now, saved[-1])))}
print(json.dumps({**report, "replicas": model.distribute_strategy.num_replicas_in_sync}))
"""


@pytest.mark.slow  # a second TensorFlow process with 2 logical CPUs (~30 s); run with `make test-slow`
def test_mirrored_strategy_stops_every_replica_at_the_nonfinite_step():
    result = run_python(MIRRORED)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["raised"], report
    assert report["step"] == report["finite_steps"] == report["iterations"] == 3
    assert "optimizer step 3 (0-based" in report["message"] and "learning rate" in report["message"]
    assert report["finite"] and report["unchanged"]
