"""Decoding (JPEG RGB / grayscale / CMYK, PNG with alpha) and the train / eval transforms."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_langdml.data.preprocessing import (
    decode_rgb,
    eval_preprocess,
    random_resized_crop,
    resize_bilinear,
    train_image_from_bytes,
    train_preprocess,
)


def encode(array, mode, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 120, dtype=np.float64)
    base = np.stack([np.tile(gradient, (90, 1)), np.tile(gradient[::-1], (90, 1)), np.full((90, 120), 128.0)], -1)
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "mode,fmt,tolerance",
    [("RGB", "JPEG", 12), ("L", "JPEG", 12), ("CMYK", "JPEG", 20), ("RGB", "PNG", 0), ("RGBA", "PNG", 0)],
)
def test_decode_gives_rgb_uint8(photo, mode, fmt, tolerance, run_mode):
    decoded = run_mode(decode_rgb)(tf.constant(encode(photo, mode, fmt))).numpy()
    assert decoded.shape == (90, 120, 3) and decoded.dtype == np.uint8
    expected = np.asarray(Image.fromarray(photo).convert(mode).convert("RGB"), dtype=np.int32)
    assert np.abs(decoded.astype(np.int32) - expected).mean() <= tolerance


def test_decode_of_bytes_that_are_not_an_image_fails():
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_rgb(tf.constant(b"this is not an image"))


def test_train_preprocess_shape_range_and_randomness(photo):
    image = tf.constant(photo)
    outputs = [train_preprocess(image, 64, seed=[0, step]).numpy() for step in range(6)]
    for output in outputs:
        assert output.shape == (64, 64, 3) and output.dtype == np.float32
        assert output.min() >= 0 and output.max() <= 255
    assert len({output.tobytes() for output in outputs}) == 6
    np.testing.assert_array_equal(outputs[0], train_preprocess(image, 64, seed=[0, 0]).numpy())
    assert train_preprocess(image, 32).shape == (32, 32, 3)


@pytest.mark.parametrize("shape", [(90, 120), (30, 20), (64, 64), (20, 100), (100, 20), (1, 1), (65, 64)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_resize_bilinear_equals_the_antialiased_op(shape, dtype, run_mode):
    # Growing sides take the cheap non-antialiased op; the values must not change.
    image = np.random.default_rng(1).integers(0, 256, shape + (3,)).astype(dtype)
    resized = run_mode(lambda x: resize_bilinear(x, 64))(tf.constant(image)).numpy()
    expected = tf.image.resize(tf.constant(image, tf.float32), [64, 64], antialias=True).numpy()
    assert resized.shape == (64, 64, 3) and resized.dtype == np.float32
    # Growing: two different float32 ops. Sample positions up to 64 px carry ~half an ulp (3.8e-6 px)
    # of rounding, times neighbour differences up to 255 in two passes: <= ~2e-3 (4.6e-4 seen).
    # Shrinking: the same op on the same values (bit-identical).
    np.testing.assert_allclose(resized, expected, atol=2e-3)
    plain = run_mode(lambda x: resize_bilinear(x, 64, antialias=False))(tf.constant(image)).numpy()
    # The same op on the same float32 values (uint8 -> float32 is exact): bit-identical here; same bound.
    np.testing.assert_allclose(plain, tf.image.resize(tf.constant(image, tf.float32), [64, 64]).numpy(), atol=2e-3)
    if max(shape) > 64:  # shrinking: without antialiasing the values differ
        assert np.abs(plain - resized).max() > 1.0


def test_train_preprocess_is_the_random_resized_crop_flipped_or_not(photo):
    # The flip is applied to the crop before resizing; it must equal flipping the resized crop.
    image = tf.constant(photo)
    flipped = []
    for step in range(8):
        seed = tf.constant([5, step], tf.int64)
        output = train_preprocess(image, 48, seed=seed).numpy()
        crop = random_resized_crop(image, 48, seed=seed).numpy()
        # Flipping before the resize mirrors the float32 sample positions (< 120 px, half an ulp
        # 3.8e-6 px) times pixel differences < 255: <= ~1e-3 (7.6e-5 seen); unflipped vs flipped
        # differ by tens.
        if np.allclose(output, crop, atol=1e-3):
            flipped.append(False)
        else:
            np.testing.assert_allclose(output, crop[:, ::-1], atol=1e-3)
            flipped.append(True)
    assert any(flipped) and not all(flipped)


def test_random_resized_crop_covers_the_requested_area(photo):
    # A crop of the full area with the image's own aspect is the resized image.
    image = tf.constant(photo)
    crop = random_resized_crop(
        image, 60, scale=(1.0, 1.0), ratio=(120 / 90, 120 / 90), seed=tf.constant([1, 2], tf.int64)
    )
    full = tf.image.resize(tf.cast(image, tf.float32), [60, 60], antialias=True)
    # The same op on the same pixels: bit-identical here; 1e-3 is the float32 bound should the sample
    # positions be computed differently (a box off by one pixel would differ by tens).
    np.testing.assert_allclose(crop.numpy(), full.numpy(), atol=1e-3)


def test_eval_preprocess_is_the_centre_crop_and_deterministic(photo, run_mode):
    image = tf.constant(photo)
    first = run_mode(lambda x: eval_preprocess(x, 80, 64))(image).numpy()
    second = eval_preprocess(image, 80, 64).numpy()
    assert first.shape == (64, 64, 3) and first.dtype == np.float32
    # tf.function vs eager: the same ops, bit-identical here; 1e-4 is ~7 ulps at 255.
    np.testing.assert_allclose(first, second, atol=1e-4)
    # Shorter side 90 -> 80: the image becomes 80 x 107; the centre 64 x 64 starts at (8, 21).
    resized = tf.image.resize(tf.cast(image, tf.float32), [80, 107], antialias=True).numpy()
    np.testing.assert_allclose(first, resized[8:72, 21:85], atol=1e-3)  # same op (bit-identical here), as above


@pytest.mark.parametrize("mode,fmt,tolerance", [("RGB", "JPEG", 3.0), ("CMYK", "JPEG", 3.0), ("RGBA", "PNG", 0.0)])
def test_train_image_from_bytes_matches_decode_then_crop(photo, mode, fmt, tolerance, run_mode):
    encoded = tf.constant(encode(photo, mode, fmt))
    for step in range(4):
        seed = tf.constant([3, step], tf.int64)
        windowed = run_mode(lambda data, s: train_image_from_bytes(data, 48, seed=s))(encoded, seed).numpy()
        full = train_preprocess(decode_rgb(encoded), 48, seed=seed).numpy()
        assert windowed.shape == (48, 48, 3) and windowed.dtype == np.float32
        assert np.abs(windowed - full).mean() <= tolerance
