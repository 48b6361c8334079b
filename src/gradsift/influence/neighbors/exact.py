"""The exact backend: blocked brute force in torch with a streaming top-k; recall@k."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from gradsift.errors import GradsiftError
from gradsift.influence.neighbors.base import (
    IndexConfig,
    Metric,
    NeighborIndex,
    as_float32,
)

__all__ = ["ExactIndex", "exact_search", "recall_at_k"]


class ExactIndex(NeighborIndex):
    """Blocked brute force in torch with a streaming top-k (the reference backend)."""

    def __init__(self, dim: int, config: IndexConfig) -> None:
        super().__init__(dim, config)
        self._blocks: list[np.ndarray] = []

    def _add(self, rows: np.ndarray) -> None:
        self._blocks.append(rows)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(self._iter_rows(), queries, k, self.config.metric)

    def _iter_rows(self) -> Iterator[tuple[int, np.ndarray]]:
        start, size = 0, self.config.block_rows
        for block in self._blocks:
            for offset in range(0, len(block), size):
                yield start + offset, block[offset : offset + size]
            start += len(block)


def exact_search(
    blocks: Iterable[tuple[int, np.ndarray | torch.Tensor]],
    queries: np.ndarray | torch.Tensor,
    k: int,
    metric: Metric = "ip",
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` over row blocks: ``(scores float32 [m, k'], indices int64 [m, k'])``.

    ``blocks`` yields ``(first_row, rows [r, d])``; ``cosine`` expects rows and queries
    already normalised (as :class:`ExactIndex` stores them). Computed in float32 with
    the block's scores never larger than ``[r, m]``.
    """
    q = torch.as_tensor(as_float32(queries))
    largest = metric != "l2"
    values = torch.empty(len(q), 0)
    indices = torch.empty(len(q), 0, dtype=torch.int64)
    q_norm = (q * q).sum(1) if metric == "l2" else None
    for first_row, block in blocks:
        rows = as_float32(block)
        x = torch.from_numpy(rows if rows.flags.writeable else rows.copy())
        scores = q @ x.T  # [m, r]
        if q_norm is not None:
            scores = ((x * x).sum(1) - 2 * scores + q_norm[:, None]).clamp_min_(0)
        part_v, part_i = torch.topk(scores, min(k, x.shape[0]), dim=1, largest=largest)
        values, indices = _merge_topk(
            torch.cat([values, part_v], 1), torch.cat([indices, part_i + first_row], 1), k, largest
        )
    return values.numpy(), indices.numpy()


def _merge_topk(
    values: torch.Tensor, indices: torch.Tensor, k: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` columns per row; ties go to the lower index (order-independent result)."""
    order = torch.argsort(indices, dim=1, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    best = torch.argsort(values, dim=1, descending=largest, stable=True)[:, :k]
    return values.gather(1, best), indices.gather(1, best)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of ``|found_q ∩ truth_q| / |truth_q|`` (``-1`` entries ignored).

    ``found`` ``[m, k1]`` and ``truth`` ``[m, k2]`` are index arrays; typically ``truth``
    is the exact top-k and ``found`` an approximate one (or a candidate set).
    """
    found, truth = np.asarray(found), np.asarray(truth)
    if found.ndim != 2 or truth.ndim != 2 or len(found) != len(truth):
        raise GradsiftError(
            f"expected index arrays [m, k] with equal m, got {found.shape} and {truth.shape}"
        )
    hits = []
    for f, t in zip(found, truth, strict=True):
        t = t[t >= 0]
        if len(t):
            hits.append(len(np.intersect1d(f[f >= 0], t)) / len(t))
    return float(np.mean(hits)) if hits else float("nan")
