"""Evaluation: exact chunked retrieval metrics, clustering, semantic consistency, Keras/TensorBoard callbacks."""

from tf_langdml._keras import keras  # noqa: F401  (binds tf.keras to tf-keras first)
from tf_langdml.evaluation.callbacks import (
    LanguageGuidanceTensorBoard,
    RetrievalEvaluation,
    RetrievalPictures,
    language_similarity,
    similarity_heatmap,
)
from tf_langdml.evaluation.clustering import clustering_metrics, pairwise_f1
from tf_langdml.evaluation.diagnostics import language_table_statistics, loss_diagnostics
from tf_langdml.evaluation.embedding_space import EMBEDDING_SPACE_METRICS, embedding_space_metrics
from tf_langdml.evaluation.pictures import retrieval_grid, similarity_figure
from tf_langdml.evaluation.retrieval import (
    DEFAULT_KS,
    gallery_positive_ranks,
    metrics_from_ranks,
    nearest_neighbors,
    positive_ranks,
    retrieval_metrics,
    split_retrieval_metrics,
)
from tf_langdml.evaluation.semantic import (
    group_recall_at_1,
    make_level_recall_at_1,
    nearest_classes,
    semantic_consistency,
)
from tf_langdml.inference import embed_split

__all__ = [
    "DEFAULT_KS",
    "EMBEDDING_SPACE_METRICS",
    "LanguageGuidanceTensorBoard",
    "RetrievalEvaluation",
    "RetrievalPictures",
    "clustering_metrics",
    "embed_split",
    "embedding_space_metrics",
    "gallery_positive_ranks",
    "group_recall_at_1",
    "language_similarity",
    "language_table_statistics",
    "loss_diagnostics",
    "make_level_recall_at_1",
    "metrics_from_ranks",
    "nearest_classes",
    "nearest_neighbors",
    "pairwise_f1",
    "positive_ranks",
    "retrieval_grid",
    "retrieval_metrics",
    "semantic_consistency",
    "similarity_figure",
    "similarity_heatmap",
    "split_retrieval_metrics",
]
