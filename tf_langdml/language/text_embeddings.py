"""Language tables: primed class names -> cached text embeddings -> the (C, K, D) table of the loss."""

import hashlib
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from tf_langdml.cache import cache_dir, read_cached_arrays, write_cached_arrays
from tf_langdml.errors import ArgumentError
from tf_langdml.language.encoders import TextEncoder, build_text_encoder

DEFAULT_TEMPLATE = "a photo of a {}"


def prime(names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """``template`` with ``{}`` replaced by each name ("a photo of a {}" -> "a photo of a sparrow")."""
    if not isinstance(template, str) or "{}" not in template:
        raise ArgumentError(
            f"Template {template!r} has no '{{}}' for the name; for example 'a photo of a {{}}' (or '{{}}').",
            argument="template",
        )
    if isinstance(names, str):
        raise TypeError(f"names must be a list of strings, not one string ({names!r}).")
    names = list(names)
    if not names:
        raise ValueError("The list of class names is empty; a language table needs at least one name.")
    blank = [index for index, name in enumerate(names) if not isinstance(name, str) or not name.strip()]
    if blank:
        raise ValueError(
            f"Class names at positions {blank[:10]} are empty or not strings: {[names[i] for i in blank[:10]]}."
        )
    return [template.replace("{}", name.strip()) for name in names]


def _cache_path(encoder_id, template, names, cache):
    key = hashlib.sha256(json.dumps([encoder_id, template, list(names)], ensure_ascii=False).encode()).hexdigest()
    return cache_dir(cache) / "text_embeddings" / f"{key[:32]}.npz", key


def _check_cached(key, texts):
    def check(arrays):
        vectors = arrays["embeddings"]
        if str(arrays["key"]) != key or [str(text) for text in arrays["texts"]] != texts:
            raise ValueError("it holds other texts")
        if vectors.ndim != 2 or vectors.dtype != np.float32 or not np.all(np.isfinite(vectors)):
            raise ValueError(f"embeddings of shape {vectors.shape} and dtype {vectors.dtype}")
        if not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3):
            raise ValueError("rows are not unit length")

    return check


def text_embeddings(
    names: Sequence[str],
    encoder: str | TextEncoder = "minilm",
    template: str = DEFAULT_TEMPLATE,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = False,
) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings of the primed names, cached on disk.

    The cache key is the encoder's ``id``, the template and the names; a hit does not
    load the encoder; a damaged or mismatching file is recomputed, never trusted.
    """
    encoder = build_text_encoder(encoder, cache_dir=cache_dir)
    texts = prime(names, template)
    path, key = _cache_path(encoder.id, template, [str(name).strip() for name in names], cache_dir)
    cached = read_cached_arrays(path, _check_cached(key, texts), "text-embedding")
    vectors = None if cached is None else cached["embeddings"]
    if vectors is None:
        if verbose:
            print(f"tf_langdml: embedding {len(texts)} texts with {encoder.id} ...", file=sys.stderr, flush=True)
        vectors = encoder.encode(texts)
        write_cached_arrays(path, key=np.array(key), texts=np.array(texts), embeddings=vectors)
    return vectors


def expert_language_table(
    class_names: Sequence[str],
    encoder: str | TextEncoder = "minilm",
    template: str = DEFAULT_TEMPLATE,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = False,
) -> np.ndarray:
    """The ELG table: (C, 1, D) float32, row c = embedding of ``template`` filled with class name c."""
    return text_embeddings(class_names, encoder, template, cache_dir, verbose)[:, None, :]
