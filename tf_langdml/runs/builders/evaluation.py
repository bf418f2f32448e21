"""The ``evaluation`` section: the training callbacks, the ks against the split, the final metrics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tf_langdml._keras import keras
from tf_langdml.data import Split
from tf_langdml.evaluation import (
    LanguageGuidanceTensorBoard,
    RetrievalEvaluation,
    RetrievalPictures,
    clustering_metrics,
    embed_split,
    embedding_space_metrics,
    make_level_recall_at_1,
    nearest_neighbors,
    retrieval_metrics,
    semantic_consistency,
    split_retrieval_metrics,
)
from tf_langdml.language import TextEncoder
from tf_langdml.runs.builders.config_errors import config_keys
from tf_langdml.runs.builders.language import LANGUAGE_ARGUMENTS, text_encoder
from tf_langdml.runs.schema import ConfigError, DataConfig, EvaluationConfig, LanguageConfig, TrainingConfig


def callbacks(
    training: TrainingConfig,
    evaluation: EvaluationConfig,
    image_size: int,
    split: Split,
    log_dir: str | os.PathLike,
    fixed_batch: Any,
    fixed_batch_class_names: Sequence[str] | None = None,
) -> list[keras.callbacks.Callback]:
    """Retrieval evaluation on ``split`` (the evaluation split) and TensorBoard every ``training.eval_every`` epochs.

    TensorBoard: the loss diagnostics every epoch; at every evaluation the top-5 retrievals
    of 8 fixed queries of ``split`` and the S_img | S_lang heat map of ``fixed_batch``, whose
    labels index ``fixed_batch_class_names`` (the training split's class names; None: label
    numbers); the embedding projector of ``split`` at the end.
    """
    with config_keys("training.eval_every", arguments={"every": "training.eval_every", "ks": "evaluation.ks"}):
        retrieval = RetrievalEvaluation(
            split,
            every=training.eval_every,
            batch_size=evaluation.batch_size,
            image_size=image_size,
            ks=evaluation.ks,
            log_dir=log_dir,
            verbose=0,
        )
        return [
            retrieval,
            RetrievalPictures(retrieval, log_dir, seed=training.seed),  # after the evaluation it draws
            LanguageGuidanceTensorBoard(
                log_dir,
                fixed_batch=fixed_batch,
                every=training.eval_every,
                projector_split=split,
                image_size=image_size,
                diagnostics_every=1,
                class_names=fixed_batch_class_names,
            ),
        ]


def check_evaluation(evaluation: EvaluationConfig, training: TrainingConfig) -> None:
    """``training.eval_every`` (the retrieval callback's check) and ``evaluation.ks`` (retrieval_metrics') on stand-ins."""
    with config_keys("training.eval_every"):
        RetrievalEvaluation(None, every=training.eval_every)
    with config_keys("evaluation.ks"):
        retrieval_metrics(np.eye(2, dtype=np.float32), np.zeros(2, np.int64), evaluation.ks)


def retrievable_images(split: Split) -> int:
    """The fewest images one query of ``split`` can retrieve: the gallery's size (query / gallery protocol),
    else every other image of the split (leave-one-out)."""
    return int(split.gallery.sum()) if split.gallery is not None else len(split.labels) - 1


def check_ks(evaluation: EvaluationConfig, split: Split | int, split_name: str | None = None) -> None:
    """``evaluation.ks`` against the evaluation split: no k above what a query can retrieve.

    Recall@k with k larger than the gallery is 1 for every query (the whole gallery is
    "retrieved"), a number that says nothing; train() calls this once the data is loaded,
    before the run directory is written. ``split``: the evaluation split, or its
    :func:`retrievable_images` as an int; ``split_name``: for the message (default
    ``evaluation.split``).
    """
    available = split if isinstance(split, int) else retrievable_images(split)
    too_large = [k for k in evaluation.ks if k > available]
    if too_large:
        protocol = (
            ""
            if isinstance(split, int)
            else (
                " (the size of its gallery)"
                if split.gallery is not None
                else " (leave-one-out: the split's images - 1)"
            )
        )
        raise ConfigError(
            f"'evaluation.ks' has k = {', '.join(map(str, too_large))}, but a query of the {split_name or evaluation.split} "
            f"split can retrieve at most {available} images{protocol}; use ks up to {available}."
        )


def evaluation_metrics(
    evaluation: EvaluationConfig,
    data: DataConfig,
    language: LanguageConfig,
    seed: int,
    network: keras.Model,
    split: Split,
    encoder: TextEncoder | None = None,
    verbose: int = 1,
) -> dict[str, float]:
    """Retrieval, embedding-space, clustering and semantic-consistency metrics of ``network`` on ``split``.

    ``network``: an embedder or model. Retrieval follows the split's protocol (query /
    gallery when it has a gallery mask, else leave-one-out); the embedding-space
    diagnostics (intra, inter, intra_over_inter, rho_spectrum), clustering and the
    semantic metrics use all images of the split.
    ``encoder``: the text encoder for the semantic metrics (built from ``language`` when None).
    """
    embeddings = embed_split(network, split, evaluation.batch_size, data.image_size, verbose=verbose)
    with config_keys("evaluation.ks"):
        metrics = split_retrieval_metrics(embeddings, split, evaluation.ks)
    metrics.update(embedding_space_metrics(embeddings, split.labels))
    if evaluation.clustering:
        metrics.update(clustering_metrics(embeddings, split.labels, seed=seed))
    if evaluation.semantic:
        neighbors = nearest_neighbors(embeddings, k=1)[0][:, 0]
        encoder = text_encoder(language) if encoder is None else encoder
        with config_keys(arguments=LANGUAGE_ARGUMENTS):
            metrics.update(
                semantic_consistency(
                    embeddings, split.labels, split.class_names, encoder, language.template, neighbors=neighbors
                )
            )
        if data.dataset == "cars196":
            metrics["make_recall@1"] = make_level_recall_at_1(embeddings, split.labels, split.class_names, neighbors)
    return metrics
