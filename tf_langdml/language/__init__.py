"""Language: text encoders (TF-Hub, offline MiniLM, precomputed), cached embeddings, language tables."""

from tf_langdml._keras import keras  # noqa: F401  (binds tf.keras to tf-keras first)
from tf_langdml.language.encoders import (
    DEFAULT_ENCODER,
    HubTextEncoder,
    MiniLMTextEncoder,
    MissingTextsError,
    PrecomputedTextEncoder,
    TextEncoder,
    build_text_encoder,
    clear_loaded_models,
)
from tf_langdml.language.imagenet import IMAGENET_CLASS_NAMES, first_synonym
from tf_langdml.language.language_table import LanguageTable
from tf_langdml.language.minilm import build_minilm_savedmodel, minilm_handle, read_safetensors
from tf_langdml.language.pseudo_labels import PseudoLabels, pseudo_label_table, top_k_pseudo_labels
from tf_langdml.language.text_embeddings import DEFAULT_TEMPLATE, expert_language_table, prime, text_embeddings

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_TEMPLATE",
    "HubTextEncoder",
    "IMAGENET_CLASS_NAMES",
    "LanguageTable",
    "MissingTextsError",
    "MiniLMTextEncoder",
    "PrecomputedTextEncoder",
    "PseudoLabels",
    "TextEncoder",
    "build_minilm_savedmodel",
    "build_text_encoder",
    "clear_loaded_models",
    "expert_language_table",
    "first_synonym",
    "minilm_handle",
    "prime",
    "pseudo_label_table",
    "read_safetensors",
    "text_embeddings",
    "top_k_pseudo_labels",
]
