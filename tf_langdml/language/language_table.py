"""LanguageTable: the language embeddings L of the loss, validated and normalised once.

A table is (C, K, D): C rows (classes, or samples for sample-level pseudo-labels), K
language embeddings per row (1 for expert labels, k for top-k pseudo-labels) and D
dimensions. Every embedding is a unit vector, so the language similarity of rows i and
j is S_lang[i, j] = (1/K) Σ_k <L[i, k], L[j, k]> (docs/loss.md; the paper, Section 3).

:class:`LanguageTable` checks and normalises its array once, when it is built, and
computes S_lang for a batch of rows (:meth:`LanguageTable.similarities`) for the model's
training step, the TensorBoard heat map and the semantic metrics alike.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

from tf_langdml._validation import tensor_check

__all__ = ["LanguageTable", "mean_cosine_similarities"]


def mean_cosine_similarities(unit_rows: tf.Tensor | ArrayLike) -> tf.Tensor:
    """S_lang for (B, K, D) rows with unit embeddings: the (B, B) float32 mean over K of their cosine matrices.

    (1/K) Σ_k L[:, k] L[:, k]ᵀ, computed as one (B, K·D) x (K·D, B) product.
    """
    unit_rows = tf.convert_to_tensor(unit_rows, tf.float32)
    num_names = unit_rows.shape[1]
    flat = tf.reshape(unit_rows, [tf.shape(unit_rows)[0], -1])
    products = tf.matmul(flat, flat, transpose_b=True)
    if num_names is None:
        return products / tf.cast(tf.shape(unit_rows)[1], tf.float32)
    return products if num_names == 1 else products / float(num_names)


def _describe_rows(rows: np.ndarray, names: tuple[str, ...] | None) -> str:
    """``[1, 4] ('finch', 'truck')``: up to 10 row indices, with their names when known."""
    shown = rows[:10].tolist()
    text = str(shown)
    if names is not None:
        text += " (" + ", ".join(repr(names[row]) for row in shown) + ")"
    return text + (" ..." if rows.size > 10 else "")


def _unit_rows(array: ArrayLike, names: tuple[str, ...] | None) -> np.ndarray:
    """Validate ``array`` and return it as float32 (C, K, D) with unit rows (normalised in float64)."""
    table = np.asarray(array, dtype=np.float32)
    if table.ndim == 2:
        table = table[:, np.newaxis, :]
    elif table.ndim != 3:
        raise ValueError(
            f"language_table must be (C, D) for expert labels or (C, K, D) for top-k "
            f"pseudo-labels; got shape {table.shape}."
        )
    if table.shape[0] == 0 or table.shape[1] == 0 or table.shape[2] == 0:
        raise ValueError(f"language_table is empty (shape {table.shape}).")
    if names is not None and len(names) != table.shape[0]:
        raise ValueError(f"language_table has {table.shape[0]} rows but {len(names)} names; give one name per row.")
    bad_rows = np.flatnonzero(~np.isfinite(table).all(axis=(1, 2)))
    if bad_rows.size:
        raise ValueError(
            f"language_table has NaN or Inf values in row(s) {_describe_rows(bad_rows, names)}; "
            f"recompute the language embeddings."
        )
    # float64: no overflow of the squares, and each unit entry is the correctly rounded float32.
    wide = table.astype(np.float64)
    norms = np.sqrt(np.einsum("ckd,ckd->ck", wide, wide))[..., np.newaxis]
    zero_rows = np.flatnonzero((norms == 0).any(axis=(1, 2)))
    if zero_rows.size:
        raise ValueError(
            f"language_table has all-zero embedding(s) in row(s) {_describe_rows(zero_rows, names)}; "
            f"a zero vector has no direction, so its cosine similarities are undefined."
        )
    return (wide / norms).astype(np.float32)


def _index_vector(indices: ArrayLike | tf.Tensor) -> tf.Tensor:
    indices = tf.convert_to_tensor(indices)
    if not indices.dtype.is_integer:
        raise ValueError(f"Language table indices must be integers, got dtype {indices.dtype.name}.")
    if indices.shape.rank is not None and indices.shape.rank != 1:
        raise ValueError(f"Language table indices must have shape (B,); got {indices.shape}.")
    return tf.cast(indices, tf.int32)


class LanguageTable:
    """An immutable (C, K, D) float32 language table with unit embeddings, its row names and encoder id.

    Build one with :meth:`from_array` (or ``LanguageTable(array, ...)``, the same):
    a (C, D) array becomes K = 1; NaN/Inf rows, all-zero embeddings, a wrong rank, an
    empty table and a wrong number of names are refused with a ValueError naming the
    rows. The rows are normalised there, once; nothing downstream re-normalises them.

    Attributes:
        rows: read-only numpy float32 (C, K, D) with unit embeddings.
        names: one name per row (tuple of str), or None.
        encoder_id: the text encoder's ``id`` the embeddings came from, or None.
        num_rows, k, dim: C, K and D.
        tensor: the rows as a constant float32 tf.Tensor, created on first use (eagerly,
            on the default device) and then shared by every step and tf.function.
    """

    __slots__ = ("_rows", "_names", "_encoder_id", "_tensor", "_lock")

    def __init__(self, array: ArrayLike, names: Sequence[str] | None = None, encoder_id: str | None = None) -> None:
        names = _as_names(names)
        self._init(_unit_rows(array, names), names, encoder_id)

    @classmethod
    def from_array(
        cls, array: ArrayLike, names: Sequence[str] | None = None, encoder_id: str | None = None
    ) -> LanguageTable:
        """Validate ``array`` ((C, D) or (C, K, D)) and normalise its embeddings to unit length.

        Raises:
            ValueError: wrong rank, an empty table, NaN/Inf values or all-zero embeddings
                (the rows named by index, and by name when ``names`` are given), or a number
                of names that is not C.
        """
        return cls(array, names, encoder_id)

    @classmethod
    def coerce(cls, table: LanguageTable | ArrayLike) -> LanguageTable:
        """``table`` itself if it is a LanguageTable, else :meth:`from_array` of it."""
        return table if isinstance(table, LanguageTable) else cls.from_array(table)

    @classmethod
    def _from_unit_rows(
        cls, rows: np.ndarray, names: Sequence[str] | None = None, encoder_id: str | None = None
    ) -> LanguageTable:
        """Trusted constructor: ``rows`` is taken as float32 (C, K, D) with unit rows, unchecked."""
        table = object.__new__(cls)
        table._init(np.array(rows, dtype=np.float32, copy=True), _as_names(names), encoder_id)
        return table

    def _init(self, rows: np.ndarray, names: tuple[str, ...] | None, encoder_id: str | None) -> None:
        if encoder_id is not None and not isinstance(encoder_id, str):
            raise TypeError(f"encoder_id must be a string or None, got {encoder_id!r}.")
        rows.flags.writeable = False  # rows is this table's own array: nobody else holds it
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_encoder_id", encoder_id)
        object.__setattr__(self, "_tensor", None)
        object.__setattr__(self, "_lock", threading.Lock())

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"LanguageTable is immutable; build a new one instead of setting {name!r}.")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"LanguageTable is immutable; cannot delete {name!r}.")

    def __reduce__(self):
        return _restore, (self._rows, self._names, self._encoder_id)

    def __repr__(self) -> str:
        names = "None" if self._names is None else f"<{len(self._names)} names>"
        return (
            f"LanguageTable(num_rows={self.num_rows}, k={self.k}, dim={self.dim}, "
            f"encoder_id={self._encoder_id!r}, names={names})"
        )

    @property
    def rows(self) -> np.ndarray:
        """Read-only float32 (C, K, D) with unit embeddings (a view; it cannot be made writeable)."""
        view = self._rows.view()
        view.flags.writeable = False
        return view

    @property
    def names(self) -> tuple[str, ...] | None:
        return self._names

    @property
    def encoder_id(self) -> str | None:
        return self._encoder_id

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._rows.shape)

    @property
    def num_rows(self) -> int:
        return int(self._rows.shape[0])

    @property
    def k(self) -> int:
        return int(self._rows.shape[1])

    @property
    def dim(self) -> int:
        return int(self._rows.shape[2])

    @property
    def tensor(self) -> tf.Tensor:
        """The rows as a constant float32 tf.Tensor (created once, outside any tf.function)."""
        if self._tensor is None:
            with self._lock:  # MirroredStrategy traces its replicas in threads
                if self._tensor is None:
                    with tf.init_scope():
                        object.__setattr__(self, "_tensor", tf.constant(self._rows))
        return self._tensor

    def similarities(self, indices: ArrayLike | tf.Tensor, check_indices: bool = True) -> tf.Tensor:
        """S_lang of rows ``indices``: (B, B) float32, (1/K) Σ_k L[i, k] · L[j, k] (no re-normalisation).

        Works eagerly, in a tf.function (also with XLA) and in a tf.distribute replica.

        Args:
            indices: (B,) integer row indices in [0, C).
            check_indices: check that the indices are in [0, C): eagerly a ValueError,
                in a tf.function an assertion that fails the call. Callers that already
                checked them (the loss) pass False.
        """
        indices = _index_vector(indices)
        checks = []
        if check_indices:
            checks = tensor_check(
                tf.logical_and(tf.reduce_all(indices >= 0), tf.reduce_all(indices < self.num_rows)),
                f"an index is outside the language table: indices must be in [0, {self.num_rows}).",
            )
        with tf.control_dependencies(checks):
            return mean_cosine_similarities(tf.gather(self.tensor, indices))


def _as_names(names: Sequence[str] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of strings (one per row), not one string ({names!r}).")
    return tuple(str(name) for name in names)


def _restore(rows: np.ndarray, names: tuple[str, ...] | None, encoder_id: str | None) -> LanguageTable:
    return LanguageTable._from_unit_rows(rows, names, encoder_id)
