"""``identity``: ``H = I``, influence as the gradient dot product."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from gradsift.grads.computer import GradientComputer
from gradsift.grads.layout import Block
from gradsift.influence.solvers.base import InverseHVP, SolverDiagnostics
from gradsift.task import Task

__all__ = ["IdentitySolver"]


class IdentitySolver(InverseHVP):
    """``H = I``: ``solve(V) = V / (1 + λ)``. Influence with it is the gradient dot product.

    :meth:`fit` only reads the tracked-parameter layout (no data pass).
    """

    name = "identity"

    def __init__(self, damping: float = 0.0) -> None:
        super().__init__(damping)

    def fit(
        self,
        model: nn.Module,
        task: Task,
        train_data: Dataset | tuple[Any, ...] | None = None,
        **_: Any,
    ) -> IdentitySolver:
        comp = GradientComputer(model, task)
        first = next(iter(comp.params.values()))
        return self.fit_layout(comp.layout, first.dtype, first.device)

    def fit_layout(
        self,
        layout: Sequence[Block],
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> IdentitySolver:
        """Fit to a layout only (e.g. projected gradients); returns ``self``."""
        self.layout = list(layout)
        self._dtype, self._device = dtype, torch.device(device)
        return self

    def _solve(self, V: torch.Tensor, diag: SolverDiagnostics) -> torch.Tensor:
        diag.residual_max = diag.residual_mean = 0.0
        diag.converged = True
        return V / (1.0 + self.damping)
