"""Errors that name the argument they are about.

A library function that refuses one of its arguments raises :class:`ArgumentError`
(a ``ValueError``) or :class:`ArgumentTypeError` (a ``TypeError``) with ``argument``
set to that parameter's name, as the function spells it (``"language_weight"``,
``"top_k"``). Callers that know where the argument came from (the runs layer maps
arguments to config keys) read the attribute, never the message's words, so a
reworded message cannot lose its key. Imports nothing heavy.
"""

from __future__ import annotations


class ArgumentError(ValueError):
    """A ``ValueError`` about one argument of a library call.

    Args:
        message: the whole message (the bad value, what was expected, the fix).
        argument: the parameter's name in the call that refused it.
    """

    def __init__(self, message: str, argument: str):
        super().__init__(message)
        self.argument = argument

    def __reduce__(self):  # pickles (multiprocessing, tf.distribute workers) with its argument
        return type(self), (self.args[0] if self.args else "", self.argument)


class ArgumentTypeError(TypeError):
    """A ``TypeError`` about one argument of a library call (see :class:`ArgumentError`)."""

    def __init__(self, message: str, argument: str):
        super().__init__(message)
        self.argument = argument

    def __reduce__(self):
        return type(self), (self.args[0] if self.args else "", self.argument)


def argument_of(error: BaseException) -> str | None:
    """The argument ``error`` is about, or None for an error that names none."""
    return getattr(error, "argument", None)
