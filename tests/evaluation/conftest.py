"""Fixtures shared by the evaluation tests."""

import numpy as np
import pytest
from PIL import Image

from tf_langdml.data import load_image_folder


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    """8 classes x 4 noisy solid-colour 16 x 16 PNGs, loaded as an image folder (classes 0-3 train, 4-7 test)."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for index in range(8):
        colour = rng.integers(0, 256, 3)
        (root / f"class_{index}").mkdir()
        for image in range(4):
            pixels = np.clip(colour + rng.integers(-20, 21, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{index}" / f"{image}.png")
    return load_image_folder(root)
