"""Priming, the on-disk embedding cache and the ELG table."""

import numpy as np
import pytest
from helpers import synthetic_problem, tiny_guided_model

from tf_langdml import keras
from tf_langdml.language import PrecomputedTextEncoder, expert_language_table, prime, text_embeddings
from tf_langdml.language.text_embeddings import _cache_path

NAMES = ["sparrow", "finch", "pickup truck"]


def test_prime_fills_the_template():
    assert prime(NAMES) == ["a photo of a sparrow", "a photo of a finch", "a photo of a pickup truck"]
    assert prime(["  owl "], "{}") == ["owl"]
    assert prime(["owl"], "an image of a {}, a bird") == ["an image of a owl, a bird"]


@pytest.mark.parametrize("template", ["a photo of a", "a photo of a {0}", None])
def test_a_template_without_braces_is_an_error(template):
    with pytest.raises(ValueError, match="has no '{}'"):
        prime(NAMES, template)


def test_empty_names_are_errors():
    with pytest.raises(ValueError, match="empty"):
        prime([])
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        prime(["owl", ""])
    with pytest.raises(TypeError, match="not one string"):
        prime("owl")


@pytest.fixture
def clip_file(tmp_path):
    rng = np.random.default_rng(3)
    texts = prime(NAMES) + prime(NAMES, "a {}")
    path = tmp_path / "clip.npz"
    np.savez(path, texts=np.array(texts), embeddings=rng.normal(size=(len(texts), 4)).astype(np.float32))
    return path


def test_second_call_hits_the_cache_without_loading_the_encoder(clip_file, tmp_path):
    first_encoder = PrecomputedTextEncoder(clip_file)
    first = text_embeddings(NAMES, first_encoder, cache_dir=tmp_path / "cache")
    assert first_encoder.loads == 1
    second_encoder = PrecomputedTextEncoder(clip_file)
    second = text_embeddings(NAMES, second_encoder, cache_dir=tmp_path / "cache")
    assert second_encoder.loads == 0
    np.testing.assert_array_equal(first, second)
    # Another template or other names are other keys: a miss.
    text_embeddings(NAMES, second_encoder, template="a {}", cache_dir=tmp_path / "cache")
    assert second_encoder.loads == 1
    assert len(list((tmp_path / "cache" / "text_embeddings").glob("*.npz"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_texts", "not_normalised"])
def test_a_damaged_cache_file_is_recomputed(clip_file, tmp_path, damage):
    cache = tmp_path / "cache"
    good = text_embeddings(NAMES, PrecomputedTextEncoder(clip_file), cache_dir=cache)
    path, key = _cache_path(PrecomputedTextEncoder(clip_file).id, "a photo of a {}", NAMES, cache)
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "wrong_texts":
        np.savez(open(path, "wb"), key=np.array(key), texts=np.array(["x", "y", "z"]), embeddings=good)
    else:
        np.savez(open(path, "wb"), key=np.array(key), texts=np.array(prime(NAMES)), embeddings=good * 3)
    encoder = PrecomputedTextEncoder(clip_file)
    with pytest.warns(UserWarning, match="damaged text-embedding cache"):
        again = text_embeddings(NAMES, encoder, cache_dir=cache)
    assert encoder.loads == 1
    np.testing.assert_allclose(again, good)  # the same code on the same file: bit-identical (rtol 1e-7)
    repaired = PrecomputedTextEncoder(clip_file)
    text_embeddings(NAMES, repaired, cache_dir=cache)
    assert repaired.loads == 0  # the recomputed file was written back and is trusted again


def test_expert_language_table_shape_and_rows(clip_file, tmp_path):
    table = expert_language_table(NAMES, f"precomputed:{clip_file}", cache_dir=tmp_path)
    assert table.shape == (3, 1, 4) and table.dtype == np.float32
    # float32 normalisation then norm of 4 terms: <= ~2 x (4/2 + 2) x 2^-24 = 5e-7.
    np.testing.assert_allclose(np.linalg.norm(table, axis=-1), 1.0, atol=1e-6)


def test_minilm_elg_table_trains_a_language_guided_model(minilm_encoder):
    images, labels = synthetic_problem(num_classes=3, per_class=4)
    table = expert_language_table(NAMES, minilm_encoder)
    assert table.shape == (3, 1, 384)
    # Nearer classes in language space: sparrow-finch over sparrow-truck.
    assert table[0, 0] @ table[1, 0] > table[0, 0] @ table[2, 0]
    model = tiny_guided_model(table, optimizer=keras.optimizers.SGD(0.01), language_weight=1.0)
    history = model.fit(images, labels, batch_size=12, epochs=1, verbose=0)
    assert np.isfinite(history.history["language_loss"][0]) and history.history["language_loss"][0] > 0
