"""``config_keys``: a library error re-raised as ConfigError naming the config key it is about."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tf_langdml.errors import argument_of
from tf_langdml.runs.schema import ConfigError, did_you_mean

_LIBRARY_ERRORS = (ValueError, TypeError, KeyError)


@contextlib.contextmanager
def config_keys(
    *keys: str, arguments: Mapping[str, str] | None = None, suggest: tuple[Any, Sequence[str]] | None = None
) -> Iterator[None]:
    """Re-raise a library error inside the block as ConfigError naming the config key(s).

    Args:
        keys: the config keys the library call takes (named when ``arguments`` does not map the
            error's argument; none: such an error is not about the config and passes through).
        arguments: ``{library argument: config key}``: an error whose ``argument`` attribute
            (:func:`~tf_langdml.errors.argument_of`) is one of these names that key alone.
        suggest: ``(value, choices)``: add "did you mean" the closest choice.
    """
    try:
        yield
    except ConfigError:
        raise
    except _LIBRARY_ERRORS as error:
        message = str(error.args[0]) if type(error) is KeyError and error.args else str(error)
        argument = argument_of(error)
        named = [arguments[argument]] if arguments and argument in arguments else list(keys)
        if not named:
            raise
        hint = did_you_mean(*suggest, fallback=False) if suggest else ""
        if hint:
            message = message.rstrip(".")
        raise ConfigError(f"{' / '.join(repr(key) for key in named)}: {message}{hint}") from error
