"""Empirical-Fisher curvature from stored per-sample gradients (the DataInf/LoRA setting).

For large models the exact Hessian–vector products that
:class:`gradsift.influence.hessian.HessianOperator` takes cost a double backward pass per
vector. The influential-data benchmark of DataInf instead models the curvature of each
LoRA matrix by the empirical Fisher of the training gradients,

    ``F = (1/n) Σ_i g_i g_iᵀ  (+ weight_decay · I)``,  block-diagonal over the tracked blocks,

which is also what DataInf's closed form approximates. :class:`GradientFisherOperator`
implements :class:`~gradsift.influence.curvature.CurvatureOperator`, like
``HessianOperator``, so every solver (:class:`~gradsift.influence.solvers.LiSSASolver`,
``CGSolver``, ``ExactSolver``) runs on it through ``fit_operator`` with no model passes at
all: a product costs ``O(n·D)`` per vector.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from gradsift.errors import GradsiftError
from gradsift.grads.layout import Block
from gradsift.influence.curvature import CurvatureBase

__all__ = ["GradientFisherOperator"]


class GradientFisherOperator(CurvatureBase):
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

    ``sample_batch`` returns row indices; ``batch_matvec(V, indices)`` is the mean over them.
    """

    name = "empirical Fisher"

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

    # ------------------------------------------------------------------ CurvatureBase hooks
    def _full_parts(self) -> Iterator[torch.Tensor]:
        return (
            self.G[start : start + self.row_chunk] for start in range(0, self.n, self.row_chunk)
        )

    def _sum_products(self, part: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``Σ_{i ∈ rows} g_i g_iᵀ V`` for the gradient rows ``part [r, D]``."""
        return (V @ part.T) @ part

    def _sum_block_products(
        self, part: torch.Tensor, V: torch.Tensor, block: Block
    ) -> torch.Tensor:
        Gb = part[:, block.offset : block.stop]
        return (V[:, block.offset : block.stop] @ Gb.T) @ Gb

    def _part_size(self, part: torch.Tensor) -> int:
        return int(part.shape[0])

    def _batch_part(self, batch: Any) -> torch.Tensor:
        """Row indices (from :meth:`sample_batch`) → the gradient rows ``[b, D]``."""
        return self.G[torch.as_tensor(batch, device=self.device)]
