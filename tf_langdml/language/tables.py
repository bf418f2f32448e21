"""Language tables: primed class names -> cached text embeddings -> the (C, K, D) table of the loss."""

import hashlib
import json
import sys
import warnings

import numpy as np

from tf_langdml.cache import atomic_file, cache_dir
from tf_langdml.language.encoders import build_text_encoder

DEFAULT_TEMPLATE = "a photo of a {}"


def prime(names, template=DEFAULT_TEMPLATE):
    """``template`` with ``{}`` replaced by each name ("a photo of a {}" -> "a photo of a sparrow")."""
    if not isinstance(template, str) or "{}" not in template:
        raise ValueError(f"Template {template!r} has no '{{}}' for the name; for example 'a photo of a {{}}' (or '{{}}').")
    if isinstance(names, str):
        raise TypeError(f"names must be a list of strings, not one string ({names!r}).")
    names = list(names)
    if not names:
        raise ValueError("The list of class names is empty; a language table needs at least one name.")
    blank = [index for index, name in enumerate(names) if not isinstance(name, str) or not name.strip()]
    if blank:
        raise ValueError(f"Class names at positions {blank[:10]} are empty or not strings: {[names[i] for i in blank[:10]]}.")
    return [template.replace("{}", name.strip()) for name in names]


def _cache_path(encoder_id, template, names, cache):
    key = hashlib.sha256(json.dumps([encoder_id, template, list(names)], ensure_ascii=False).encode()).hexdigest()
    return cache_dir(cache) / "text_embeddings" / f"{key[:32]}.npz", key


def _read_cached(path, key, texts):
    """The cached vectors, or None when the file is missing, unreadable or not what was asked for."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key, stored_texts, vectors = str(data["key"]), [str(t) for t in data["texts"]], data["embeddings"]
        norms = np.linalg.norm(vectors, axis=1)
        if (stored_key != key or stored_texts != texts or vectors.ndim != 2 or vectors.dtype != np.float32
                or not np.all(np.isfinite(vectors)) or not np.allclose(norms, 1.0, atol=1e-3)):
            raise ValueError("contents do not match the request")
        return vectors
    except Exception as error:  # noqa: BLE001  (any damage means: recompute)
        warnings.warn(f"Ignoring damaged text-embedding cache file {path} ({error}); recomputing it.", stacklevel=3)
        return None


def text_embeddings(names, encoder="minilm", template=DEFAULT_TEMPLATE, cache_dir=None, verbose=False):
    """(N, D) float32 L2-normalised embeddings of the primed names, cached on disk.

    The cache key is the encoder's ``id``, the template and the names; a hit does not
    load the encoder; a damaged or mismatching file is recomputed, never trusted.
    """
    encoder = build_text_encoder(encoder, cache_dir=cache_dir)
    texts = prime(names, template)
    path, key = _cache_path(encoder.id, template, [str(name).strip() for name in names], cache_dir)
    vectors = _read_cached(path, key, texts)
    if vectors is None:
        if verbose:
            print(f"tf_langdml: embedding {len(texts)} texts with {encoder.id} ...", file=sys.stderr, flush=True)
        vectors = encoder.encode(texts)
        with atomic_file(path) as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, key=np.array(key), texts=np.array(texts), embeddings=vectors)
    return vectors


def expert_language_table(class_names, encoder="minilm", template=DEFAULT_TEMPLATE, cache_dir=None, verbose=False):
    """The ELG table: (C, 1, D) float32, row c = embedding of ``template`` filled with class name c."""
    return text_embeddings(class_names, encoder, template, cache_dir, verbose)[:, None, :]
