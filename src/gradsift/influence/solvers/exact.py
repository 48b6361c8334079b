"""``exact``: the explicit curvature matrix and a Cholesky solve (small ``D``)."""

from __future__ import annotations

from typing import Any

import torch

from gradsift.config import DEFAULT_DAMPING
from gradsift.errors import GradsiftError
from gradsift.grads.layout import Block
from gradsift.influence.curvature import CurvatureOperator
from gradsift.influence.solvers.base import InverseHVP, SolverDiagnostics, record_residuals

__all__ = ["ExactSolver"]


class ExactSolver(InverseHVP):
    """Explicit ``H + λI`` and a Cholesky solve.

    Args:
        damping: ``λ`` (``>= 0``; must make ``H + λI`` positive definite).
        max_dim: refuse when the (largest block of the) tracked dimension exceeds this:
            building ``H`` costs ``D`` Hessian–vector products and ``D²`` memory.
        block_diagonal: one Cholesky per tracked parameter tensor.
    """

    name = "exact"

    def __init__(
        self, damping: float = DEFAULT_DAMPING, max_dim: int = 5000, block_diagonal: bool = False
    ) -> None:
        super().__init__(damping, block_diagonal)
        self.max_dim = int(max_dim)
        self.factors: list[tuple[Block, torch.Tensor, torch.Tensor]] = []

    def _fit_operator(self, operator: CurvatureOperator) -> None:
        blocks = operator.layout if operator.block_diagonal else None
        size = max(b.numel for b in blocks) if blocks else operator.dim
        if size > self.max_dim:
            raise GradsiftError(
                f"the exact solver builds the explicit {size}×{size} Hessian, above its limit "
                f"max_dim={self.max_dim}. Use CGSolver ('if-cg'), LiSSASolver ('if-lissa') or "
                "DataInfSolver ('datainf'), track fewer parameters, or raise max_dim."
            )
        self.factors = []
        if blocks is None:
            whole = Block("all", (operator.dim,), 0)
            self.factors.append(self._factor(whole, operator.dense()))
        else:
            for i, b in enumerate(blocks):
                self.factors.append(self._factor(b, operator.dense(block=i)))

    def _factor(self, block: Block, H: torch.Tensor) -> tuple[Block, torch.Tensor, torch.Tensor]:
        A = H + self.damping * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) != 0:
            lam_min = float(torch.linalg.eigvalsh(H)[0])
            raise GradsiftError(
                f"H + λI is not positive definite for {block.name!r} (smallest Hessian "
                f"eigenvalue {lam_min:.3g}, damping {self.damping:.3g}): the loss is not "
                f"convex there or training has not converged. Use damping > {-lam_min:.3g}."
            )
        return block, L, A

    def _solve(self, V: torch.Tensor, diag: SolverDiagnostics) -> torch.Tensor:
        X = torch.empty_like(V)
        R = torch.zeros(V.shape[0], dtype=V.dtype, device=V.device)
        for b, L, A in self.factors:
            Vb = V[:, b.offset : b.stop]
            Xb = torch.cholesky_solve(Vb.T, L).T
            X[:, b.offset : b.stop] = Xb
            R += ((Xb @ A) - Vb).pow(2).sum(dim=1)
        record_residuals(diag, R.sqrt() / V.norm(dim=1).clamp_min(torch.finfo(V.dtype).tiny))
        diag.converged = True
        return X

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "max_dim": self.max_dim}
