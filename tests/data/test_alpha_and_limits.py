"""Images as people see them: alpha composited onto a background; huge headers refused before decoding."""

import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from data.gif_bytes import lzw as gif_lzw
from PIL import Image

from tf_langdml.data import Split, load_image_folder, make_eval_dataset, make_train_dataset
from tf_langdml.data.preprocessing import (
    BMP,
    GIF,
    JPEG,
    PNG,
    UNKNOWN,
    decode_rgb,
    header_image_size,
    image_format,
    parse_background,
    train_image_from_bytes,
)

BACKGROUNDS = [("white", (255, 255, 255)), ("black", (0, 0, 0)), ([10, 200, 30], (10, 200, 30))]


def encode(image, fmt="PNG", **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def reference_composite(rgba, background, maximum=255.0):
    """The compositing formula in float64: rgb * a + background * (1 - a), rounded to 8 bits."""
    rgba = rgba.astype(np.float64)
    alpha = rgba[..., 3:] / maximum
    rgb = rgba[..., :3] * 255.0 / maximum
    return np.round(rgb * alpha + np.asarray(background, np.float64) * (1.0 - alpha)).astype(np.uint8)


@pytest.fixture
def rgba_pixels():
    """Random colours and every kind of alpha: opaque, transparent and half-transparent pixels."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    pixels[0, :, 3], pixels[1, :, 3] = 0, 255
    return pixels


def png_with_header_size(width, height):
    """A valid 69-byte PNG whose header claims width x height (its data could never fill it)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


def transparent_png(size=(20, 30), hidden=(200, 0, 0)):
    """A fully transparent RGBA PNG whose invisible pixels hold ``hidden`` (what dropping alpha shows)."""
    pixels = np.zeros(size + (4,), np.uint8)
    pixels[..., :3] = hidden
    return encode(Image.fromarray(pixels, "RGBA"))


@pytest.mark.parametrize("background,expected", BACKGROUNDS)
def test_rgba_png_is_composited_exactly(rgba_pixels, background, expected, run_mode):
    decoded = run_mode(lambda data: decode_rgb(data, background))(
        tf.constant(encode(Image.fromarray(rgba_pixels)))
    ).numpy()
    reference = reference_composite(rgba_pixels, expected)
    # Float32 products of 8-bit values round to the same integer as float64 except at exact .5 ties.
    assert np.abs(decoded.astype(int) - reference).max() <= 1
    assert (decoded == reference).mean() > 0.99
    np.testing.assert_array_equal(decoded[0], np.broadcast_to(expected, decoded[0].shape))  # alpha 0
    np.testing.assert_array_equal(decoded[1], rgba_pixels[1, :, :3])  # alpha 255


@pytest.mark.parametrize("background,expected", BACKGROUNDS)
def test_grey_alpha_palette_trns_and_gif_transparency(background, expected, run_mode):
    decode = run_mode(lambda data: decode_rgb(data, background))
    grey = np.zeros((4, 5, 2), np.uint8)
    grey[..., 0], grey[0, 0] = 90, (90, 255)
    decoded = decode(tf.constant(encode(Image.fromarray(grey, "LA")))).numpy()
    assert tuple(decoded[0, 0]) == (90, 90, 90) and tuple(decoded[2, 3]) == expected

    for fmt in ("PNG", "GIF"):  # palette image, colour index 1 marked transparent (PNG tRNS / GIF89a)
        palette = Image.new("P", (6, 4))
        palette.putpalette([250, 10, 10, 0, 0, 0, 10, 10, 250] + [0] * 759)
        for x in range(6):
            palette.putpixel((x, 1), 1)
        palette.putpixel((0, 0), 2)
        decoded = decode(tf.constant(encode(palette, fmt, transparency=1))).numpy()
        assert decoded.shape == (4, 6, 3)
        np.testing.assert_array_equal(decoded[1], np.broadcast_to(expected, (6, 3)))
        assert tuple(decoded[0, 0]) == (10, 10, 250) and tuple(decoded[0, 1]) == (250, 10, 10)


def test_gif_without_transparency_and_with_a_local_colour_table_after_extensions():
    plain = Image.new("P", (5, 3))
    plain.putpalette([1, 2, 3, 40, 50, 60] + [0] * 762)
    plain.putpixel((1, 1), 1)
    decoded = decode_rgb(tf.constant(encode(plain, "GIF"))).numpy()
    assert tuple(decoded[1, 1]) == (40, 50, 60) and tuple(decoded[0, 0]) == (1, 2, 3)
    # Hand-made GIF89a: a comment extension before the control extension, no global
    # table, a local colour table, index 0 transparent.
    local_table = bytes([9, 8, 7, 100, 110, 120])
    pixels = bytes([0, 1, 1, 0])  # 2 x 2
    lzw = gif_lzw(pixels, min_code_size=2)
    data = (
        b"GIF89a"
        + struct.pack("<HH", 2, 2)
        + bytes([0x00, 0, 0])
        + b"\x21\xfe"
        + bytes([5])
        + b"hello"
        + b"\x00"
        + b"\x21\xf9\x04"
        + bytes([0x01, 0, 0, 0])
        + b"\x00"
        + b"\x2c"
        + struct.pack("<HHHH", 0, 0, 2, 2)
        + bytes([0x80])
        + local_table
        + bytes([2])
        + bytes([len(lzw)])
        + lzw
        + b"\x00"
        + b"\x3b"
    )
    decoded = decode_rgb(tf.constant(data), "black").numpy()
    np.testing.assert_array_equal(decoded.reshape(4, 3), [[0, 0, 0], [100, 110, 120], [100, 110, 120], [0, 0, 0]])
    assert tuple(header_image_size(tf.constant(data)).numpy()) == (2, 2)


def test_16_bit_png_is_rounded_to_8_bits_not_truncated(run_mode):
    rgb16 = np.array([[[2570, 300, 65280], [65535, 0, 128]]], np.uint16)  # 65280 / 257 = 254.0; its high byte is 255
    decoded = run_mode(decode_rgb)(tf.io.encode_png(rgb16)).numpy()
    np.testing.assert_array_equal(decoded, np.round(rgb16 / 257.0).astype(np.uint8))
    assert tuple(decoded[0, 0]) == (10, 1, 254)
    rgba16 = np.zeros((2, 3, 4), np.uint16)
    rgba16[0] = [65280, 514, 0, 65535]
    rgba16[1] = [65535, 65535, 65535, 32768]
    decoded = decode_rgb(tf.io.encode_png(rgba16), "black").numpy()
    np.testing.assert_array_equal(decoded, reference_composite(rgba16, (0, 0, 0), 65535.0))


def test_bmp_and_jpeg_decode_as_before(rgba_pixels):
    rgb = rgba_pixels[..., :3]
    bmp = decode_rgb(tf.constant(encode(Image.fromarray(rgb), "BMP"))).numpy()
    np.testing.assert_array_equal(bmp, rgb)
    jpeg = encode(Image.fromarray(rgb), "JPEG", quality=95)
    np.testing.assert_array_equal(decode_rgb(tf.constant(jpeg)).numpy(), tf.io.decode_jpeg(jpeg, channels=3).numpy())


def test_formats_and_header_sizes_without_decoding():
    image = Image.new("RGB", (37, 23))
    samples = {
        JPEG: encode(image, "JPEG"),
        PNG: encode(image),
        GIF: encode(image.convert("P"), "GIF"),
        BMP: encode(image, "BMP"),
    }
    np.testing.assert_array_equal(
        image_format(tf.constant(list(samples.values()) + [b"", b"text"])).numpy(),
        [JPEG, PNG, GIF, BMP, UNKNOWN, UNKNOWN],
    )
    for data in samples.values():
        assert tuple(header_image_size(tf.constant(data)).numpy()) == (23, 37)
    top_down = bytearray(samples[BMP])
    top_down[22:26] = struct.pack("<i", -23)  # negative height: rows stored top-down
    assert tuple(header_image_size(tf.constant(bytes(top_down))).numpy()) == (23, 37)
    assert tuple(header_image_size(tf.constant(png_with_header_size(100_000, 100_000))).numpy()) == (100_000, 100_000)


def test_a_huge_header_is_refused_before_decoding(run_mode):
    huge = tf.constant(png_with_header_size(100_000, 100_000))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"declares 100000 x 100000 pixels.*max_pixels = 64000000"):
        run_mode(decode_rgb)(huge)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_pixels = 64000000"):
        train_image_from_bytes(huge, 16, seed=[0, 0])
    small = tf.constant(encode(Image.new("RGB", (40, 30))))
    with pytest.raises(tf.errors.InvalidArgumentError, match="declares 30 x 40 pixels.*max_pixels = 1000"):
        decode_rgb(small, max_pixels=1000)
    assert decode_rgb(small, max_pixels=1200).shape == (30, 40, 3)
    jpeg = tf.constant(encode(Image.new("RGB", (40, 30)), "JPEG"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_pixels = 1000"):
        train_image_from_bytes(jpeg, 16, seed=[0, 0], max_pixels=1000)  # the JPEG window path
    assert train_image_from_bytes(jpeg, 16, seed=[0, 0], max_pixels=1200).shape == (16, 16, 3)


def test_empty_and_unknown_bytes_name_the_problem():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"empty \(0 bytes\)"):
        decode_rgb(tf.constant(b""))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Not a JPEG, PNG, GIF or BMP image: it is 11 bytes"):
        decode_rgb(tf.constant(b"hello world"))


def test_background_values():
    assert parse_background("white") == (255, 255, 255) and parse_background([1, 2, 3]) == (1, 2, 3)
    for bad in ("grey", [1, 2], [0, 0, 256], [0.5, 0, 0], [True, 0, 0]):
        with pytest.raises(ValueError, match="background"):
            parse_background(bad)


@pytest.fixture
def transparent_split(tmp_path):
    """Two classes of fully transparent PNGs whose hidden colour is red (black if alpha were dropped to 0)."""
    root = tmp_path / "images"
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for index in range(2):
            (root / name / f"{index}.png").write_bytes(transparent_png())
    return lambda background: load_image_folder(root, test_classes=["c"], background=background).train_split


@pytest.mark.parametrize("background,expected", BACKGROUNDS)
def test_train_and_eval_pipelines_composite_onto_the_background(transparent_split, background, expected):
    split = transparent_split(background)
    assert split.background == expected
    for dataset in (make_train_dataset(split, 4, 2, image_size=16), make_eval_dataset(split, 4, image_size=16)):
        images, _ = next(iter(dataset))
        np.testing.assert_allclose(images.numpy(), np.broadcast_to(np.float32(expected), images.shape), atol=1e-3)


def test_the_pseudo_label_pass_sees_the_background(transparent_split, tmp_path):
    from tf_langdml import keras
    from tf_langdml.language import IMAGENET_CLASS_NAMES, first_synonym, prime, pseudo_label_table
    from tf_langdml.models import classifier_fingerprint

    # Mean RGB -> logits: 0 wins on white, 1 on black, 2 on the hidden red of the pixels.
    images = keras.Input((16, 16, 3))
    dense = keras.layers.Dense(1000)
    classifier = keras.Model(images, dense(keras.layers.GlobalAveragePooling2D()(images)))
    kernel = np.zeros((3, 1000), np.float32)
    kernel[:, 0], kernel[:, 1], kernel[:, 2] = [1, 1, 1], [-1, -1, -1], [2, -1, -1]
    bias = np.zeros(1000, np.float32)
    bias[1], bias[3:] = 1.0, -1e4
    dense.set_weights([kernel, bias])
    texts = sorted(set(prime([first_synonym(name) for name in IMAGENET_CLASS_NAMES])))
    np.savez(tmp_path / "enc.npz", texts=np.array(texts), embeddings=np.eye(len(texts), 4, dtype=np.float32) + 0.1)
    for background, winner in (("white", 0), ("black", 1)):
        _, labels = pseudo_label_table(
            classifier,
            transparent_split(background),
            f"precomputed:{tmp_path / 'enc.npz'}",
            k=1,
            cache_dir=tmp_path / "cache",
            verbose=False,
            classifier_key=classifier_fingerprint(classifier),
        )
        assert labels.indices[:, 0].tolist() == [winner, winner]


def test_folder_scan_skips_huge_headers_with_the_counted_warning(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for index in range(2):
            (tmp_path / name / f"{index}.png").write_bytes(encode(Image.new("RGB", (8, 8), (9, 9, 9))))
    (tmp_path / "a" / "bomb.png").write_bytes(png_with_header_size(100_000, 100_000))
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.warns(
        UserWarning,
        match=r"Skipped 3 file\(s\).*1 without an image extension.*1 not decodable.*"
        r"1 above max_pixels=64000000.*bomb.png",
    ):
        data = load_image_folder(tmp_path)
    assert sorted(path.rsplit("/", 1)[-1] for path in data.skipped_files) == ["bomb.png", "broken.jpg", "notes.txt"]
    assert len(data.train_split.sources) == 2
    with pytest.raises(ValueError, match="max_pixels"):
        Split(np.array(["x"]), np.array([0]), ("a",), ("a",), max_pixels=0)


def test_a_split_decodes_with_only_the_formats_it_holds(tmp_path):
    from tf_langdml.data.preprocessing import source_formats

    jpeg, png = encode(Image.new("RGB", (6, 4), (9, 99, 199)), "JPEG"), encode(Image.new("RGBA", (6, 4)))
    assert source_formats([jpeg, png, b"BMxx", b"GIF89a..", b"??"], from_files=False) == (
        "BMP",
        "GIF",
        "JPEG",
        "PNG",
        "unknown",
    )
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.jpg").write_bytes(jpeg)
    (tmp_path / "c" / "1.png").write_bytes(png)
    data = load_image_folder(tmp_path, test_classes=["c"])
    assert data.train_split.formats == ("JPEG",) and data.test_split.formats == ("JPEG", "PNG")
    # The JPEG-only decoder has no PNG branch: a PNG fails in the decode op, which names the format.
    with pytest.raises(tf.errors.InvalidArgumentError, match="JPEG"):
        decode_rgb(tf.constant(png), formats=("JPEG",))
    for formats in (("JPEG",), ("JPEG", "PNG"), None):
        np.testing.assert_array_equal(
            decode_rgb(tf.constant(jpeg), formats=formats).numpy(), tf.io.decode_jpeg(jpeg, channels=3).numpy()
        )
    images, _ = next(iter(make_eval_dataset(data.test_split, 2, image_size=8)))
    np.testing.assert_allclose(images[1].numpy(), 255.0, atol=1e-3)  # the transparent PNG, on white
