"""The inverse-HVP interface: :class:`InverseHVP`, its diagnostics and warning.

A solver maps ``V [m, D] ↦ (H + λI)⁻¹ V`` row-wise, where ``H`` is a
:class:`~gradsift.influence.curvature.CurvatureOperator` (by default the training-loss
:class:`~gradsift.influence.hessian.HessianOperator` built by :meth:`InverseHVP.fit`) and
``λ`` the solver's damping. See :mod:`gradsift.influence.solvers` for the solvers.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradsift.config import DEFAULT_DAMPING
from gradsift.errors import GradsiftError
from gradsift.grads.layout import Block
from gradsift.influence.curvature import CurvatureOperator, as_rows
from gradsift.influence.hessian import HessianOperator
from gradsift.task import Task

__all__ = ["ConvergenceWarning", "InverseHVP", "SolverDiagnostics", "record_residuals"]


class ConvergenceWarning(UserWarning):
    """An iterative inverse-HVP solver stopped with a large relative residual."""


@dataclass
class SolverDiagnostics:
    """What the last :meth:`InverseHVP.solve` did.

    Attributes:
        method: solver name.
        damping: the effective ``λ`` of ``(H + λI)`` (DataInf: see ``block_damping``).
        rows: number of right-hand sides solved.
        residual_max, residual_mean: ``‖(H+λI)x − v‖ / ‖v‖`` over the rows (None when not
            computed, e.g. DataInf, which does not invert ``H`` itself).
        iterations: CG iterations / LiSSA steps per chain (None for closed forms).
        converged: whether the residual met the solver's tolerance (None: not checked).
        scale: LiSSA scale ``s``; ``top_eigenvalue``: the power-iteration estimate used.
        restarts: LiSSA restarts with a doubled automatic scale after a diverged chain.
        block_damping: DataInf's per-block ``λ_l``.
        seconds: wall time of the solve.
    """

    method: str
    damping: float
    rows: int = 0
    residual_max: float | None = None
    residual_mean: float | None = None
    iterations: int | None = None
    converged: bool | None = None
    scale: float | None = None
    top_eigenvalue: float | None = None
    restarts: int = 0
    block_damping: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InverseHVP(ABC):
    """``V [m, D] ↦ (H + λI)⁻¹ V`` row-wise. Call :meth:`fit` (or ``fit_operator``) first."""

    name: ClassVar[str] = "inverse-hvp"

    def __init__(self, damping: float = DEFAULT_DAMPING, block_diagonal: bool = False) -> None:
        if not (damping >= 0 and math.isfinite(damping)):
            raise GradsiftError(f"damping must be a finite number >= 0, got {damping}")
        self.damping = float(damping)
        self.block_diagonal = bool(block_diagonal)
        self.operator: CurvatureOperator | None = None
        self.layout: list[Block] = []
        self.diagnostics: SolverDiagnostics | None = None
        self._dtype: torch.dtype = torch.float32
        self._device: torch.device = torch.device("cpu")

    # ---------------------------------------------------------------- fitting
    def fit(
        self,
        model: nn.Module,
        task: Task,
        train_data: Dataset | tuple[Any, ...],
        *,
        weight_decay: float = 0.0,
        batch_size: int = 256,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
    ) -> InverseHVP:
        """Fit on the training data the model was trained on; returns ``self``.

        ``weight_decay`` is the coupled L2 coefficient used in training (adds
        ``weight_decay·I`` to ``H``); ``batch_size`` bounds the samples per HVP call.
        """
        op = HessianOperator(
            model,
            task,
            train_data,
            weight_decay=weight_decay,
            batch_size=batch_size,
            block_diagonal=self.block_diagonal,
            collate_fn=collate_fn,
        )
        return self.fit_operator(op)

    def fit_operator(self, operator: CurvatureOperator) -> InverseHVP:
        """Fit on an existing curvature operator (Hessian, Fisher, …); returns ``self``.

        The operator's ``block_diagonal`` setting then applies (it replaces the solver's).
        """
        if not isinstance(operator, CurvatureOperator):
            raise GradsiftError(
                f"fit_operator needs a CurvatureOperator (layout, dim, dtype, device, "
                f"block_diagonal, weight_decay, matvec, batch_matvec, sample_batch, dense, "
                f"top_eigenvalue), got {type(operator).__name__}"
            )
        self.operator = operator
        self.block_diagonal = operator.block_diagonal
        self.layout = list(operator.layout)
        self._dtype, self._device = operator.dtype, operator.device
        self._fit_operator(operator)
        return self

    def _fit_operator(self, operator: CurvatureOperator) -> None:  # noqa: B027
        """Precompute what the solver needs (no-op by default)."""

    @property
    def dim(self) -> int:
        """``D``, the number of tracked scalars (0 before fitting)."""
        return self.layout[-1].stop if self.layout else 0

    @property
    def fitted(self) -> bool:
        return bool(self.layout)

    # ---------------------------------------------------------------- solving
    def solve(self, V: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Rows ``(H + λI)⁻¹ v``: ``V [m, D]`` (or ``[D]``) → same shape, dtype and device.

        The result is a plain tensor (``requires_grad=False``, no autograd graph), even
        when ``V`` carries one or the solver differentiates the model inside.
        """
        if not self.fitted:
            raise GradsiftError(f"{type(self).__name__} is not fitted; call fit(...) first")
        W, squeeze = as_rows(V, self.dim)
        bad = (~torch.isfinite(W).all(dim=1)).nonzero().flatten()
        if len(bad):
            raise GradsiftError(f"solve got NaN/Inf in rows {bad[:10].tolist()} of V")
        t0 = time.perf_counter()
        diag = SolverDiagnostics(method=self.name, damping=self.damping, rows=W.shape[0])
        if W.shape[0] == 0:
            self.diagnostics = diag
            return (W[0] if squeeze else W).clone()
        X = self._solve(W.to(self._device, self._dtype), diag)
        diag.seconds = time.perf_counter() - t0
        self.diagnostics = diag
        X = X.detach().to(W.device, W.dtype)
        return X[0] if squeeze else X

    @abstractmethod
    def _solve(self, V: torch.Tensor, diag: SolverDiagnostics) -> torch.Tensor:
        """Solve validated ``V [m, D]`` (solver dtype/device); fill ``diag``."""

    def residuals(self, V: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Per-row ``‖(H+λI)x − v‖ / ‖v‖`` (one full-data product; needs an operator)."""
        if self.operator is None:
            raise GradsiftError(f"{type(self).__name__} has no curvature operator for residuals")
        V = V.to(self._device, self._dtype)
        X = X.to(self._device, self._dtype)
        R = self.operator.matvec(X) + self.damping * X - V
        return R.norm(dim=1) / V.norm(dim=1).clamp_min(torch.finfo(V.dtype).tiny)

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable description of the solver's parameters."""
        return {"name": self.name, "damping": self.damping, "block_diagonal": self.block_diagonal}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "name")
        return f"{type(self).__name__}({args})"


def record_residuals(diag: SolverDiagnostics, res: torch.Tensor) -> None:
    """Store the max and mean of the per-row relative residuals ``res`` in ``diag``."""
    diag.residual_max = float(res.max()) if res.numel() else 0.0
    diag.residual_mean = float(res.mean()) if res.numel() else 0.0
