"""Fixtures shared by the evaluation tests."""

import pytest
from helpers import write_colour_folder

from tf_langdml.data import load_image_folder


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    """8 classes x 4 noisy solid-colour 16 x 16 PNGs, loaded as an image folder (classes 0-3 train, 4-7 test)."""
    return load_image_folder(write_colour_folder(tmp_path_factory.mktemp("colours")))
