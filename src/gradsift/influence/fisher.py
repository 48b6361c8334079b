"""Empirical-Fisher curvature from stored per-sample gradients (the DataInf/LoRA setting).

For large models the exact Hessian–vector products that
:class:`gradsift.influence.hessian.HessianOperator` takes cost a double backward pass per
vector. The influential-data benchmark of DataInf instead models the curvature of each
LoRA matrix by the empirical Fisher of the training gradients,

    ``F = (1/n) Σ_i g_i g_iᵀ  (+ weight_decay · I)``,  block-diagonal over the tracked blocks,

which is also what DataInf's closed form approximates. :class:`GradientFisherOperator`
offers the operator interface of ``HessianOperator`` that the iterative solvers use
(``matvec``, ``batch_matvec``, ``sample_batch``, ``top_eigenvalue``, ``layout``,
``dtype``, ``device``), so :class:`gradsift.influence.solvers.LiSSASolver` and
``CGSolver`` run on it through ``fit_operator`` with no model passes at all: a product
costs ``O(n·D)`` per vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gradsift.errors import GradsiftError
from gradsift.grads.layout import Block
from gradsift.influence.hessian import power_iteration

__all__ = ["GradientFisherOperator"]


class GradientFisherOperator:
    """Products with ``F = (1/n) Σ_i g_i g_iᵀ + weight_decay·I`` from gradients ``G [n, D]``.

    Args:
        G: per-sample training gradients (rows in ``layout`` order); a tensor or array.
        layout: the blocks of a row (``GradientComputer.layout``); default one block.
        block_diagonal: keep only the diagonal blocks of ``F`` (per tracked tensor), as
            DataInf does (default True).
        weight_decay: coupled L2 coefficient of training (adds ``weight_decay · I``).
        device, dtype: where and in which precision products are computed (default: those
            of ``G`` when a tensor, else CPU float32).
        row_chunk: rows per step of the streamed full-data product.
    """

    def __init__(
        self,
        G: torch.Tensor | np.ndarray,
        layout: Sequence[Block] | None = None,
        block_diagonal: bool = True,
        weight_decay: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        row_chunk: int = 4096,
    ) -> None:
        G_t = torch.as_tensor(np.asarray(G)) if not isinstance(G, torch.Tensor) else G
        if G_t.dim() != 2 or G_t.shape[0] == 0 or G_t.shape[1] == 0:
            raise GradsiftError(f"G must be [n, D] training gradients, got {tuple(G_t.shape)}")
        if weight_decay < 0:
            raise GradsiftError(f"weight_decay must be >= 0, got {weight_decay}")
        self.dtype = dtype or (G_t.dtype if G_t.is_floating_point() else torch.float32)
        self.device = torch.device(device) if device is not None else G_t.device
        self.G = G_t.to(self.device, self.dtype)
        self.n, self.dim = int(self.G.shape[0]), int(self.G.shape[1])
        self.layout = list(layout) if layout is not None else [Block("all", (self.dim,), 0)]
        if self.layout[-1].stop != self.dim:
            raise GradsiftError(f"layout covers {self.layout[-1].stop} columns, G has {self.dim}")
        self.block_diagonal = bool(block_diagonal)
        self.weight_decay = float(weight_decay)
        self.row_chunk = int(row_chunk)

    # ------------------------------------------------------------------ products
    def _sum_outer(self, rows: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``Σ_{i∈rows} g_i g_iᵀ V`` (block-diagonal part if configured)."""
        if not self.block_diagonal:
            return (V @ rows.T) @ rows
        out = torch.empty_like(V)
        for b in self.layout:
            Gb = rows[:, b.offset : b.stop]
            out[:, b.offset : b.stop] = (V[:, b.offset : b.stop] @ Gb.T) @ Gb
        return out

    def _check(self, V: torch.Tensor) -> tuple[torch.Tensor, bool]:
        V = torch.as_tensor(V)
        squeeze = V.dim() == 1
        V = V.reshape(1, -1) if squeeze else V
        if V.dim() != 2 or V.shape[1] != self.dim:
            raise GradsiftError(f"vectors must be [m, {self.dim}], got {tuple(V.shape)}")
        return V.to(self.device, self.dtype), squeeze

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """``F V`` over all rows: ``V [m, D]`` (or ``[D]``) → same shape."""
        V, squeeze = self._check(V)
        out = torch.zeros_like(V)
        for start in range(0, self.n, self.row_chunk):
            out += self._sum_outer(self.G[start : start + self.row_chunk], V)
        out = out / self.n + self.weight_decay * V
        return out[0] if squeeze else out

    def batch_matvec(self, V: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """``F_b V`` with ``F_b`` the mean over the rows ``batch`` (int indices)."""
        V, squeeze = self._check(V)
        rows = self.G[torch.as_tensor(batch, device=self.device)]
        out = self._sum_outer(rows, V) / rows.shape[0] + self.weight_decay * V
        return out[0] if squeeze else out

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``min(batch_size, n)`` distinct row indices drawn with ``generator``."""
        return torch.randperm(self.n, generator=generator)[: min(batch_size, self.n)]

    def top_eigenvalue(
        self, iters: int = 100, tol: float = 1e-3, seed: int = 0
    ) -> tuple[float, int]:
        """Largest eigenvalue of ``F`` by power iteration: ``(λ_max, iterations)``."""
        return power_iteration(self.matvec, self.dim, self.dtype, self.device, iters, tol, seed)

    def dense(self) -> torch.Tensor:
        """The explicit ``F [D, D]`` (small ``D`` only; for tests)."""
        if self.dim > 8192:
            raise GradsiftError(f"dense() is for small D; this operator has D = {self.dim}")
        return self.matvec(torch.eye(self.dim, dtype=self.dtype, device=self.device))
