"""``cg``: batched conjugate gradient on ``(H + λI) x = v`` with operator products."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from gradsift.config import DEFAULT_DAMPING
from gradsift.errors import GradsiftError
from gradsift.influence.solvers.base import (
    ConvergenceWarning,
    InverseHVP,
    SolverDiagnostics,
    record_residuals,
)
from gradsift.progress import track

__all__ = ["CGSolver"]


class CGSolver(InverseHVP):
    """Conjugate gradient on ``(H + λI) x = v``, all rows at once (each with its own steps).

    Args:
        damping: ``λ``.
        tol: stop a row when its recursive residual ``‖r‖ ≤ tol·‖v‖``.
        max_iter: iteration cap (each iteration is one full-data HVP of the active rows).
        block_diagonal: solve with the block-diagonal part of ``H``.

    Raises ``GradsiftError`` on negative curvature (``pᵀ(H+λI)p ≤ 0``: increase damping);
    warns with :class:`ConvergenceWarning` when rows stop above ``tol`` after ``max_iter``.
    The reported residual is recomputed from scratch (one extra HVP), not the recursion's.
    """

    name = "cg"

    def __init__(
        self,
        damping: float = DEFAULT_DAMPING,
        tol: float = 1e-6,
        max_iter: int = 1000,
        block_diagonal: bool = False,
    ) -> None:
        super().__init__(damping, block_diagonal)
        if not tol > 0 or max_iter < 1:
            raise GradsiftError("CGSolver needs tol > 0 and max_iter >= 1")
        self.tol, self.max_iter = float(tol), int(max_iter)

    def _apply(self, P: torch.Tensor) -> torch.Tensor:
        assert self.operator is not None
        return self.operator.matvec(P) + self.damping * P

    def _solve(self, V: torch.Tensor, diag: SolverDiagnostics) -> torch.Tensor:
        X = torch.zeros_like(V)
        R = V.clone()
        P = R.clone()
        rs = (R * R).sum(dim=1)
        target = (self.tol * V.norm(dim=1)) ** 2
        active = rs > target
        it = 0
        for _ in track(range(self.max_iter), "CG", total=self.max_iter):
            if not bool(active.any()):
                break
            it += 1
            idx = active.nonzero().flatten()
            Pa = P[idx]
            AP = self._apply(Pa)
            curv = (Pa * AP).sum(dim=1)
            if bool((curv <= 0).any()):
                raise GradsiftError(
                    f"CG met negative curvature pᵀ(H+λI)p = {float(curv.min()):.3g} ≤ 0 "
                    f"(damping {self.damping:.3g}): the loss is not convex here. Increase "
                    "damping (e.g. to the magnitude of the most negative Hessian eigenvalue)."
                )
            alpha = rs[idx] / curv
            X[idx] += alpha[:, None] * Pa
            R[idx] -= alpha[:, None] * AP
            rs_new = (R[idx] * R[idx]).sum(dim=1)
            P[idx] = R[idx] + (rs_new / rs[idx])[:, None] * Pa
            rs[idx] = rs_new
            active[idx] = rs_new > target[idx]
        diag.iterations = it
        res = self.residuals(V, X)
        record_residuals(diag, res)
        diag.converged = not bool(active.any())
        if not diag.converged:
            warnings.warn(
                f"CG stopped after {self.max_iter} iterations with relative residual up to "
                f"{diag.residual_max:.3g} (tol {self.tol:g}); raise max_iter or damping.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return X

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "tol": self.tol, "max_iter": self.max_iter}
