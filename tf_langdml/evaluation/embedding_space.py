"""Embedding-space diagnostics of a split: class spread, class separation and the singular-value spectrum.

The measures of Roth et al., *Revisiting Training Strategies and Generalization
Performance in Deep Metric Learning* (ICML 2020), whose code (which the language-guidance
paper's code reuses) names them ``dists@intra``, ``dists@inter``, ``dists@intra_over_inter``
and ``rho_spectrum@<mode>`` (docs/metrics.md says where ours differs). On the
L2-normalised embeddings x_i of a split, with cosine distance
d(u, v) = 1 - u·v / (|u| |v|):

- ``intra``: per class c with n_c >= 2 images, the mean of d over its n_c (n_c - 1)
  ordered pairs of distinct images; then the plain mean over those classes (each class
  counts once, whatever its size). A class of one image has no pair and is left out.
- ``inter``: the mean of d over the pairs of distinct classes' normalised means
  m_c = normalise(sum of the class's x_i) (every class, one image or more).
- ``intra_over_inter``: intra / max(inter, 1e-8).
- ``rho_spectrum``: with s_1 >= s_2 >= ... >= s_n the singular values of the (N, D)
  matrix of normalised embeddings (not centred; n = min(N, D)), drop s_1 and normalise
  the rest to a distribution p_i = s_i / (s_2 + ... + s_n), i = 2..n; then
  KL(U || p) = sum_i (1 / (n - 1)) log((1 / (n - 1)) / p_i) against the uniform U on
  those n - 1 values. 0 is a flat spectrum; it grows as the variance concentrates in a
  few directions.

Nothing of size N x N or N x D beyond the input is built: one pass over blocks of rows
accumulates, in float64, the per-class sums, the per-class sums of |x_i|^2 and the D x D
Gram matrix G = X^T X. Then sum_{i != j in c} x_i·x_j = |sum_c|^2 - sum_c |x_i|^2, the same
identity over the class means gives ``inter``, and the singular values are the square
roots of G's eigenvalues. Accumulated in float64 from float32 inputs, squaring costs
little: an eigenvalue's error is at most about N·D·eps64·s_1^2, so a singular value s_i is
off by at most N·D·eps64·s_1^2 / (2 s_i); at the float32 resolution of the matrix
(s_i = s_1·max(N, D)·eps32, below which it counts as 0) that is D·1e-9·s_1 (5e-7·s_1 at
D = 512), and less for every larger s_i.

A key is left out of the result when it is undefined: ``intra`` without a class of two
images, ``inter`` with fewer than two classes, ``intra_over_inter`` without either,
``rho_spectrum`` when min(N, D) < 2 or a singular value after the first is at or below
s_1·max(N, D)·eps32 (the embeddings span fewer than min(N, D) directions: the KL
divergence is infinite). Nothing NaN or infinite reaches ``history.json`` or ``metrics.json``.
"""

from __future__ import annotations

import numpy as np

EMBEDDING_SPACE_METRICS = ("intra", "inter", "intra_over_inter", "rho_spectrum")
_BLOCK_ROWS = 4096  # rows per pass: (4096, D) float64, 16 MB at D = 512
_RATIO_FLOOR = 1e-8  # the paper's code clips the denominator of intra_over_inter there


def _normalised_block(block: np.ndarray) -> np.ndarray:
    rows = np.asarray(block, np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _accumulate(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, block_rows: int):
    """Per-class sums (C, D), per-class sums of |x|^2 (C,) and the Gram matrix (D, D), all float64, in row blocks."""
    dimension = embeddings.shape[1]
    sums = np.zeros((num_classes, dimension), np.float64)
    squared = np.zeros(num_classes, np.float64)
    gram = np.zeros((dimension, dimension), np.float64)
    order = np.argsort(labels, kind="stable")  # each block's rows grouped by class, for reduceat
    for start in range(0, labels.size, block_rows):
        index = order[start : start + block_rows]
        rows, block_labels = _normalised_block(embeddings[index]), labels[index]
        first = np.flatnonzero(np.r_[True, block_labels[1:] != block_labels[:-1]])
        sums[block_labels[first]] += np.add.reduceat(rows, first, axis=0)
        squared += np.bincount(block_labels, weights=np.einsum("nd,nd->n", rows, rows), minlength=num_classes)
        gram += rows.T @ rows
    return sums, squared, gram


def _rho_spectrum(gram: np.ndarray, count: int) -> float | None:
    size = min(count, gram.shape[0])
    if size < 2:
        return None
    eigenvalues = np.sort(np.linalg.eigvalsh(gram))[::-1][:size]
    singular = np.sqrt(np.maximum(eigenvalues, 0.0))
    tolerance = singular[0] * max(count, gram.shape[0]) * np.finfo(np.float32).eps
    tail = singular[1:]
    if tail.min() <= tolerance:
        return None  # a zero in p: KL(U || p) is infinite
    p = tail / tail.sum()
    uniform = 1.0 / tail.size
    return float(np.sum(uniform * np.log(uniform / p)))


def embedding_space_metrics(
    embeddings: np.ndarray, labels: np.ndarray, block_rows: int = _BLOCK_ROWS
) -> dict[str, float]:
    """``intra``, ``inter``, ``intra_over_inter`` and ``rho_spectrum`` of (N, D) ``embeddings`` (see module doc).

    ``labels``: (N,) class labels of any hashable kind; ``block_rows``: rows per pass
    (memory). A split with a gallery mask is measured on all its images.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, D) array; got shape {embeddings.shape}.")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings contain NaN or Inf.")
    if int(block_rows) < 1:
        raise ValueError(f"block_rows must be >= 1; got {block_rows}.")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings but {labels.shape[0]} labels.")
    labels = np.unique(labels, return_inverse=True)[1].reshape(-1)  # any hashable labels -> 0..C-1
    sizes = np.bincount(labels)
    sums, squared, gram = _accumulate(embeddings, labels, sizes.size, int(block_rows))
    results = {}
    pairs = sizes > 1
    if pairs.any():
        same_sims = (np.einsum("cd,cd->c", sums, sums)[pairs] - squared[pairs]) / (sizes[pairs] * (sizes[pairs] - 1.0))
        results["intra"] = float(np.mean(1.0 - same_sims))
    if sizes.size > 1:
        means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        total = means.sum(axis=0)
        mean_sim = (total @ total - np.einsum("cd,cd->", means, means)) / (sizes.size * (sizes.size - 1.0))
        results["inter"] = float(1.0 - mean_sim)
    if "intra" in results and "inter" in results:
        results["intra_over_inter"] = results["intra"] / max(results["inter"], _RATIO_FLOOR)
    rho = _rho_spectrum(gram, labels.size)
    if rho is not None:
        results["rho_spectrum"] = rho
    return results
