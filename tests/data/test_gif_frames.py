"""GIFs are checked by their first image's extent and decoded to their first frame only (issue 25)."""

import io

import numpy as np
import pytest
import tensorflow as tf
from data.gif_bytes import PALETTE, comment, frame, gif, image_block, lzw
from PIL import Image

from tf_langdml.data import load_image_folder
from tf_langdml.data.preprocessing import (
    _GIF_BLOCK_STEPS,
    _GIF_RUN_STEPS,
    decode_rgb,
    header_image_size,
    train_image_from_bytes,
)

COLOURS = np.frombuffer(PALETTE, np.uint8).reshape(4, 3)


def giant_frame_gif(width=9000, height=9000, left=0, top=0):
    """A 1 x 1 screen holding one frame that claims width x height; its tiny data could never fill it."""
    return gif((1, 1), [image_block(left, top, width, height, lzw([1, 2, 3, 0]))])


@pytest.mark.parametrize("left,top,expected", [(0, 0, (9000, 9000)), (20_000, 30_000, (39_000, 29_000))])
def test_a_small_screen_with_a_giant_frame_is_refused_by_its_frame(left, top, expected, run_mode):
    data = tf.constant(giant_frame_gif(left=left, top=top))
    # The frame's extent, offsets included: the screen (1 x 1) would let it through.
    assert tuple(header_image_size(data).numpy()) == expected
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=rf"declares {expected[0]} x {expected[1]} pixels.*max_pixels = 64000000"
    ):
        run_mode(decode_rgb)(data)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_pixels = 64000000"):
        train_image_from_bytes(data, 16, seed=[0, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_pixels = 64000000"):
        decode_rgb(data, formats=("GIF",))


def test_the_folder_scan_counts_the_giant_frame_as_too_large(tmp_path):
    good = gif((2, 2), [frame(0, 0, 2, 2, [0, 1, 2, 3])])
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ok.gif").write_bytes(good)
    (tmp_path / "a" / "bomb.gif").write_bytes(giant_frame_gif())
    with pytest.warns(
        UserWarning, match=r"Skipped 1 file\(s\).*0 not decodable.*1 above max_pixels=64000000.*bomb.gif"
    ):
        data = load_image_folder(tmp_path)
    assert [path.rsplit("/", 1)[-1] for path in data.skipped_files] == ["bomb.gif"]


def test_a_multi_frame_gif_decodes_to_exactly_its_first_frame(run_mode):
    first, second = [0, 1, 2, 3, 3, 2], [3] * 15
    # A later frame larger than the screen: TensorFlow's own decoder sizes every frame by it.
    data = gif((3, 2), [frame(0, 0, 3, 2, first), comment(), frame(0, 0, 5, 3, second), frame(1, 1, 2, 1, [1, 1])])
    assert tf.io.decode_gif(data).shape == (3, 3, 5, 3)
    decoded = run_mode(decode_rgb)(tf.constant(data)).numpy()
    np.testing.assert_array_equal(decoded, COLOURS[np.reshape(first, (2, 3))])
    assert tuple(header_image_size(tf.constant(data)).numpy()) == (2, 3)


def test_pil_animations_decode_to_the_frame_pil_shows_first():
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (12, 17, 3), dtype=np.uint8)).convert("P") for _ in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], loop=0, duration=50)
    decoded = decode_rgb(tf.constant(buffer.getvalue())).numpy()
    with Image.open(io.BytesIO(buffer.getvalue())) as opened:
        assert opened.n_frames == 3
        np.testing.assert_array_equal(decoded, np.asarray(opened.convert("RGB")))


@pytest.mark.parametrize("sizes", [(255,), (254,), (1,), (1, 2), (7, 200, 3)])
def test_any_sub_block_layout_is_walked_to_the_same_first_frame(sizes):
    """Equal runs take the strided first phase; mixed small sub-blocks need the terminator table."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 4, 40 * 30).tolist()
    data = gif((40, 30), [comment(), frame(0, 0, 40, 30, pixels, sizes), frame(0, 0, 40, 30, [0] * 1200)])
    np.testing.assert_array_equal(decode_rgb(tf.constant(data)).numpy(), COLOURS[np.reshape(pixels, (30, 40))])


def test_damaged_and_block_flooded_gifs_are_refused_as_damaged():
    pixels = [0, 1, 2, 3]
    good = gif((2, 2), [frame(0, 0, 2, 2, pixels)])
    damaged = {
        "truncated inside the image data": good[:-4],
        "a byte that starts no block": gif((2, 2), [b"\x99", frame(0, 0, 2, 2, pixels)]),
        "no image before the trailer": gif((2, 2), []),
        # A one-byte comment takes 3 walk steps (block, sub-block, terminator); so does the image.
        "too many blocks before the first image": gif(
            (2, 2), [comment()] * ((_GIF_BLOCK_STEPS + _GIF_RUN_STEPS) // 3) + [frame(0, 0, 2, 2, pixels)]
        ),
    }
    for what, data in damaged.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"GIF \(\d+ bytes\) is truncated or damaged"):
            decode_rgb(tf.constant(data))
            pytest.fail(what)
    many = gif((2, 2), [comment()] * ((_GIF_BLOCK_STEPS + _GIF_RUN_STEPS) // 3 - 1) + [frame(0, 0, 2, 2, pixels)])
    np.testing.assert_array_equal(decode_rgb(tf.constant(many)).numpy(), COLOURS[np.reshape(pixels, (2, 2))])


def test_exif_orientation_is_ignored_as_by_the_papers_pil_loader():
    """docs/data.md: pixels as stored, whatever the EXIF Orientation tag (6: rotate 90 degrees to view)."""
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[:, :3] = 255  # left half white: rotation would move it
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", quality=100, exif=exif.tobytes())
    with Image.open(io.BytesIO(buffer.getvalue())) as opened:
        assert opened.getexif()[0x0112] == 6
        as_pil_loads = np.asarray(opened.convert("RGB"))
    decoded = decode_rgb(tf.constant(buffer.getvalue())).numpy()
    assert decoded.shape == as_pil_loads.shape == (4, 6, 3)
    # JPEG at quality 100 is near-lossless on a two-colour block image; rotated, the halves would swap places.
    assert decoded[:, :2].min() > 200 and decoded[:, 4:].max() < 50


def test_the_serving_bad_request_message_sees_the_giant_frame():
    """serving_modules.bad_image_rows_message reads header_image_size, so a bad request names the GIF's real size."""
    from tf_langdml.serving_modules import bad_image_rows_message

    small = gif((2, 2), [frame(0, 0, 2, 2, [0, 1, 2, 3])])
    message = bad_image_rows_message(tf.constant([small, giant_frame_gif()]), tf.constant([True, False]))
    # Only row 1, and for its size (the wording is export.py's).
    assert message.numpy().decode().startswith("row 1: ") and "row 0" not in message.numpy().decode()
    assert "max_pixels = 64000000" in message.numpy().decode()
