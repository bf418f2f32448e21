"""build_text_encoder: TF-Hub sentence encoders and encoder + preprocessor pairs, precomputed files, errors."""

import collections
import urllib.error

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as text

from tf_langdml.language import HubTextEncoder, build_text_encoder, clear_loaded_models, encoders

SEQUENCE_LENGTH = 8


class TinySentenceEncoder(tf.Module):
    """Strings -> mean of hashed word vectors (the Universal-Sentence-Encoder interface)."""

    def __init__(self):
        super().__init__()
        self.table = tf.Variable(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, sentences):
        ids = tf.strings.to_hash_bucket_fast(tf.strings.split(tf.strings.lower(sentences)), 64)
        return tf.reduce_mean(tf.gather(self.table, ids), axis=1)


class TinyPreprocessor(tf.Module):
    """Strings -> BERT-style inputs, tokenised with a tensorflow-text op."""

    def __init__(self):
        super().__init__()
        self.tokenizer = text.WhitespaceTokenizer()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, sentences):
        tokens = self.tokenizer.tokenize(tf.strings.lower(sentences))[:, :SEQUENCE_LENGTH]
        ids = tf.cast(tf.strings.to_hash_bucket_fast(tokens, 30) + 1, tf.int32)
        word_ids = ids.to_tensor(0, shape=[None, SEQUENCE_LENGTH])
        mask = tf.cast(word_ids > 0, tf.int32)
        return {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": tf.zeros_like(word_ids)}


class TinyBertEncoder(tf.Module):
    """BERT-style inputs -> pooled_output, sequence_output and default."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(1)
        self.table = tf.Variable(rng.normal(size=(31, 6)).astype(np.float32))
        self.pool = tf.Variable(rng.normal(size=(6, 6)).astype(np.float32))

    @tf.function(
        input_signature=[
            {name: tf.TensorSpec([None, None], tf.int32) for name in ("input_word_ids", "input_mask", "input_type_ids")}
        ]
    )
    def __call__(self, inputs):
        sequence = tf.gather(self.table, inputs["input_word_ids"])
        pooled = tf.tanh(tf.matmul(sequence[:, 0], self.pool))
        return {"pooled_output": pooled, "sequence_output": sequence, "default": pooled}


@pytest.fixture(scope="module")
def hub_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    modules = {"sentence": TinySentenceEncoder(), "preprocessor": TinyPreprocessor(), "bert": TinyBertEncoder()}
    for name, module in modules.items():
        tf.saved_model.save(module, str(root / name))
    return {name: str(root / name) for name in modules}, modules


def normalized(array):
    array = np.asarray(array, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


SENTENCES = ["a photo of a sparrow", "A photo of a Finch", "pickup truck"]


def test_hub_sentence_encoder_from_a_local_folder(hub_folders):
    folders, modules = hub_folders
    encoder = build_text_encoder(f"hub:{folders['sentence']}")
    assert encoder.loads == 0  # built lazily
    embeddings = encoder.encode(SENTENCES)
    assert embeddings.dtype == np.float32 and embeddings.shape == (3, 8) and encoder.loads == 1
    # float32 normalisation of 8-d vectors vs float64: <= ~(8/2 + 2) x 2^-24 = 3.6e-7 on entries <= 1.
    np.testing.assert_allclose(embeddings, normalized(modules["sentence"](tf.constant(SENTENCES))), atol=1e-6)
    encoder.encode(SENTENCES)
    assert encoder.loads == 1
    assert encoder.id == build_text_encoder(f"hub:{folders['sentence']}").id


@pytest.mark.parametrize("output_key", [None, "pooled_output", "default", "mean"])
def test_hub_encoder_with_preprocessor(hub_folders, output_key):
    folders, modules = hub_folders
    encoder = build_text_encoder(f"hub:{folders['bert']}|{folders['preprocessor']}", output_key=output_key)
    inputs = modules["preprocessor"](tf.constant(SENTENCES))
    outputs = modules["bert"](inputs)
    if output_key == "mean":
        mask = tf.cast(inputs["input_mask"], tf.float32)[..., None]
        expected = tf.reduce_sum(outputs["sequence_output"] * mask, 1) / tf.reduce_sum(mask, 1)
    else:
        expected = outputs[output_key or "pooled_output"]
    # As above, plus ("mean") a masked mean of <= 8 tokens computed another way: a few more ulps.
    np.testing.assert_allclose(encoder.encode(SENTENCES), normalized(expected), atol=1e-6)


def test_hub_unknown_output_key_lists_the_outputs(hub_folders):
    folders, _ = hub_folders
    encoder = build_text_encoder(f"hub:{folders['bert']}|{folders['preprocessor']}", output_key="cls")
    with pytest.raises(KeyError, match="pooled_output"):
        encoder.encode(SENTENCES)


def test_the_id_changes_when_the_local_model_changes(tmp_path):
    module = TinySentenceEncoder()
    tf.saved_model.save(module, str(tmp_path / "model"))
    before = build_text_encoder(f"hub:{tmp_path / 'model'}").id
    module.table.assign(module.table * 2.0)
    tf.saved_model.save(module, str(tmp_path / "model"))
    assert build_text_encoder(f"hub:{tmp_path / 'model'}").id != before


@pytest.fixture
def loaded_models(monkeypatch):
    """The process's loaded models, empty for this test (the worker's MiniLM stays loaded outside it)."""
    models = collections.OrderedDict()
    monkeypatch.setattr(encoders, "_loaded_models", models)
    return models


def test_a_local_model_is_loaded_once_per_process_and_encodes_as_a_fresh_load(hub_folders, loaded_models):
    folders, _ = hub_folders
    first, second = (build_text_encoder(f"hub:{folders['sentence']}") for _ in range(2))
    embeddings = first.encode(SENTENCES)
    np.testing.assert_array_equal(second.encode(SENTENCES), embeddings)
    assert second._encoder is first._encoder and len(loaded_models) == 1
    # The same SavedModel on the same input through the same ops: the bits of a model loaded anew.
    fresh = encoders._load_hub_uncached(folders["sentence"])
    assert fresh is not first._encoder
    np.testing.assert_array_equal(embeddings, encoders._l2_normalize(fresh(tf.constant(SENTENCES)), "fresh"))
    clear_loaded_models()
    assert not loaded_models
    third = build_text_encoder(f"hub:{folders['sentence']}")
    third.encode(SENTENCES)
    assert third._encoder is not first._encoder


def test_a_folder_changed_on_disk_is_loaded_again(tmp_path, loaded_models):
    module, folder = TinySentenceEncoder(), tmp_path / "model"
    tf.saved_model.save(module, str(folder))
    before = build_text_encoder(f"hub:{folder}")
    old = before.encode(SENTENCES)
    module.table.assign(np.random.default_rng(2).normal(size=(64, 8)).astype(np.float32))
    tf.saved_model.save(module, str(folder))  # the same file names, new contents and times (variables: same sizes)
    after = build_text_encoder(f"hub:{folder}")
    embeddings = after.encode(SENTENCES)
    assert after._encoder is not before._encoder
    # As in test_hub_sentence_encoder_from_a_local_folder: <= ~3.6e-7 from the float64 normalisation.
    np.testing.assert_allclose(embeddings, normalized(module(tf.constant(SENTENCES))), atol=1e-6)
    assert np.abs(embeddings - old).max() > 0.1  # (other table rows: the old vectors would fail the line above)


def test_only_the_last_loaded_models_are_kept(hub_folders, loaded_models, monkeypatch):
    folders, _ = hub_folders
    monkeypatch.setattr(encoders, "LOADED_MODELS_KEPT", 2)
    sentence = encoders._load_hub(folders["sentence"])
    bert = encoders._load_hub(folders["bert"])
    assert encoders._load_hub(folders["sentence"]) is sentence  # now the most recently used
    encoders._load_hub(folders["preprocessor"])  # a third: the least recently used (bert) goes
    assert len(loaded_models) == 2
    assert encoders._load_hub(folders["sentence"]) is sentence and encoders._load_hub(folders["bert"]) is not bert


def test_https_handle_without_network_names_the_local_alternatives(monkeypatch):
    import tensorflow_hub as hub

    def offline(handle, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub, "load", offline)
    encoder = build_text_encoder("hub:https://tfhub.dev/google/universal-sentence-encoder/4")
    with pytest.raises(OSError) as error:
        encoder.encode(["a sparrow"])
    for alternative in ("folder", "precomputed:", "minilm"):
        assert alternative in str(error.value)


@pytest.mark.parametrize(
    "spec,error,match",
    [
        ("clip", ValueError, "Unknown text encoder spec 'clip'"),
        ("", ValueError, "non-empty"),
        ("hub:", ValueError, "hub:<handle>"),
        ("hub:/no/such/folder", FileNotFoundError, "saved_model.pb"),
        ("precomputed:/no/such/file.npz", FileNotFoundError, "does not exist"),
    ],
)
def test_bad_specs(spec, error, match):
    with pytest.raises(error, match=match):
        build_text_encoder(spec)


def test_bad_texts(hub_folders):
    encoder = build_text_encoder(f"hub:{hub_folders[0]['sentence']}")
    with pytest.raises(ValueError, match="empty list"):
        encoder.encode([])
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        encoder.encode(["a sparrow", "  "])
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode("a sparrow")


def test_precomputed_vectors_are_looked_up_and_normalised(tmp_path):
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(3, 5)).astype(np.float32)
    path = tmp_path / "clip.npz"
    np.savez(
        path, texts=np.array(["a photo of a sparrow", "a photo of a finch", "a photo of a truck"]), embeddings=vectors
    )
    encoder = build_text_encoder(f"precomputed:{path}")
    # float32 normalisation of 5-d vectors vs float64: <= ~5 x 2^-24 = 3e-7.
    np.testing.assert_allclose(
        encoder.encode(["a photo of a truck", "a photo of a sparrow"]), normalized(vectors[[2, 0]]), atol=1e-6
    )
    with pytest.raises(KeyError) as error:
        encoder.encode(["a photo of a sparrow", "a photo of an owl", "a photo of a crow"])
    assert "'a photo of an owl'" in str(error.value) and "'a photo of a crow'" in str(error.value)
    assert "2 texts" in str(error.value)


def test_precomputed_file_with_wrong_arrays(tmp_path):
    np.savez(tmp_path / "bad.npz", words=np.array(["x"]), vectors=np.ones((1, 3)))
    with pytest.raises(ValueError, match="'texts'"):
        build_text_encoder(f"precomputed:{tmp_path / 'bad.npz'}").encode(["x"])


def test_an_encoder_instance_passes_through(hub_folders):
    encoder = HubTextEncoder(hub_folders[0]["sentence"])
    assert build_text_encoder(encoder) is encoder
