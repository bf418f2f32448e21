"""tf_langdml.errors: the argument travels with the error, through pickling too."""

import pickle

import pytest

from tf_langdml.errors import ArgumentError, ArgumentTypeError, argument_of


@pytest.mark.parametrize("kind, base", [(ArgumentError, ValueError), (ArgumentTypeError, TypeError)])
def test_the_argument_is_an_attribute_that_survives_pickling(kind, base):
    error = kind("top_k must be >= 1, got 0; set top_k to 1 or more.", "top_k")
    assert isinstance(error, base)
    assert argument_of(error) == "top_k"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is kind and argument_of(copy) == "top_k" and str(copy) == str(error)


def test_an_ordinary_error_names_no_argument():
    assert argument_of(ValueError("top_k is mentioned but not named")) is None
