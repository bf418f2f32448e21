"""The ``language`` section: the text encoder, the PLG classifier and pseudo-labels, the language table."""

from __future__ import annotations

import os

import numpy as np

from tf_langdml._keras import keras
from tf_langdml.data import Split
from tf_langdml.language import (
    PseudoLabels,
    TextEncoder,
    build_text_encoder,
    expert_language_table,
    prime,
    pseudo_label_table,
    top_k_pseudo_labels,
)
from tf_langdml.language.imagenet import NUM_IMAGENET_CLASSES
from tf_langdml.models import CLASSIFIERS, build_imagenet_classifier, classifier_fingerprint
from tf_langdml.models.precision import precision_policy
from tf_langdml.runs.builders.config_errors import config_keys
from tf_langdml.runs.schema import ConfigError, LanguageConfig

# {library argument: config key} of the language-table builders (top_k_pseudo_labels' ``k``; a precomputed
# encoder's MissingTextsError is about the ``encoder``) and of the PLG classifier.
LANGUAGE_ARGUMENTS = {
    "encoder": "language.encoder",
    "template": "language.template",
    "k": "language.top_k",
    "level": "language.level",
}
_CLASSIFIER_ARGUMENTS = {"name": "language.classifier", "weights": "language.classifier_weights"}


def text_encoder(language: LanguageConfig) -> TextEncoder:
    """The text encoder ``language.encoder`` names (ELG / PLG tables, semantic metrics)."""
    with config_keys("language.encoder", arguments={"spec": "language.encoder", "output_key": "language.output_key"}):
        return build_text_encoder(language.encoder, output_key=language.output_key)


def imagenet_classifier(language: LanguageConfig, policy: str = "float32") -> keras.Model:
    """The PLG ImageNet classifier of the ``language`` section, its layers built under the dtype ``policy`` (float32 logits)."""
    with (
        precision_policy(policy),
        config_keys("language.classifier", arguments=_CLASSIFIER_ARGUMENTS, suggest=(language.classifier, CLASSIFIERS)),
    ):
        return build_imagenet_classifier(
            language.classifier, weights=language.classifier_weights, image_size=language.classifier_image_size
        )


def pseudo_labels(
    language: LanguageConfig,
    split: Split,
    encoder: TextEncoder,
    batch_size: int,
    output_path: str | os.PathLike | None = None,
    verbose: int = 1,
    policy: str = "float32",
) -> tuple[np.ndarray, PseudoLabels]:
    """PLG: (table (C|N, K, D), PseudoLabels) of a training split; ``batch_size``: the classifier's.

    ``policy``: the dtype policy the classifier computes in (the run's resolved ``training.precision``).
    """
    classifier = imagenet_classifier(language, policy)
    with config_keys(arguments=LANGUAGE_ARGUMENTS):
        return pseudo_label_table(
            classifier,
            split,
            encoder,
            k=language.top_k,
            level=language.level,
            template=language.template,
            batch_size=batch_size,
            output_path=output_path,
            verbose=bool(verbose),
            classifier_key=classifier_fingerprint(classifier),
        )


def language_table(
    language: LanguageConfig,
    split: Split,
    encoder: TextEncoder,
    batch_size: int,
    pseudo_labels_path: str | os.PathLike | None = None,
    verbose: int = 1,
    policy: str = "float32",
) -> np.ndarray | None:
    """The (C|N, K, D) table of ``language.guidance`` for a training split; None for the baseline.

    ELG: the primed class names; PLG: the top-k ImageNet names (written to ``pseudo_labels_path``),
    the classifier computing under the dtype ``policy``.
    """
    if language.guidance == "none":
        return None
    if language.guidance == "elg":
        with config_keys(arguments=LANGUAGE_ARGUMENTS):
            return expert_language_table(split.class_names, encoder, language.template, verbose=bool(verbose))
    return pseudo_labels(language, split, encoder, batch_size, pseudo_labels_path, verbose, policy)[0]


def table_index(language: LanguageConfig) -> str:
    """How the model indexes the table: by ``sample_id`` for sample-level PLG, else by ``label``."""
    return "sample_id" if language.guidance == "plg" and language.level == "sample" else "label"


def check_language(language: LanguageConfig) -> None:
    """The template, a precomputed encoder's file, and for PLG the classifier name, top-k and level.

    Before any data or weights are read, and so before the run directory is written.
    """
    with config_keys("language.template", arguments=LANGUAGE_ARGUMENTS):
        prime(["name"], language.template)
    if language.encoder.startswith("precomputed:"):
        path = language.encoder[len("precomputed:") :]
        if not os.path.isfile(path):
            state = "is not a regular file" if os.path.lexists(path) else "does not exist"
            raise ConfigError(
                f"'language.encoder': the precomputed embeddings file {path!r} {state} (resolved "
                f"from {os.getcwd()}); give the path of an .npz written by `tf-langdml embed-classes`, "
                "or use 'minilm'."
            )
    if language.guidance != "plg":
        return
    if language.classifier not in CLASSIFIERS:
        imagenet_classifier(language)  # refuses an unknown name before building anything
    with config_keys("language.top_k", "language.level", arguments=LANGUAGE_ARGUMENTS):
        top_k_pseudo_labels(
            np.zeros((1, NUM_IMAGENET_CLASSES)), np.zeros(1, np.int64), k=language.top_k, level=language.level
        )
