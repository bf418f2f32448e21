"""From config sections to library objects: the only place that maps config values to library calls.

One builder per config section (:func:`dataset`, :func:`text_encoder`,
:func:`language_table`, :func:`embedder`, :func:`guided_model`, :func:`callbacks`,
:func:`evaluation_metrics`); each takes only the section(s) it reads. The library checks
the values itself; its ``ValueError`` / ``TypeError`` / ``KeyError`` is re-raised as
:class:`~tf_langdml.runs.schema.ConfigError` naming the config key (the key its
``argument`` attribute maps to (:class:`~tf_langdml.errors.ArgumentError`; one explicit
``{argument: config key}`` dict per call, never the message's words), else every key the
call took), with "did you mean" for a misspelt name. An error about the data rather than the config (a class
without images, say) of a call that also reads data passes through unchanged.

The ``check_*`` functions run the same library checks before any data is read or any
weights are loaded: on stand-ins (a one-layer backbone, a two-point retrieval problem)
or by calling a builder where it fails before doing any work.

One module per section: :mod:`~tf_langdml.runs.builders.data`, :mod:`~tf_langdml.runs.builders.language`,
:mod:`~tf_langdml.runs.builders.model` (with :mod:`~tf_langdml.runs.builders.loss_arguments`, the
``loss.dml_arguments`` checks), :mod:`~tf_langdml.runs.builders.evaluation`; the error mapping they share is
:mod:`~tf_langdml.runs.builders.config_errors`. This package is their API: ``builders.dataset(...)``.
"""

from tf_langdml.runs.builders.config_errors import config_keys
from tf_langdml.runs.builders.data import check_data, dataset, evaluation_split, train_batches
from tf_langdml.runs.builders.evaluation import (
    callbacks,
    check_evaluation,
    check_ks,
    evaluation_metrics,
    retrievable_images,
)
from tf_langdml.runs.builders.language import (
    check_language,
    imagenet_classifier,
    language_table,
    pseudo_labels,
    table_index,
    text_encoder,
)
from tf_langdml.runs.builders.loss_arguments import S2SD_DIM_MAX, S2SD_HEADS_MAX, XBM_MEMORY_MAX, check_dml_arguments
from tf_langdml.runs.builders.model import check_embedder, check_model, dml_loss_spec, embedder, guided_model, precision

__all__ = [
    "S2SD_DIM_MAX",
    "S2SD_HEADS_MAX",
    "XBM_MEMORY_MAX",
    "callbacks",
    "check_data",
    "check_dml_arguments",
    "check_embedder",
    "check_evaluation",
    "check_ks",
    "check_language",
    "check_model",
    "config_keys",
    "dataset",
    "dml_loss_spec",
    "embedder",
    "evaluation_metrics",
    "evaluation_split",
    "guided_model",
    "imagenet_classifier",
    "language_table",
    "precision",
    "pseudo_labels",
    "retrievable_images",
    "table_index",
    "text_encoder",
    "train_batches",
]
