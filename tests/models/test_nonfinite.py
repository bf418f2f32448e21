"""The non-finite guard's pure parts: the report an Assert carries, the error's message; the Untracked holder.

Training that stops on NaN or Inf (eager, tf.function, XLA, MirroredStrategy, run files):
tests/test_nonfinite_training.py.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_langdml import keras
from tf_langdml.models.nonfinite import (
    NONFINITE_MARKER,
    NonFiniteLossError,
    assert_finite,
    finiteness_check,
    nonfinite_error,
    parse_report,
)
from tf_langdml.models.untracked import Untracked


def test_the_report_of_a_failed_assert_is_read_back_from_its_message():
    @tf.function
    def step(loss):
        finite, report = finiteness_check(tf.constant(7, tf.int64), loss, loss, tf.constant(0.5), None, 1)
        with tf.control_dependencies([assert_finite(finite, report, [])]):
            return tf.identity(loss)

    assert float(step(tf.constant(1.0))) == 1.0
    with pytest.raises(tf.errors.InvalidArgumentError, match=NONFINITE_MARKER) as info:
        step(tf.constant(np.inf, tf.float32))
    step_, loss, dml, language, gradients_finite = parse_report(str(info.value))
    assert (step_, loss, dml, language, gradients_finite) == (7.0, math.inf, math.inf, 0.5, -1.0)
    assert parse_report("some other InvalidArgumentError") is None


def test_the_error_names_the_step_the_bad_values_and_the_learning_rate():
    optimizer = keras.optimizers.Adam(3e-4)
    weights = [tf.Variable([1.0, 2.0], name="kernel")]
    error = nonfinite_error([2.0, math.nan, math.nan, 0.25, 0.0], optimizer, weights)
    assert isinstance(error, NonFiniteLossError) and isinstance(error, FloatingPointError)
    assert (error.step, error.learning_rate) == (2, pytest.approx(3e-4))
    assert error.values["gradients_finite"] is False and error.values["language_loss"] == 0.25
    assert "optimizer step 2 (0-based optimizer.iterations; the 3rd update): loss, dml_loss, gradients are NaN" in str(
        error
    )
    assert "current learning rate 0.0003" in str(error) and "those after the last finite step" in str(error)
    weights[0].assign([np.nan, 0.0])
    assert "were already NaN or Inf before it (kernel:0)" in str(nonfinite_error([0, 1, 1, 1, 1], optimizer, weights))


def test_untracked_values_stay_out_of_a_models_weights():
    model = keras.Sequential([keras.layers.Dense(2)])
    model.build((None, 3))
    model.holder = Untracked(tf.Variable(1.0, name="hidden"))
    assert "hidden" not in " ".join(variable.name for variable in model.variables)
