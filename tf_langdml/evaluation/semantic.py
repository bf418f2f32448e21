"""How retrieval errs: are the wrong nearest neighbours at least semantically close? (the paper's §5 analysis)."""

import os
from collections.abc import Sequence

import numpy as np

from tf_langdml.evaluation.retrieval import nearest_neighbors
from tf_langdml.language.encoders import TextEncoder, build_text_encoder
from tf_langdml.language.language_table import LanguageTable
from tf_langdml.language.text_embeddings import DEFAULT_TEMPLATE, text_embeddings


def nearest_classes(similarity: np.ndarray, count: int = 5) -> np.ndarray:
    """(C, count) indices of each class's most similar other classes (ties -> lower index)."""
    similarity = np.array(similarity, dtype=np.float64)
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :count]


def semantic_consistency(
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    encoder: str | TextEncoder = "minilm",
    template: str = DEFAULT_TEMPLATE,
    nearest: int = 5,
    cache_dir: str | os.PathLike | None = None,
    neighbors: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Language similarity of 1-NN mistakes.

    For every query whose nearest neighbour (leave-one-out, cosine) belongs to another
    class: the cosine similarity of the two class names' text embeddings, averaged
    (``mistake_language_similarity``), and the fraction of mistakes that land in one of
    the query class's ``nearest`` most similar classes in language space
    (``mistakes_in_5_nearest_classes`` for nearest=5). For reading them:
    ``chance_language_similarity`` is the mean over all pairs of distinct classes and
    ``chance_in_<nearest>_nearest_classes`` = nearest / (C - 1). With fewer than
    ``nearest`` other classes, all of them count (the keys keep the requested number).
    """
    labels = np.asarray(labels).reshape(-1)
    class_names = list(class_names)
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ValueError(f"labels must index class_names (0..{len(class_names) - 1}).")
    if len(class_names) < 2:
        raise ValueError("Semantic consistency needs at least two classes.")
    if neighbors is None:
        neighbors = nearest_neighbors(embeddings, k=1)[0][:, 0]
    neighbor_labels = labels[neighbors]
    encoder = build_text_encoder(encoder, cache_dir=cache_dir)
    table = LanguageTable.from_array(
        text_embeddings(class_names, encoder, template, cache_dir), names=class_names, encoder_id=encoder.id
    )
    language = table.similarities(np.arange(table.num_rows)).numpy()  # (C, C) S_lang, as in the loss
    mistakes = neighbor_labels != labels
    requested, nearest = nearest, min(nearest, len(class_names) - 1)  # keys keep the requested number
    close = nearest_classes(language, nearest)
    off_diagonal = language[~np.eye(len(class_names), dtype=bool)]
    results = {
        "nn_mistakes": int(mistakes.sum()),
        "chance_language_similarity": float(off_diagonal.mean()),
        f"chance_in_{requested}_nearest_classes": nearest / (len(class_names) - 1),
    }
    if mistakes.any():
        query, found = labels[mistakes], neighbor_labels[mistakes]
        results["mistake_language_similarity"] = float(language[query, found].mean())
        results[f"mistakes_in_{requested}_nearest_classes"] = float(
            np.mean(np.any(close[query] == found[:, None], axis=1))
        )
    else:
        results["mistake_language_similarity"] = float("nan")
        results[f"mistakes_in_{requested}_nearest_classes"] = float("nan")
    return results


def group_recall_at_1(
    embeddings: np.ndarray | None, labels: np.ndarray, groups: Sequence, neighbors: np.ndarray | None = None
) -> float:
    """Recall@1 where a neighbour counts when its class is in the query class's group (``groups[label]``)."""
    labels = np.asarray(labels).reshape(-1)
    groups = np.asarray(groups)
    if neighbors is None:
        neighbors = nearest_neighbors(embeddings, k=1)[0][:, 0]
    return float(np.mean(groups[labels] == groups[labels[neighbors]]))


def make_level_recall_at_1(
    embeddings: np.ndarray | None, labels: np.ndarray, class_names: Sequence[str], neighbors: np.ndarray | None = None
) -> float:
    """Cars196 make-level Recall@1: the make is the first word of the class name ("bmw m3 coupe 2012" -> "bmw")."""
    makes = [name.split()[0] if name.split() else name for name in class_names]
    return group_recall_at_1(embeddings, labels, makes, neighbors)
