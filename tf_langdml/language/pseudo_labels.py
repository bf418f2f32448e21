"""Pseudo-label guidance (PLG, docs/protocol.md): ImageNet top-k names of each class or image -> a (C|N, K, D) table.

One forward pass of an ImageNet classifier over the training split (eval
preprocessing) gives 1000 logits per image. ``level="class"`` averages the logits of
each class and takes the k highest; ``level="sample"`` takes each image's own k
highest. The chosen ImageNet names (first synonyms, primed with the template) are
embedded by the text encoder; row r of the table holds the k embeddings in rank order.
The top-k indices are cached on disk (keyed by classifier, split, image size, level
and k), and so are the text embeddings, so a second call runs no network at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import typing

import numpy as np

from tf_langdml.cache import cache_dir as resolve_cache_dir
from tf_langdml.cache import read_cached_arrays, write_cached_arrays, write_json
from tf_langdml.errors import ArgumentError
from tf_langdml.inference import forward_batches
from tf_langdml.language.imagenet import IMAGENET_CLASS_NAMES, NUM_IMAGENET_CLASSES, first_synonym
from tf_langdml.language.text_embeddings import DEFAULT_TEMPLATE, text_embeddings

if typing.TYPE_CHECKING:
    from tf_langdml._keras import keras
    from tf_langdml.data.splits import Split
    from tf_langdml.language.encoders import TextEncoder

LEVELS = ("class", "sample")


def top_k_pseudo_labels(
    logits: np.ndarray,
    labels: np.ndarray | None = None,
    k: int = 5,
    level: str = "class",
    num_classes: int | None = None,
) -> np.ndarray:
    """Indices of the top-k ImageNet classes: (C, k) per class (mean logits) or (N, k) per image.

    Ranked by descending logit; ties go to the lower ImageNet index. ``labels`` (N,)
    and ``num_classes`` are needed for ``level="class"``; a class without images is an
    error.
    """
    logits = np.asarray(logits, dtype=np.float64)
    _check_k_level(k, level, logits.shape[-1])
    if level == "class":
        labels = np.asarray(labels).reshape(-1)
        num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
        sums = np.eye(num_classes, dtype=np.float64)[labels].T @ logits
        counts = np.bincount(labels, minlength=num_classes)
        if np.any(counts == 0):
            raise ValueError(f"Classes {np.flatnonzero(counts == 0)[:10].tolist()} have no images to pseudo-label.")
        logits = sums / counts[:, None]
    return np.argsort(-logits, axis=1, kind="stable")[:, :k].astype(np.int64)


def _check_k_level(k, level, num_logits=NUM_IMAGENET_CLASSES):
    if level not in LEVELS:
        raise ArgumentError(f"Unknown pseudo-label level {level!r}; expected one of {list(LEVELS)}.", argument="level")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= num_logits:
        raise ArgumentError(f"Top-k must be an integer in 1..{num_logits}; got {k!r}.", argument="k")


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
    """What :func:`pseudo_label_table` chose: ImageNet indices and names per row (class or image)."""

    level: str
    indices: np.ndarray  # (rows, k) ImageNet class indices, rank order
    row_names: tuple  # the split's class name of each row

    @property
    def names(self) -> list[list[str]]:
        return [[first_synonym(IMAGENET_CLASS_NAMES[index]) for index in row] for row in self.indices]

    def to_json(self) -> dict:
        rows = [
            {
                "row": row,
                "class": self.row_names[row],
                "pseudo_labels": names,
                "imagenet_indices": self.indices[row].tolist(),
            }
            for row, names in enumerate(self.names)
        ]
        return {"level": self.level, "k": int(self.indices.shape[1]), "rows": rows}

    def save(self, path: str | os.PathLike) -> None:
        """Write the chosen names as JSON (atomically), so a user can read what each class was called."""
        write_json(path, self.to_json())


def split_fingerprint(split: Split) -> str:
    """A hash of a split's sources, labels and background (file paths, or the encoded bytes themselves)."""
    digest = hashlib.sha256()
    for source in split.sources:
        digest.update(source if isinstance(source, bytes) else str(source).encode())
        digest.update(b"\0")
    digest.update(np.asarray(split.labels, np.int64).tobytes())
    digest.update(bytes(split.background))  # transparent pixels decode to this colour: it changes the logits
    return digest.hexdigest()[:32]


def _classifier_top_k_indices(classifier, split, level, k, batch_size, verbose):
    """Top-k ImageNet indices per class (mean logits) or per image, from one forward pass."""
    num_classes = split.num_classes
    sums, counts, per_image = np.zeros((num_classes, NUM_IMAGENET_CLASSES)), np.zeros(num_classes, np.int64), []
    image_size = int(classifier.input_shape[1])
    batches = forward_batches(classifier, split, batch_size, image_size, verbose, action="classified")
    for logits, labels in batches:
        if logits.shape[1] != NUM_IMAGENET_CLASSES:
            raise ValueError(
                f"The classifier gives {logits.shape[1]} outputs; pseudo-labels need the {NUM_IMAGENET_CLASSES} ImageNet logits."
            )
        logits = logits.astype(np.float64)
        if level == "class":
            sums += np.eye(num_classes, dtype=np.float64)[labels].T @ logits  # per-class sums of this batch
            counts += np.bincount(labels, minlength=num_classes)
        else:
            per_image.append(top_k_pseudo_labels(logits, k=k, level="sample"))
    if level == "sample":
        return np.concatenate(per_image)
    if np.any(counts == 0):
        raise ValueError(f"Classes {np.flatnonzero(counts == 0)[:10].tolist()} have no images to pseudo-label.")
    return top_k_pseudo_labels(sums / counts[:, None], k=k, level="sample")


def _check_indices(rows, k):
    def check(arrays):
        indices = arrays["indices"]
        if indices.shape != (rows, k) or indices.min() < 0 or indices.max() >= NUM_IMAGENET_CLASSES:
            raise ValueError(f"shape {indices.shape} or values do not fit ({rows}, {k}) ImageNet indices")

    return check


def pseudo_label_table(
    classifier: keras.Model,
    split: Split,
    encoder: str | TextEncoder = "minilm",
    k: int = 5,
    level: str = "class",
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    output_path: str | os.PathLike | None = None,
    verbose: bool = True,
    *,
    classifier_key: str,
) -> tuple[np.ndarray, PseudoLabels]:
    """The PLG language table of a training split, and the pseudo-labels chosen.

    Args:
        classifier: a Keras model from :func:`~tf_langdml.models.build_imagenet_classifier`
            (or any model mapping [0, 255] RGB images to 1000 ImageNet logits).
        split: a :class:`~tf_langdml.data.Split` (the training split).
        encoder: a text encoder or spec (see :func:`~tf_langdml.language.build_text_encoder`).
        k: names per row, 1..1000 (the paper: 5).
        level: "class" -> table (C, k, D) indexed by label; "sample" -> (N, k, D) indexed
            by sample id (``make_train_dataset(..., with_sample_ids=True)`` and
            ``LanguageGuidedModel(..., table_index="sample_id")``).
        template: primer with "{}", e.g. "a photo of a {}".
        output_path: if given, the chosen names are written there as JSON.
        classifier_key: the classifier's identity in the cache key of the top-k indices,
            :func:`tf_langdml.models.classifier_fingerprint` of ``classifier`` (the caller
            computes it, so this module needs nothing from :mod:`tf_langdml.models`).

    Returns:
        (table, pseudo_labels): float32 L2-normalised table and a :class:`PseudoLabels`.
    """
    _check_k_level(k, level)
    rows = split.num_classes if level == "class" else len(split.labels)
    key_text = json.dumps([classifier_key, split_fingerprint(split), int(classifier.input_shape[1]), level, int(k)])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:32]
    path = resolve_cache_dir(cache_dir) / "pseudo_labels" / f"{key}.npz"
    cached = read_cached_arrays(path, _check_indices(rows, k), "pseudo-label")
    indices = None if cached is None else cached["indices"].astype(np.int64)
    if indices is None:
        if verbose:
            print(
                f"tf_langdml: pseudo-labelling {len(split.labels)} images ({level} level, top-{k}) ...",
                file=sys.stderr,
                flush=True,
            )
        indices = _classifier_top_k_indices(classifier, split, level, k, batch_size, verbose)
        write_cached_arrays(path, indices=indices, key=np.array(key_text))
    used = np.unique(indices)
    vectors = text_embeddings(
        [first_synonym(IMAGENET_CLASS_NAMES[index]) for index in used], encoder, template, cache_dir, verbose
    )
    lookup = np.zeros((NUM_IMAGENET_CLASSES, vectors.shape[1]), np.float32)
    lookup[used] = vectors
    table = lookup[indices]
    row_names = (
        tuple(split.class_names) if level == "class" else tuple(split.class_names[label] for label in split.labels)
    )
    labels = PseudoLabels(level, indices, row_names)
    if output_path is not None:
        labels.save(output_path)
    return table, labels
