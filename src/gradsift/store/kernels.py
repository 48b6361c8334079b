"""Streaming top-k over row blocks: n_train × n_test scores never exist in memory at once.

Pairwise scores ``S[i, t]`` (train row *i*, test column *t*) arrive one block of train rows
at a time. :class:`StreamingTopK` keeps, per test column, the ``k`` largest scores seen so
far and their global train indices (and, with ``largest=False``, the ``k`` smallest).
Memory is ``O(k · n_test + block_rows · n_test)``. Two partial results (e.g. from two
ranks that scored disjoint train rows) combine with :meth:`merge`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dot_scores(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """``train [r, D] · test [m, D]ᵀ → [r, m]``."""
    return train @ test.T


@dataclass
class StreamingTopK:
    """Running top-k per test column. ``values``/``indices`` are ``[n_test, k]``, best first."""

    n_test: int
    k: int
    largest: bool = True

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        fill = -np.inf if self.largest else np.inf
        self.values = torch.full((self.n_test, 0), fill, dtype=torch.float64)
        self.indices = torch.zeros((self.n_test, 0), dtype=torch.int64)

    def update(self, scores: torch.Tensor, first_row: int) -> None:
        """Fold in ``scores [rows, n_test]`` for train rows ``first_row ...``."""
        if scores.shape[1] != self.n_test:
            raise ValueError(f"expected scores [rows, {self.n_test}], got {tuple(scores.shape)}")
        rows = torch.arange(first_row, first_row + scores.shape[0], dtype=torch.int64)
        self._fold(scores.T.double(), rows.expand(self.n_test, -1))

    def merge(self, other: StreamingTopK) -> StreamingTopK:
        """Combine with another partial result over disjoint train rows (in place)."""
        if (other.n_test, other.k, other.largest) != (self.n_test, self.k, self.largest):
            raise ValueError("cannot merge top-k results with different shapes or directions")
        self._fold(other.values, other.indices)
        return self

    def _fold(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        values = torch.cat([self.values, values], dim=1)
        indices = torch.cat([self.indices, indices], dim=1)
        # stable order: ties keep the lower train index first
        order = torch.argsort(indices, dim=1, stable=True)
        values, indices = values.gather(1, order), indices.gather(1, order)
        best = torch.argsort(values, dim=1, descending=self.largest, stable=True)[:, : self.k]
        self.values, self.indices = values.gather(1, best), indices.gather(1, best)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(values float64 [n_test, k'], indices int64 [n_test, k'])`` with k' = min(k, rows seen)."""
        return self.values.numpy(), self.indices.numpy()


def pairwise_topk(
    train_blocks: Iterable[tuple[int, np.ndarray | torch.Tensor]],
    test: np.ndarray | torch.Tensor,
    k: int,
    score_fn: ScoreFn = dot_scores,
) -> tuple[StreamingTopK, StreamingTopK]:
    """Top-k most helpful (largest) and most harmful (smallest) train rows per test row.

    ``train_blocks`` yields ``(first_row, block [r, D])``, e.g. ``GradientStore.iter_blocks()``;
    ``score_fn(block, test) → [r, n_test]`` defaults to the dot product.
    """
    test_t = torch.as_tensor(np.asarray(test) if not isinstance(test, torch.Tensor) else test)
    helpful = StreamingTopK(len(test_t), k, largest=True)
    harmful = StreamingTopK(len(test_t), k, largest=False)
    for first_row, block in train_blocks:
        block_t = torch.as_tensor(np.asarray(block)).to(test_t.dtype)
        scores = score_fn(block_t, test_t)
        helpful.update(scores, first_row)
        harmful.update(scores, first_row)
    return helpful, harmful
