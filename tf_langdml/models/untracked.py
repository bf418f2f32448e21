"""Untracked: Python state a Keras model holds without Keras tracking it."""

from __future__ import annotations

from typing import Any


class Untracked:
    """Holds one value outside Keras' tracking: not in the model's weights, layers or checkpoints.

    Keras tracks every layer, variable, list and dict assigned to a model attribute; a
    value wrapped in this plain object is invisible to it (the model's feature model for
    S2SD, the loss optimizers' variable groups, the XLA path's non-finite record).

    Args:
        value: the value held (``holder.value``; reassign it freely).
    """

    def __init__(self, value: Any = None) -> None:
        self.value = value
