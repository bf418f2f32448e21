"""Language: text encoders (TF-Hub, offline MiniLM, precomputed), cached embeddings, language tables."""

from tf_langdml._keras import keras  # noqa: F401  (binds tf.keras to tf-keras first)
from tf_langdml.language.encoders import (
    DEFAULT_ENCODER,
    HubTextEncoder,
    MissingTextsError,
    MiniLMTextEncoder,
    PrecomputedTextEncoder,
    TextEncoder,
    build_text_encoder,
)
from tf_langdml.language.minilm import build_minilm_savedmodel, minilm_handle, read_safetensors
from tf_langdml.language.tables import DEFAULT_TEMPLATE, expert_language_table, prime, text_embeddings

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_TEMPLATE",
    "HubTextEncoder",
    "MissingTextsError",
    "MiniLMTextEncoder",
    "PrecomputedTextEncoder",
    "TextEncoder",
    "build_minilm_savedmodel",
    "build_text_encoder",
    "expert_language_table",
    "minilm_handle",
    "prime",
    "read_safetensors",
    "text_embeddings",
]
