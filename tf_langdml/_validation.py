"""Checks that raise a readable error in eager mode and fail the step in graph mode."""

import tensorflow as tf


def tensor_check(condition, message):
    """Assert a boolean scalar tensor.

    Eagerly this raises ``ValueError(message)`` at once. Inside a ``tf.function`` it
    returns an assertion op (``InvalidArgumentError`` with the same message when it
    fails); use it as a control dependency so nothing downstream runs first.

    Returns:
        A list of ops to use with ``tf.control_dependencies`` (empty when eager).
    """
    if tf.executing_eagerly():
        if not bool(condition.numpy()):
            raise ValueError(message)
        return []
    return [tf.debugging.Assert(condition, [message])]
