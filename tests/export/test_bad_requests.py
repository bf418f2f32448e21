"""The exported signatures on hostile and odd requests, in a fresh process; alpha decoded as in training."""

import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from helpers import quiet_env
from PIL import Image

from tf_langdml.data import decode_rgb, eval_preprocess
from tf_langdml.export import ASSET_NAME, export_embedder

SIZE = 32
BACKGROUND = (20, 120, 220)  # not the default, so the test sees that the export keeps it


def encode(image, fmt="PNG", **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def huge_png():
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + chunk(b"IEND", b"")
    )


def photo(seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=95)


def transparent_rgba():
    pixels = np.zeros((30, 30, 4), np.uint8)
    pixels[..., 0] = 255  # invisible red
    return encode(Image.fromarray(pixels, "RGBA"))


GOOD, OTHER = photo(0), photo(1)
DIM, ITEMS = 8, 6
STRINGS = "string"


def images(*encoded):
    return {"images": (list(encoded), STRINGS)}


def floats(**arrays):
    return {name: (np.asarray(value, np.float32), "float32") for name, value in arrays.items()}


def nan_pixels():
    pixels = np.full((3, SIZE, SIZE, 3), 128, np.float32)
    pixels[1, 5, 7, 2] = np.nan
    pixels[2, 0, 0, 0] = np.inf
    return pixels


QUERY = np.linspace(-1, 1, DIM, dtype=np.float32)
# Each request: (signature, {input: (value, dtype)}); its outcome is recorded on its own (tests below).
REQUESTS = {
    "empty": ("serving_default", images(b"")),
    "truncated_jpeg": ("serving_default", images(GOOD[: len(GOOD) // 2])),
    "text": ("serving_default", images(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")),
    "one_pixel": ("serving_default", images(encode(Image.new("RGB", (1, 1), (200, 30, 60))))),
    "huge_header": ("serving_default", images(huge_png())),
    "mixed": ("serving_default", images(GOOD, b"", OTHER, huge_png(), GOOD[:300])),
    "good_after_errors": ("serving_default", images(GOOD, OTHER)),
    "transparent": ("serving_default", images(transparent_rgba())),
    "no_images": ("serving_default", images()),
    "embed_no_images": ("embed_images", floats(images=np.zeros((0, SIZE, SIZE, 3)))),
    "search_no_images": ("search", {**images(), "k": (3, "int32")}),
    "search_no_embeddings": ("search_embeddings", {**floats(embeddings=np.zeros((0, DIM))), "k": (3, "int32")}),
    "no_embeddings_bad_k": ("search_embeddings", {**floats(embeddings=np.zeros((0, DIM))), "k": (0, "int32")}),
    "wrong_size": ("embed_images", floats(images=np.full((1, SIZE + 1, SIZE + 1, 3), 128))),
    "nan_pixels": ("embed_images", floats(images=nan_pixels())),
    "bad_queries": (
        "search_embeddings",
        {
            **floats(embeddings=[QUERY, np.full(DIM, np.nan), np.full(DIM, np.inf), np.zeros(DIM), QUERY]),
            "k": (2, "int32"),
        },
    ),
    "wrong_dim_queries": ("search_embeddings", {**floats(embeddings=np.ones((1, DIM + 1))), "k": (2, "int32")}),
    "scaled_queries": (
        "search_embeddings",
        {**floats(embeddings=[QUERY, QUERY * 1e30, QUERY * 1e-30]), "k": (ITEMS, "int32")},
    ),
}

# One JSON line per request, written as soon as it is answered: an exception (of any type) is that request's
# outcome, and a request that kills the process loses only the requests after it, each failing its own test.
SCRIPT = """
import json, pickle, sys
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
requests = pickle.load(open(sys.argv[2], "rb"))
with open(sys.argv[3], "w") as out:
    for name, (signature, inputs) in requests.items():
        try:
            feed = {key: tf.constant(value, getattr(tf, dtype)) for key, (value, dtype) in inputs.items()}
            outputs = {key: value.numpy() for key, value in loaded.signatures[signature](**feed).items()}
            outcome = {key: {"shape": list(value.shape), "values": (value.astype(bytes).astype(str)
                                                                    if value.dtype == object else value).tolist()}
                       for key, value in outputs.items()}
        except Exception as error:  # any failure is this request's recorded outcome
            outcome = {"error_type": type(error).__name__, "error": getattr(error, "message", None) or str(error)}
        out.write(json.dumps({"name": name, **outcome}) + "\\n")
        out.flush()
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, guarded_embedder):
    """(in-memory embedder, export path, gallery, {request name: outcome} from a fresh serving process, stderr)."""
    import pickle

    from tf_langdml.gallery import Gallery

    folder = tmp_path_factory.mktemp("bad_requests")
    embedder = guarded_embedder(SIZE, DIM)  # fails on an empty batch on every CPU (conftest.py)
    vectors = np.random.default_rng(3).standard_normal((ITEMS, DIM)).astype(np.float32)
    gallery = Gallery(vectors, [f"item{row}" for row in range(ITEMS)], ["a", "b"] * (ITEMS // 2))
    path = export_embedder(embedder, folder / "model", background=list(BACKGROUND), gallery=gallery)
    (folder / "requests.pkl").write_bytes(pickle.dumps(REQUESTS))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(folder / "requests.pkl"), str(folder / "outcomes.jsonl")],
        capture_output=True,
        text=True,
        env=quiet_env(),
    )
    lines = (folder / "outcomes.jsonl").read_text().splitlines() if (folder / "outcomes.jsonl").exists() else []
    outcomes = {outcome.pop("name"): outcome for outcome in map(json.loads, lines)}
    return embedder, path, gallery, outcomes, result.stderr[-3000:]


def outcome_of(served, name):
    """The outcome of one request; a request the serving process never answered fails only its own test."""
    outcomes, stderr = served[3], served[4]
    assert name in outcomes, f"the serving process died before answering {name!r}: {stderr}"
    return outcomes[name]


def error_line(outcome, first_words):
    """The line of an error message that starts with the assertion carrying ``first_words``."""
    assert "error" in outcome, f"expected a refusal, got {outcome}"
    lines = [line for line in outcome["error"].splitlines() if first_words in line]
    assert lines, outcome["error"]
    return lines[0]


def bad_image_error(outcome):
    return error_line(outcome, "Bad image(s) in the request")


def in_memory(embedder, encoded):
    images = tf.stack([eval_preprocess(decode_rgb(tf.constant(item), BACKGROUND), size=SIZE) for item in encoded])
    return embedder(images, training=False).numpy()


@pytest.mark.parametrize(
    "name,message",
    [
        ("empty", "row 0: empty string (0 bytes)"),
        ("truncated_jpeg", "row 0: corrupt or truncated image data"),
        ("text", "row 0: not a JPEG, PNG, GIF or BMP image"),
        ("huge_header", "row 0: the header declares more than max_pixels = 64000000 pixels (not decoded)"),
    ],
)
def test_a_bad_image_fails_the_request_with_its_row_and_reason(served, name, message):
    error = bad_image_error(outcome_of(served, name))
    assert error.startswith("assertion failed: [Bad image(s) in the request; nothing was embedded.]")
    assert error.endswith(f"[{message}]"), error


def test_a_mixed_batch_fails_as_a_whole_and_names_each_bad_row(served):
    error = bad_image_error(outcome_of(served, "mixed"))
    assert error.endswith(
        "[row 1: empty string (0 bytes); row 3: the header declares more than max_pixels = 64000000 "
        "pixels (not decoded); row 4: the image header is damaged]"
    ), error
    assert "row 0" not in error and "row 2" not in error


def test_the_model_keeps_serving_after_bad_requests(served):
    embedder = served[0]
    embeddings = np.array(outcome_of(served, "good_after_errors")["embeddings"]["values"])
    # Same graph and inputs in another process: only float32 summation order may differ.
    np.testing.assert_allclose(embeddings, in_memory(embedder, [GOOD, OTHER]), atol=1e-5)


def test_a_one_pixel_image_is_served(served):
    embedder = served[0]
    embedding = np.array(outcome_of(served, "one_pixel")["embeddings"]["values"])
    np.testing.assert_allclose(embedding, in_memory(embedder, REQUESTS["one_pixel"][1]["images"][0]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


def test_serving_composites_alpha_onto_the_training_background(served):
    embedder, path = served[:2]
    metadata = json.loads((path / "assets" / ASSET_NAME).read_text())
    assert metadata["background"] == list(BACKGROUND) and metadata["max_pixels"] == 64_000_000
    plain = np.broadcast_to(np.float32(BACKGROUND), (1, SIZE, SIZE, 3))
    expected = embedder(tf.constant(plain), training=False).numpy()
    np.testing.assert_allclose(np.array(outcome_of(served, "transparent")["embeddings"]["values"]), expected, atol=1e-5)
    dropped_alpha = embedder(tf.constant(np.broadcast_to(np.float32([255, 0, 0]), (1, SIZE, SIZE, 3))), training=False)
    assert np.abs(expected - dropped_alpha.numpy()).max() > 1e-2  # the check above can tell the two apart


@pytest.mark.parametrize(
    "name,outputs",
    [
        ("no_images", {"embeddings": [0, DIM]}),
        ("embed_no_images", {"embeddings": [0, DIM]}),
        ("search_no_images", {"item_ids": [0, 3], "class_names": [0, 3], "scores": [0, 3], "indices": [0, 3]}),
        ("search_no_embeddings", {"item_ids": [0, 3], "class_names": [0, 3], "scores": [0, 3], "indices": [0, 3]}),
    ],
)
def test_an_empty_batch_is_answered_with_empty_outputs_without_the_network(served, name, outputs):
    """The served embedder fails on an empty batch (conftest.py): these answer only if it is not run."""
    outcome = outcome_of(served, name)
    assert "error" not in outcome, outcome
    assert {key: value["shape"] for key, value in outcome.items()} == outputs


def test_an_empty_batch_still_checks_k(served):
    error = error_line(outcome_of(served, "no_embeddings_bad_k"), "k must be between")
    assert "got k = 0 for a gallery of 6 items" in error


def test_embed_images_refuses_a_wrong_image_size_naming_both(served):
    error = error_line(outcome_of(served, "wrong_size"), "embed_images takes")
    assert (
        f"embed_images takes float32 RGB images of shape (batch, {SIZE}, {SIZE}, 3), values in [0, 255]; "
        f"got shape [1 {SIZE + 1} {SIZE + 1} 3]. Resize and centre-crop them to {SIZE} x {SIZE} first"
    ) in error


def test_embed_images_refuses_nan_and_inf_pixels_naming_the_rows(served):
    error = bad_image_error(outcome_of(served, "nan_pixels"))
    assert error.endswith("[row 1: NaN or Inf pixel values; row 2: NaN or Inf pixel values]"), error
    assert "row 0" not in error


def test_search_embeddings_refuses_nan_inf_and_zero_queries_naming_the_rows(served):
    error = error_line(outcome_of(served, "bad_queries"), "Bad query embedding(s)")
    assert error.endswith(
        "[Bad query embedding(s) in the request; nothing was searched.] [row 1: NaN or Inf "
        "values; row 2: NaN or Inf values; row 3: all zeros (a zero-length vector has no "
        "direction)]"
    ), error
    assert "row 0" not in error and "row 4" not in error


def test_search_embeddings_refuses_another_embedding_size(served):
    error = error_line(outcome_of(served, "wrong_dim_queries"), "search_embeddings takes")
    assert f"shape (batch, {DIM}); got shape [1 {DIM + 1}]" in error


def test_queries_of_any_finite_scale_find_the_same_neighbours(served):
    gallery = served[2]
    outcome = outcome_of(served, "scaled_queries")
    assert "error" not in outcome, outcome
    reference = gallery.embeddings.astype(np.float64) @ (QUERY / np.linalg.norm(QUERY))
    order = np.argsort(-reference, kind="stable")
    # 1e30 squared overflows float32 and 1e-30 squared underflows to 0; scaled by the row's largest entry first,
    # each row is the same unit vector up to a few float32 roundings (<= ~1e-6 per score for D = 8).
    for row in range(3):
        assert outcome["indices"]["values"][row] == order.tolist()
        assert outcome["item_ids"]["values"][row] == [f"item{index}" for index in order]
        np.testing.assert_allclose(outcome["scores"]["values"][row], reference[order], atol=1e-5)
