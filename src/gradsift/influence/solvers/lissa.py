"""``lissa``: the FastIF / LiSSA stochastic recursion with an automatic, restarting scale.

The recursion runs on mini-batch Hessians ``H_b``, whose top eigenvalue can be many times
the full-batch ``λ_max`` (issue 13: 9–12× with 64 rows of a 100-dimensional logistic
regression). The automatic scale is therefore estimated from mini-batch curvature (the
largest power-iteration ``λ_max(H_b)`` over ``scale_batches`` seeded mini-batches of the
recursion's own size), and a chain that still diverges is restarted with twice the scale
(up to ``max_restarts`` times), reported in :attr:`SolverDiagnostics.restarts` and by a
:class:`ConvergenceWarning`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import torch

from gradsift.config import DEFAULT_DAMPING
from gradsift.errors import GradsiftError
from gradsift.influence.curvature import CurvatureOperator, power_iteration
from gradsift.influence.solvers.base import (
    ConvergenceWarning,
    InverseHVP,
    SolverDiagnostics,
    record_residuals,
)
from gradsift.progress import track

__all__ = ["LiSSADivergence", "LiSSASolver", "ScaleFrom"]

#: Where the automatic scale comes from: ``auto`` (mini-batch curvature when
#: ``batch_size`` is set, else the full batch), ``minibatch`` or ``full``.
ScaleFrom = Literal["auto", "minibatch", "full"]


class LiSSADivergence(GradsiftError):
    """A LiSSA chain grew without bound: the scale is below the mini-batch curvature."""


class LiSSASolver(InverseHVP):
    """The FastIF LiSSA recursion with an automatic scale.

    ``h₀ = v``; ``h_t = v + (1 − d)·h_{t−1} − H_b h_{t−1} / s`` with ``H_b`` the Hessian of one
    fresh mini-batch per step; the chain returns ``h_T / s ≈ (H + d·s·I)⁻¹ v``. Here the
    *effective* damping ``λ = damping`` is given and ``d = λ / s``, so LiSSA solves the same
    system as the other solvers. It converges when every eigenvalue of ``H_b + λI`` lies
    below ``2s``; the error along an eigenvalue ``μ`` of ``H + λI`` shrinks like
    ``(1 − μ/s)^T``.

    Args:
        damping: effective ``λ``.
        scale: ``s``; None (default) = ``scale_factor · (λ_max + λ)``, ``λ_max`` from power
            iteration (see ``scale_from``). FastIF's fixed ``s = 1e4`` is far above
            ``λ_max`` for typical losses: the chain then barely moves from ``v`` and the
            result is a scaled gradient dot product. A given scale is never changed: a
            chain that diverges with it raises :class:`LiSSADivergence`.
        scale_factor: margin over the top eigenvalue (default 1.5: tolerates mini-batch
            Hessians with eigenvalues up to about 3× the estimate).
        scale_from: ``auto`` (default: mini-batch curvature when ``batch_size`` is set,
            else the full-batch ``H``), ``minibatch`` or ``full`` (the rule before issue 13:
            diverges when ``λ_max(H_b) > 2s``).
        scale_batches: mini-batches whose ``λ_max(H_b)`` are estimated; the largest is used.
        max_restarts: with the automatic scale, a diverging chain restarts with twice the
            scale, at most this many times (then :class:`LiSSADivergence`).
        steps: ``T`` per chain. repetitions: chains averaged (seeds ``seed, seed+1, …``).
        batch_size: samples per step's ``H_b``; None uses the full data (deterministic).
        tail_average: average the iterates of the last ``tail_average·T`` steps (default
            0.5) instead of returning the last one. The recursion's fixed point is the
            mean of its stationary iterates, so averaging cuts the mini-batch noise
            several-fold at no cost; 0 is FastIF's plain last iterate.
        residual_tol: warn when the final relative residual exceeds it.
        power_iters: cap on power iterations for the auto scale.
        block_diagonal: use the block-diagonal part of ``H``.

    Raises :class:`LiSSADivergence` (a ``GradsiftError``) when a chain diverges with a
    given scale, or still diverges after ``max_restarts`` automatic restarts.
    """

    name = "lissa"

    def __init__(
        self,
        damping: float = DEFAULT_DAMPING,
        scale: float | None = None,
        scale_factor: float = 1.5,
        steps: int = 1000,
        repetitions: int = 1,
        batch_size: int | None = 64,
        seed: int = 0,
        tail_average: float = 0.5,
        residual_tol: float = 0.1,
        power_iters: int = 100,
        block_diagonal: bool = False,
        scale_from: ScaleFrom = "auto",
        scale_batches: int = 10,
        max_restarts: int = 4,
    ) -> None:
        super().__init__(damping, block_diagonal)
        if scale is not None and not scale > 0:
            raise GradsiftError(f"scale must be > 0, got {scale}")
        if not scale_factor > 0.5:
            raise GradsiftError(f"scale_factor must be > 0.5 (convergence), got {scale_factor}")
        if steps < 1 or repetitions < 1 or (batch_size is not None and batch_size < 1):
            raise GradsiftError("steps, repetitions and batch_size must be >= 1")
        if scale_from not in ("auto", "minibatch", "full"):
            raise GradsiftError(f"scale_from must be auto, minibatch or full, got {scale_from!r}")
        if scale_batches < 1 or max_restarts < 0:
            raise GradsiftError("scale_batches must be >= 1 and max_restarts >= 0")
        if not 0.0 <= tail_average <= 1.0:
            raise GradsiftError(f"tail_average must lie in [0, 1], got {tail_average}")
        self.tail_average = float(tail_average)
        self.scale_given = scale
        self.scale_factor = float(scale_factor)
        self.steps, self.repetitions = int(steps), int(repetitions)
        self.batch_size, self.seed = batch_size, int(seed)
        self.residual_tol, self.power_iters = float(residual_tol), int(power_iters)
        self.scale_from: ScaleFrom = scale_from
        self.scale_batches, self.max_restarts = int(scale_batches), int(max_restarts)
        self.scale: float | None = scale
        #: the eigenvalue the scale was set from (full-batch or mini-batch estimate).
        self.top_eigenvalue: float | None = None
        #: full-batch ``λ_max(H)`` (when ``scale_from`` used it) and the largest
        #: mini-batch ``λ_max(H_b)`` (when it used mini-batches).
        self.full_eigenvalue: float | None = None
        self.batch_eigenvalue: float | None = None
        self.restarts = 0

    @classmethod
    def from_fastif(
        cls, d: float = 5e-3, scale: float = 1e4, steps: int = 1000, **kwargs: Any
    ) -> LiSSASolver:
        """FastIF's parametrisation (``d``, ``s``; effective damping ``d·s``, by default 50)
        and its plain last iterate (``tail_average=0``)."""
        kwargs.setdefault("tail_average", 0.0)
        return cls(damping=d * scale, scale=scale, steps=steps, **kwargs)

    def _fit_operator(self, operator: CurvatureOperator) -> None:
        if self.scale_given is not None:
            self.scale = self.scale_given
            return
        if self.uses_minibatch_scale:
            lam = self.batch_eigenvalue = self._minibatch_eigenvalue(operator)
        else:
            lam, _ = operator.top_eigenvalue(iters=self.power_iters, seed=self.seed)
            self.full_eigenvalue = lam
        self.top_eigenvalue = lam
        self.scale = self.scale_factor * (abs(lam) + self.damping)
        self.restarts = 0
        if not self.scale > 0:
            raise GradsiftError("the Hessian is zero and damping is 0: nothing to invert")

    @property
    def uses_minibatch_scale(self) -> bool:
        """Whether the automatic scale comes from mini-batch curvature."""
        if self.scale_from == "auto":
            return self.batch_size is not None
        return self.scale_from == "minibatch"

    def _minibatch_eigenvalue(self, operator: CurvatureOperator) -> float:
        """Largest ``|λ_max(H_b)|`` over ``scale_batches`` seeded mini-batches of the
        recursion's size (power iteration to 1% per batch; weight decay included)."""
        size = self.batch_size if self.batch_size is not None else 64
        gen = torch.Generator().manual_seed(self.seed + 7919)
        lams = []
        for j in range(self.scale_batches):
            batch = operator.sample_batch(size, gen)
            lam, _ = power_iteration(
                lambda v, b=batch: operator.batch_matvec(v, b),
                operator.dim,
                operator.dtype,
                operator.device,
                iters=self.power_iters,
                tol=1e-2,
                seed=self.seed + j,
            )
            lams.append(abs(lam))
        # power iteration under-estimates λ_max slightly: 2% margin on the largest
        return 1.02 * float(np.max(lams))

    def run_chain(self, V: torch.Tensor, seed: int) -> torch.Tensor:
        """One chain for ``V [m, D]`` (solver dtype/device), mini-batches drawn from ``seed``.

        Returns ``h_T / s``, or with ``tail_average > 0`` the mean of ``h_t / s`` over the
        last ``⌈tail_average·T⌉`` steps. Chains with different seeds are independent, so
        repetitions can run in separate processes and be averaged.
        """
        op, s = self.operator, self.scale
        if op is None or s is None:
            raise GradsiftError("LiSSASolver is not fitted; call fit(...) first")
        d = self.damping / s
        gen = torch.Generator().manual_seed(seed)
        vnorm = V.norm(dim=1).clamp_min(torch.finfo(V.dtype).tiny)
        first_avg = self.steps - max(1, math.ceil(self.tail_average * self.steps)) + 1
        h, acc = V.clone(), torch.zeros_like(V)
        for t in track(range(1, self.steps + 1), f"LiSSA chain {seed}", total=self.steps):
            if self.batch_size is None:
                Hh = op.matvec(h)
            else:
                Hh = op.batch_matvec(h, op.sample_batch(self.batch_size, gen))
            h = V + (1.0 - d) * h - Hh / s
            if t >= first_avg:
                acc += h
            if t % 25 == 0 or t == self.steps:
                growth = float((h.norm(dim=1) / vnorm).max())
                if not math.isfinite(growth) or growth > 10.0 * (t + 1):
                    raise LiSSADivergence(
                        f"LiSSA diverged at step {t} (‖h‖/‖v‖ = {growth:.3g}) with scale "
                        f"{s:.3g}: the mini-batch Hessians have eigenvalues above 2s. Pass a "
                        "larger scale or scale_factor, or a larger batch_size."
                    )
        return acc / (self.steps - first_avg + 1) / s

    def _solve(self, V: torch.Tensor, diag: SolverDiagnostics) -> torch.Tensor:
        while True:
            try:
                X = torch.zeros_like(V)
                for r in range(self.repetitions):
                    X += self.run_chain(V, self.seed + r)
                break
            except LiSSADivergence as err:
                self.restart_or_raise(err, stacklevel=5)
        X /= self.repetitions
        self.check_chains(V, X, diag, stacklevel=4)
        return X

    def restart_or_raise(self, err: LiSSADivergence, stacklevel: int = 2) -> None:
        """After a diverged chain: double the automatic scale and warn (the caller reruns
        every chain), or re-raise ``err`` when the scale was given or restarts ran out."""
        if self.scale_given is not None or self.restarts >= self.max_restarts:
            raise err
        assert self.scale is not None
        old, self.scale = self.scale, 2.0 * self.scale
        self.restarts += 1
        warnings.warn(
            f"LiSSA diverged with the automatic scale {old:.3g} ({err}); restart "
            f"{self.restarts}/{self.max_restarts} with scale {self.scale:.3g}",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )

    def check_chains(
        self, V: torch.Tensor, X: torch.Tensor, diag: SolverDiagnostics, stacklevel: int = 2
    ) -> None:
        """Record in ``diag`` what the averaged chains ``X`` achieved for ``V`` (steps, scale,
        residuals, convergence); warn with :class:`ConvergenceWarning` when the residual is
        above ``residual_tol``. Shared by :meth:`solve` and parallel chain runners."""
        diag.iterations = self.steps
        diag.scale, diag.top_eigenvalue = self.scale, self.top_eigenvalue
        diag.restarts = self.restarts
        record_residuals(diag, self.residuals(V, X))
        diag.converged = bool(
            diag.residual_max is not None and diag.residual_max <= self.residual_tol
        )
        if not diag.converged:
            warnings.warn(
                f"LiSSA did not converge: relative residual up to {diag.residual_max:.3g} "
                f"(tolerance {self.residual_tol:g}) after {self.steps} steps × "
                f"{self.repetitions} repetitions with scale {self.scale:.3g} and damping "
                f"{self.damping:.3g}. Use more steps/repetitions, a larger batch_size, the "
                "automatic scale, or CGSolver.",
                ConvergenceWarning,
                stacklevel=stacklevel,
            )

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "scale": self.scale,
            "scale_factor": self.scale_factor,
            "scale_from": self.scale_from,
            "scale_batches": self.scale_batches,
            "top_eigenvalue": self.top_eigenvalue,
            "full_eigenvalue": self.full_eigenvalue,
            "batch_eigenvalue": self.batch_eigenvalue,
            "restarts": self.restarts,
            "steps": self.steps,
            "repetitions": self.repetitions,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "tail_average": self.tail_average,
            "residual_tol": self.residual_tol,
        }
