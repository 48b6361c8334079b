"""FastIF candidate selection helpers: penultimate features and merged candidate lists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradsift.errors import GradsiftError
from gradsift.influence.hessian import BatchSource
from gradsift.task import Task, last_linear

__all__ = [
    "batch_source",
    "gradient_basis",
    "gathered_scores",
    "merge_candidates",
    "penultimate_features",
    "search_both_ways",
]


def penultimate_features(
    model: nn.Module,
    task: Task,
    data: Dataset | tuple[Any, ...] | BatchSource,
    batch_size: int = 1024,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
) -> np.ndarray:
    """Inputs of the model's last ``nn.Linear`` (its head): float32 ``[n, h]``.

    Runs ``task.forward`` in batches under ``no_grad`` with a forward hook; the model
    must be in eval mode if it has BatchNorm or Dropout.
    """
    source = data if isinstance(data, BatchSource) else batch_source(model, data, collate_fn)
    name, head = last_linear(model)
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach()))
    rows = []
    try:
        with torch.no_grad():
            for _, batch in source.batches(batch_size):
                seen.clear()
                task.forward(model, batch)
                if len(seen) != 1:
                    raise GradsiftError(
                        f"the head {name!r} ran {len(seen)} times in one forward pass; "
                        "penultimate features need exactly one call (use space='gradients')"
                    )
                rows.append(seen[0].reshape(seen[0].shape[0], -1).float().cpu())
    finally:
        handle.remove()
    return torch.cat(rows).numpy()


def batch_source(
    model: nn.Module, data: Dataset | tuple[Any, ...], collate_fn: Callable[[list[Any]], Any]
) -> BatchSource:
    """``data`` as a :class:`BatchSource` on the model's device, in its parameters' dtype."""
    first = next(iter(model.parameters()))
    return BatchSource(data, first.device, first.dtype, collate_fn)


def merge_candidates(
    up: np.ndarray, down: np.ndarray, k: int, values: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: ``up`` then ``down`` without duplicates, padded with ``-1`` to ``k``.

    Returns ``(candidates int64 [m, k], values float64 [m, k])``: ``values`` carries the
    matching entries of the optional ``(up_values, down_values)`` (NaN where ``-1``).
    """
    out = np.full((len(up), k), -1, dtype=np.int64)
    vals = np.full((len(up), k), np.nan)
    for t in range(len(up)):
        row = np.concatenate([up[t], down[t]])
        val = (
            np.concatenate([values[0][t], values[1][t]])
            if values is not None
            else np.zeros(len(row))
        )
        ok = row >= 0
        row, val = row[ok], val[ok]
        _, first = np.unique(row, return_index=True)
        keep = np.sort(first)[:k]
        out[t, : len(keep)] = row[keep]
        vals[t, : len(keep)] = val[keep]
    return out, vals


def search_both_ways(index: Any, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Preconditioned retrieval: the ``⌈k/2⌉`` rows of largest ``qᵀx`` (helpful) and the
    ``⌊k/2⌋`` of smallest (harmful, searched with ``−q``) in an inner-product ``index``.

    Returns ``(candidates int64 [m, k], approx float64 [m, k])`` where ``approx`` is the
    index's ``qᵀx`` (``−1`` / NaN padding). When ``q = P s_t`` and the index holds
    ``P g_i``, ``approx`` is the projected influence (exact for ``P = I``).
    """
    half = -(-k // 2)
    up_s, up = index.search(q, half)
    if k > half:
        down_s, down = index.search(-q, k - half)
    else:
        down_s, down = np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    return merge_candidates(up, down, k, (up_s.astype(np.float64), -down_s.astype(np.float64)))


def gathered_scores(
    S: torch.Tensor, G_rows: torch.Tensor, where: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """``out[t, j] = S[t] · G_rows[where[t, j]]`` where ``valid`` (NaN elsewhere), float64.

    Costs ``m × k × D`` (each test point against its own candidates only), unlike a dense
    ``S · G_rowsᵀ`` whose cost grows with the union of all candidate sets. One gather and
    matrix–vector product per test point: the work is memory-bound (``k × D`` values read
    per test point), and a batched ``einsum`` over ``[c, k, D]`` gathers measured ~3×
    slower.
    """
    out = np.full(where.shape, np.nan)
    if where.size == 0:
        return out
    S_ = S.to(G_rows.dtype)
    idx = torch.as_tensor(np.where(valid, where, 0), dtype=torch.int64)
    vals = torch.empty(where.shape, dtype=torch.float64)
    for t in range(len(S_)):
        vals[t] = (G_rows.index_select(0, idx[t]) @ S_[t]).double()
    return np.where(valid, vals.numpy(), np.nan)


def gradient_basis(G: torch.Tensor, dim: int) -> torch.Tensor:
    """The top ``dim`` right singular vectors of sample gradients ``G [r, D]``: ``[D, dim']``
    orthonormal columns (``dim' = min(dim, D, r)``), float32, largest first.

    Preconditioned retrieval then indexes ``Vᵀ g_i`` and queries ``Vᵀ s_t``: the inner
    product misses only ``s_tᵀ(I − VVᵀ)g_i``, small when the gradients lie near the span.
    Eigen-decomposition of ``GᵀG`` (float64) for ``D ≤ 8192``, randomised SVD above.
    """
    G = G.detach().cpu().double()
    r = min(dim, G.shape[0], G.shape[1])
    if G.shape[1] <= 8192:
        _, U = torch.linalg.eigh(G.T @ G)
        return U.flip(1)[:, :r].float().contiguous()
    _, _, V = torch.svd_lowrank(G, q=min(r + 10, min(G.shape)), niter=4)
    return V[:, :r].float().contiguous()
