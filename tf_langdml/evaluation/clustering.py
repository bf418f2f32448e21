"""Clustering quality of embeddings: NMI of k-means clusters and the pair-counting F1 of the DML literature."""

import numpy as np

from tf_langdml.evaluation.retrieval import normalized_embeddings


def pairwise_f1(labels: np.ndarray, clusters: np.ndarray) -> float:
    """F1 over pairs of items (Oh Song et al., 2017): a pair is predicted together when in one cluster.

    precision = same-class pairs among same-cluster pairs; recall = same-cluster pairs
    among same-class pairs; F1 = 2PR / (P + R) (0 when there are no such pairs).
    """
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(np.asarray(labels), np.asarray(clusters), sparse=True)

    def pairs(counts):
        counts = np.asarray(counts, dtype=np.float64)
        return float(np.sum(counts * (counts - 1) / 2))

    together = pairs(table.data)
    predicted = pairs(np.asarray(table.sum(axis=0)).ravel())
    actual = pairs(np.asarray(table.sum(axis=1)).ravel())
    if together == 0:
        return 0.0
    precision, recall = together / predicted, together / actual
    return 2 * precision * recall / (precision + recall)


def clustering_metrics(
    embeddings: np.ndarray, labels: np.ndarray, seed: int = 0, max_iter: int = 100
) -> dict[str, float]:
    """``nmi`` and ``f1`` of k-means (scikit-learn, k-means++, as many clusters as classes, seeded).

    Embeddings are L2-normalised first (k-means on the unit sphere, as the retrieval
    metrics use cosine similarity). Cost grows with N x C x D per iteration; at SOP scale
    (60k x 11k classes) expect minutes.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    embeddings = normalized_embeddings(embeddings)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels.")
    num_classes = len(np.unique(labels))
    if num_classes > len(labels):
        raise ValueError("More classes than embeddings.")
    clusters = KMeans(n_clusters=num_classes, n_init=1, max_iter=max_iter, random_state=seed).fit_predict(embeddings)
    return {"nmi": float(normalized_mutual_info_score(labels, clusters)), "f1": float(pairwise_f1(labels, clusters))}
