"""LanguageGuidedModel.compile()'s own arguments: checked, built, and refused under compile()'s names.

Every refusal is a :class:`~tf_langdml.errors.ArgumentError` whose ``argument`` is the
compile() parameter it is about (``"language_weight"``, ``"dml_loss"``, ...), so callers
that know where the value came from (the runs layer) name its config key.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

from tf_langdml._keras import keras
from tf_langdml.errors import ArgumentError, argument_of
from tf_langdml.losses.dml import build_dml_loss
from tf_langdml.losses.language_matching import LanguageMatchingLoss

# LanguageMatchingLoss's parameters -> compile()'s names for them.
LANGUAGE_MATCHING_ARGUMENTS = {
    "shift": "language_shift",
    "temperature": "language_temperature",
    "direction": "language_direction",
}


def refuse_keras_loss_and_metrics(kwargs: Mapping[str, Any]) -> None:
    """Refuse the ``keras.Model.compile`` arguments the model computes itself (``loss``, ``metrics``)."""
    if "loss" in kwargs:
        raise ArgumentError(
            "LanguageGuidedModel computes its own loss: pass dml_loss=... (a name such as "
            "'multisimilarity' or a TF-Similarity loss) instead of loss=...",
            argument="loss",
        )
    for name in ("metrics", "weighted_metrics"):
        if kwargs.get(name):
            raise ArgumentError(
                "LanguageGuidedModel reports loss, dml_loss and language_loss; Keras metrics on "
                "(labels, embeddings) are not meaningful. Measure retrieval (Recall@k, mAP@R) on "
                "held-out classes instead, and drop metrics=... from compile().",
                argument=name,
            )


def language_guidance_numbers(
    language_weight: float, language_delay: int, weight_decay: float
) -> tuple[float, int, float]:
    """(language_weight, language_delay, weight_decay) as (float, int, float); the first bad one is refused."""
    language_weight = float(language_weight)
    if not math.isfinite(language_weight) or language_weight < 0:
        raise ArgumentError(
            f"language_weight must be a finite number >= 0, got {language_weight!r}.", argument="language_weight"
        )
    if int(language_delay) != language_delay or language_delay < 0:
        raise ArgumentError(
            f"language_delay must be a whole number of steps >= 0, got {language_delay!r}.", argument="language_delay"
        )
    weight_decay = float(weight_decay)
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise ArgumentError(
            f"weight_decay must be a finite number >= 0, got {weight_decay!r} (the paper: 4e-4).",
            argument="weight_decay",
        )
    return language_weight, int(language_delay), weight_decay


def language_matching_loss(
    language_shift: float, language_temperature: float, language_direction: str
) -> LanguageMatchingLoss:
    """The :class:`~tf_langdml.losses.LanguageMatchingLoss` of compile()'s ``language_*`` arguments.

    Its refusals of ``shift``, ``temperature`` or ``direction`` come out under compile()'s
    names for them (:data:`LANGUAGE_MATCHING_ARGUMENTS`).
    """
    with renamed_argument(LANGUAGE_MATCHING_ARGUMENTS):
        return LanguageMatchingLoss(
            shift=language_shift, temperature=language_temperature, direction=language_direction
        )


def dml_loss_of(dml_loss: str | dict[str, Any] | keras.losses.Loss) -> keras.losses.Loss:
    """The DML loss compile()'s ``dml_loss`` names: a loss name, a dict for build_dml_loss, or a loss itself.

    A refused loss name is about ``dml_loss``; a refusal of one of the loss's own
    arguments keeps that argument's name.
    """
    if isinstance(dml_loss, str):
        with renamed_argument({"name": "dml_loss"}):
            return build_dml_loss(dml_loss)
    if isinstance(dml_loss, dict):
        arguments = dict(dml_loss)
        if "name" not in arguments:
            raise ArgumentError(
                f"A dml_loss dict needs a 'name' key (for example 'multisimilarity'); got {dml_loss}.",
                argument="dml_loss",
            )
        with renamed_argument({"name": "dml_loss"}):
            return build_dml_loss(arguments.pop("name"), **arguments)
    if not callable(getattr(dml_loss, "call", None)):
        raise ArgumentError(
            f"dml_loss must be a loss name, a dict for build_dml_loss or a TF-Similarity MetricLoss; got {dml_loss!r}.",
            argument="dml_loss",
        )
    return dml_loss


@contextlib.contextmanager
def renamed_argument(names: Mapping[str, str]) -> Iterator[None]:
    """Re-raise an :class:`ArgumentError` about an argument in ``names`` as one about ``names[argument]``.

    The message is kept; errors about other arguments (or none) pass unchanged.
    """
    try:
        yield
    except ArgumentError as error:
        if argument_of(error) not in names:
            raise
        raise ArgumentError(str(error), argument=names[argument_of(error)]) from None
