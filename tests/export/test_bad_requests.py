"""The exported serving signature on hostile and odd requests, in a fresh process; alpha decoded as in training."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_langdml.data import decode_rgb, eval_preprocess
from tf_langdml.export import ASSET_NAME, export_embedder
from tf_langdml.models import build_embedder

SIZE = 32
BACKGROUND = (20, 120, 220)  # not the default, so the test sees that the export keeps it


def encode(image, fmt="PNG", **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def huge_png():
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def photo(seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=95)


def transparent_rgba():
    pixels = np.zeros((30, 30, 4), np.uint8)
    pixels[..., 0] = 255  # invisible red
    return encode(Image.fromarray(pixels, "RGBA"))


GOOD, OTHER = photo(0), photo(1)
REQUESTS = {
    "empty": [b""],
    "truncated_jpeg": [GOOD[: len(GOOD) // 2]],
    "text": [b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"],
    "one_pixel": [encode(Image.new("RGB", (1, 1), (200, 30, 60)))],
    "huge_header": [huge_png()],
    "mixed": [GOOD, b"", OTHER, huge_png(), GOOD[:300]],
    "good_after_errors": [GOOD, OTHER],
    "transparent": [transparent_rgba()],
    "no_images": [],
}

SCRIPT = """
import json, pickle, sys
import numpy as np, tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
requests = pickle.load(open(sys.argv[2], "rb"))
outcomes = {}
for name, images in requests.items():
    try:
        embeddings = serve(images=tf.constant(images, tf.string))["embeddings"].numpy()
        outcomes[name] = {"embeddings": embeddings.tolist(), "shape": list(embeddings.shape)}
    except tf.errors.InvalidArgumentError as error:
        outcomes[name] = {"error": [line for line in error.message.splitlines() if "Bad image" in line][0]}
json.dump(outcomes, open(sys.argv[3], "w"))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(in-memory embedder, export path, outcome of every request in a fresh serving process)."""
    import pickle

    folder = tmp_path_factory.mktemp("bad_requests")
    embedder = build_embedder("toy_cnn", weights=None, embed_dim=8, input_shape=(SIZE, SIZE, 3))
    path = export_embedder(embedder, folder / "model", background=list(BACKGROUND))
    (folder / "requests.pkl").write_bytes(pickle.dumps(REQUESTS))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(folder / "requests.pkl"), str(folder / "outcomes.json")],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    return embedder, path, json.loads((folder / "outcomes.json").read_text())


def in_memory(embedder, encoded):
    images = tf.stack([eval_preprocess(decode_rgb(tf.constant(item), BACKGROUND), size=SIZE) for item in encoded])
    return embedder(images, training=False).numpy()


@pytest.mark.parametrize("name,message", [
    ("empty", "row 0: empty string (0 bytes)"),
    ("truncated_jpeg", "row 0: corrupt or truncated image data"),
    ("text", "row 0: not a JPEG, PNG, GIF or BMP image"),
    ("huge_header", "row 0: the header declares more than max_pixels = 64000000 pixels (not decoded)"),
])
def test_a_bad_image_fails_the_request_with_its_row_and_reason(served, name, message):
    outcome = served[2][name]
    assert "embeddings" not in outcome
    assert outcome["error"].startswith("assertion failed: [Bad image(s) in the request; nothing was embedded.]")
    assert outcome["error"].endswith(f"[{message}]"), outcome["error"]


def test_a_mixed_batch_fails_as_a_whole_and_names_each_bad_row(served):
    error = served[2]["mixed"]["error"]
    assert error.endswith(
        "[row 1: empty string (0 bytes); row 3: the header declares more than max_pixels = 64000000 "
        "pixels (not decoded); row 4: the image header is damaged]"), error
    assert "row 0" not in error and "row 2" not in error


def test_the_model_keeps_serving_after_bad_requests(served):
    embedder, _, outcomes = served
    embeddings = np.array(outcomes["good_after_errors"]["embeddings"])
    # Same graph and inputs in another process: only float32 summation order may differ.
    np.testing.assert_allclose(embeddings, in_memory(embedder, [GOOD, OTHER]), atol=1e-5)
    assert outcomes["no_images"]["shape"] == [0, 8]


def test_a_one_pixel_image_is_served(served):
    embedder, _, outcomes = served
    embedding = np.array(outcomes["one_pixel"]["embeddings"])
    np.testing.assert_allclose(embedding, in_memory(embedder, REQUESTS["one_pixel"]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


def test_serving_composites_alpha_onto_the_training_background(served):
    embedder, path, outcomes = served
    metadata = json.loads((path / "assets" / ASSET_NAME).read_text())
    assert metadata["background"] == list(BACKGROUND) and metadata["max_pixels"] == 64_000_000
    plain = np.broadcast_to(np.float32(BACKGROUND), (1, SIZE, SIZE, 3))
    expected = embedder(tf.constant(plain), training=False).numpy()
    np.testing.assert_allclose(np.array(outcomes["transparent"]["embeddings"]), expected, atol=1e-5)
    dropped_alpha = embedder(tf.constant(np.broadcast_to(np.float32([255, 0, 0]), (1, SIZE, SIZE, 3))), training=False)
    assert np.abs(expected - dropped_alpha.numpy()).max() > 1e-2  # the check above can tell the two apart
