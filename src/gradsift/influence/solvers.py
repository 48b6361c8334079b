"""Inverse-Hessian–vector products as small composable operators.

Stable interface (FastIF and :mod:`gradsift.influence.scores` build on it)::

    solver = CGSolver(damping=1e-3).fit(model, task, (X_train, y_train), weight_decay=wd)
    S = solver.solve(V)      # V: torch.Tensor [m, D] → S [m, D], row j = (H + λI)⁻¹ v_j
    solver.diagnostics       # SolverDiagnostics of the last solve()

- ``D`` is the number of tracked scalars, rows in the layout of
  :class:`~gradsift.grads.computer.GradientComputer` (``solver.layout``, ``solver.dim``).
- ``H = (1/n) Σ_i ∇²ℓ_i + weight_decay·I`` over the training data given to :meth:`fit`
  (see :mod:`gradsift.influence.hessian`); ``λ = damping`` (for LiSSA the *effective*
  damping ``d·s``). ``solve`` returns a tensor with ``V``'s dtype and device; it computes
  in the tracked parameters' dtype. ``H`` is symmetric, so solving the test gradients
  once and dotting with train gradients gives ``g_tᵀ (H+λI)⁻¹ g_i`` (positive = helpful).
- ``fit_operator(op)`` fits on an existing :class:`~gradsift.influence.hessian.HessianOperator`
  (share one between solvers, or pass ``block_diagonal=True`` to the operator).
- ``diagnostics.residual_max`` / ``residual_mean`` are the relative residuals
  ``‖(H+λI)x − v‖ / ‖v‖`` over the rows (None where not computed); iterative solvers warn
  with :class:`ConvergenceWarning` when the residual stays above their tolerance.

Solvers (also by name through :func:`make_solver`):

- ``identity`` :class:`IdentitySolver` — ``H = I``: ``v / (1 + λ)``; influence becomes the
  gradient dot product.
- ``exact`` :class:`ExactSolver` — explicit ``H`` + Cholesky; refuses ``D > max_dim``.
- ``cg`` :class:`CGSolver` — batched conjugate gradient with Hessian–vector products.
- ``lissa`` :class:`LiSSASolver` — the FastIF recursion, scale from power iteration.
  :meth:`LiSSASolver.run_chain` runs one seeded chain, for parallel repetitions.
- ``datainf`` :class:`DataInfSolver` — closed form from per-sample per-layer gradients.
"""

from __future__ import annotations

import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradsift.config import DEFAULT_DAMPING
from gradsift.errors import GradsiftError
from gradsift.grads.computer import GradientComputer
from gradsift.grads.layout import Block
from gradsift.influence.hessian import BatchSource, HessianOperator
from gradsift.progress import track
from gradsift.task import Task

__all__ = [
    "CGSolver",
    "ConvergenceWarning",
    "DataInfSolver",
    "ExactSolver",
    "IdentitySolver",
    "InverseHVP",
    "LiSSASolver",
    "SolverDiagnostics",
    "SOLVERS",
    "make_solver",
]


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
    block_damping: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- interface


class InverseHVP(ABC):
    """``V [m, D] ↦ (H + λI)⁻¹ V`` row-wise. Call :meth:`fit` (or ``fit_operator``) first."""

    name: ClassVar[str] = "inverse-hvp"

    def __init__(self, damping: float = DEFAULT_DAMPING, block_diagonal: bool = False) -> None:
        if not (damping >= 0 and math.isfinite(damping)):
            raise GradsiftError(f"damping must be a finite number >= 0, got {damping}")
        self.damping = float(damping)
        self.block_diagonal = bool(block_diagonal)
        self.operator: HessianOperator | None = None
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

    def fit_operator(self, operator: HessianOperator) -> InverseHVP:
        """Fit on an existing Hessian operator; returns ``self``.

        The operator's ``block_diagonal`` setting then applies (it replaces the solver's).
        """
        self.operator = operator
        self.block_diagonal = operator.block_diagonal
        self.layout = list(operator.layout)
        self._dtype, self._device = operator.dtype, operator.device
        self._fit_operator(operator)
        return self

    def _fit_operator(self, operator: HessianOperator) -> None:  # noqa: B027
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
        V_in = torch.as_tensor(V).detach()
        squeeze = V_in.dim() == 1
        W = V_in.reshape(1, -1) if squeeze else V_in
        if W.dim() != 2 or W.shape[1] != self.dim:
            raise GradsiftError(
                f"solve expects vectors [m, {self.dim}] in the tracked-parameter layout, got "
                f"{tuple(V_in.shape)}"
            )
        bad = (~torch.isfinite(W).all(dim=1)).nonzero().flatten()
        if len(bad):
            raise GradsiftError(f"solve got NaN/Inf in rows {bad[:10].tolist()} of V")
        t0 = time.perf_counter()
        diag = SolverDiagnostics(method=self.name, damping=self.damping, rows=W.shape[0])
        if W.shape[0] == 0:
            self.diagnostics = diag
            return V_in.clone()
        X = self._solve(W.to(self._device, self._dtype), diag)
        diag.seconds = time.perf_counter() - t0
        self.diagnostics = diag
        X = X.detach().to(V_in.device, V_in.dtype)
        return X[0] if squeeze else X

    @abstractmethod
    def _solve(self, V: torch.Tensor, diag: SolverDiagnostics) -> torch.Tensor:
        """Solve validated ``V [m, D]`` (solver dtype/device); fill ``diag``."""

    def residuals(self, V: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Per-row ``‖(H+λI)x − v‖ / ‖v‖`` (one full-data HVP; needs a Hessian operator)."""
        if self.operator is None:
            raise GradsiftError(f"{type(self).__name__} has no Hessian operator for residuals")
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


def _record_residuals(diag: SolverDiagnostics, res: torch.Tensor) -> None:
    diag.residual_max = float(res.max()) if res.numel() else 0.0
    diag.residual_mean = float(res.mean()) if res.numel() else 0.0


# --------------------------------------------------------------------------- identity


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


# --------------------------------------------------------------------------- exact


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

    def _fit_operator(self, operator: HessianOperator) -> None:
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
        _record_residuals(diag, R.sqrt() / V.norm(dim=1).clamp_min(torch.finfo(V.dtype).tiny))
        diag.converged = True
        return X

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "max_dim": self.max_dim}


# --------------------------------------------------------------------------- CG


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
        _record_residuals(diag, res)
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


# --------------------------------------------------------------------------- LiSSA


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
        scale: ``s``; None (default) = ``scale_factor · (λ_max + λ)`` with ``λ_max`` from
            power iteration on ``H``. FastIF's fixed ``s = 1e4`` is far above ``λ_max`` for
            typical losses: the chain then barely moves from ``v`` and the result is a
            scaled gradient dot product.
        scale_factor: margin over the top eigenvalue (default 1.5: tolerates mini-batch
            Hessians with eigenvalues up to about 3·λ_max).
        steps: ``T`` per chain. repetitions: chains averaged (seeds ``seed, seed+1, …``).
        batch_size: samples per step's ``H_b``; None uses the full data (deterministic).
        tail_average: average the iterates of the last ``tail_average·T`` steps (default
            0.5) instead of returning the last one. The recursion's fixed point is the
            mean of its stationary iterates, so averaging cuts the mini-batch noise
            several-fold at no cost; 0 is FastIF's plain last iterate.
        residual_tol: warn when the final relative residual exceeds it.
        power_iters: cap on power iterations for the auto scale.
        block_diagonal: use the block-diagonal part of ``H``.

    Raises ``GradsiftError`` when a chain diverges (scale too small for the mini-batch
    Hessians): pass a larger ``scale``/``scale_factor`` or ``batch_size``.
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
    ) -> None:
        super().__init__(damping, block_diagonal)
        if scale is not None and not scale > 0:
            raise GradsiftError(f"scale must be > 0, got {scale}")
        if not scale_factor > 0.5:
            raise GradsiftError(f"scale_factor must be > 0.5 (convergence), got {scale_factor}")
        if steps < 1 or repetitions < 1 or (batch_size is not None and batch_size < 1):
            raise GradsiftError("steps, repetitions and batch_size must be >= 1")
        if not 0.0 <= tail_average <= 1.0:
            raise GradsiftError(f"tail_average must lie in [0, 1], got {tail_average}")
        self.tail_average = float(tail_average)
        self.scale_given = scale
        self.scale_factor = float(scale_factor)
        self.steps, self.repetitions = int(steps), int(repetitions)
        self.batch_size, self.seed = batch_size, int(seed)
        self.residual_tol, self.power_iters = float(residual_tol), int(power_iters)
        self.scale: float | None = scale
        self.top_eigenvalue: float | None = None

    @classmethod
    def from_fastif(
        cls, d: float = 5e-3, scale: float = 1e4, steps: int = 1000, **kwargs: Any
    ) -> LiSSASolver:
        """FastIF's parametrisation (``d``, ``s``; effective damping ``d·s``, by default 50)
        and its plain last iterate (``tail_average=0``)."""
        kwargs.setdefault("tail_average", 0.0)
        return cls(damping=d * scale, scale=scale, steps=steps, **kwargs)

    def _fit_operator(self, operator: HessianOperator) -> None:
        if self.scale_given is not None:
            self.scale = self.scale_given
            return
        lam, _ = operator.top_eigenvalue(iters=self.power_iters, seed=self.seed)
        self.top_eigenvalue = lam
        self.scale = self.scale_factor * (abs(lam) + self.damping)
        if not self.scale > 0:
            raise GradsiftError("the Hessian is zero and damping is 0: nothing to invert")

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
                    raise GradsiftError(
                        f"LiSSA diverged at step {t} (‖h‖/‖v‖ = {growth:.3g}) with scale "
                        f"{s:.3g}: the mini-batch Hessians have eigenvalues above 2s. Pass a "
                        "larger scale or scale_factor, or a larger batch_size."
                    )
        return acc / (self.steps - first_avg + 1) / s

    def _solve(self, V: torch.Tensor, diag: SolverDiagnostics) -> torch.Tensor:
        X = torch.zeros_like(V)
        for r in range(self.repetitions):
            X += self.run_chain(V, self.seed + r)
        X /= self.repetitions
        diag.iterations = self.steps
        diag.scale, diag.top_eigenvalue = self.scale, self.top_eigenvalue
        _record_residuals(diag, self.residuals(V, X))
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
                stacklevel=3,
            )
        return X

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "scale": self.scale,
            "scale_factor": self.scale_factor,
            "top_eigenvalue": self.top_eigenvalue,
            "steps": self.steps,
            "repetitions": self.repetitions,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "tail_average": self.tail_average,
            "residual_tol": self.residual_tol,
        }


# --------------------------------------------------------------------------- DataInf


class DataInfSolver(InverseHVP):
    """DataInf's closed form, per tracked block ``l`` (parameter tensor or projected block).

    Approximates ``H`` by the empirical Fisher ``(1/n) Σ_i g_i g_iᵀ`` restricted to each
    block, damped by ``λ_l``, and swaps the inverse with the mean:

        ``(H_l + λ_l I)⁻¹ v ≈ (1/(n λ_l)) Σ_i [v − (g_ilᵀ v)/(λ_l + ‖g_il‖²) · g_il]``

    Cost ``O(n·D)`` per vector, no matrix inverse. The swap error grows with the block
    dimension, so it suits small blocks (LoRA adapters, last layers).

    Args:
        damping: a fixed ``λ_l`` for every block; None (default) uses DataInf's
            ``λ_l = damping_factor · mean_i ‖g_il‖² / d_l`` from the training gradients.
        damping_factor: the 0.1 in that rule.
        block_rows: training rows per step of the streamed sums.

    ``weight_decay`` given to :meth:`fit` / :meth:`fit_gradients` is added to every ``λ_l``.
    """

    name = "datainf"

    def __init__(
        self, damping: float | None = None, damping_factor: float = 0.1, block_rows: int = 4096
    ) -> None:
        super().__init__(0.0 if damping is None else damping, block_diagonal=True)
        if not damping_factor > 0:
            raise GradsiftError(f"damping_factor must be > 0, got {damping_factor}")
        self.fixed_damping = damping
        self.damping_factor = float(damping_factor)
        self.block_rows = int(block_rows)
        self.G: torch.Tensor | np.ndarray | None = None
        self.block_damping: dict[str, float] = {}
        self._sq_norms: torch.Tensor | None = None  # [n, n_blocks]

    def fit(
        self,
        model: nn.Module,
        task: Task,
        train_data: Dataset | tuple[Any, ...],
        *,
        weight_decay: float = 0.0,
        batch_size: int = 256,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
    ) -> DataInfSolver:
        """Compute the per-sample training gradients (in memory) and fit on them."""
        comp = GradientComputer(model, task)
        first = next(iter(comp.params.values()))
        source = BatchSource(train_data, first.device, first.dtype, collate_fn)
        rows = [
            comp.compute(batch, start)[0].detach()
            for start, batch in track(
                source.batches(batch_size), "DataInf gradients", total=-(-source.n // batch_size)
            )
        ]
        return self.fit_gradients(torch.cat(rows), comp.layout, weight_decay=weight_decay)

    def fit_operator(self, operator: HessianOperator) -> DataInfSolver:
        raise GradsiftError(
            "DataInf inverts the empirical Fisher of the per-sample gradients, not a Hessian "
            "operator: use fit(model, task, train_data) or fit_gradients(G, layout)"
        )

    def fit_gradients(
        self,
        G: torch.Tensor | np.ndarray,
        layout: Sequence[Block] | None = None,
        weight_decay: float = 0.0,
    ) -> DataInfSolver:
        """Fit on training gradients ``G [n, D]`` (a tensor, array or memmap, e.g. a store's
        rows) laid out as ``layout`` (default: one block of all ``D`` columns)."""
        if G.ndim != 2 or G.shape[0] == 0 or G.shape[1] == 0:
            raise GradsiftError(f"DataInf needs training gradients [n, D], got {tuple(G.shape)}")
        D = int(G.shape[1])
        layout = list(layout) if layout is not None else [Block("all", (D,), 0)]
        if layout[-1].stop != D:
            raise GradsiftError(f"layout covers {layout[-1].stop} columns but G has {D}")
        if weight_decay < 0:
            raise GradsiftError(f"weight_decay must be >= 0, got {weight_decay}")
        self.G, self.layout = G, layout
        if isinstance(G, torch.Tensor):
            self._dtype, self._device = G.dtype, G.device
        else:
            self._dtype = torch.float64 if G.dtype == np.float64 else torch.float32
            self._device = torch.device("cpu")
        sq = [self._block_sq_norms(rows) for _, rows in self._row_blocks()]
        self._sq_norms = torch.cat(sq)
        n = self._sq_norms.shape[0]
        self.block_damping = {}
        for j, b in enumerate(layout):
            lam = (
                self.fixed_damping
                if self.fixed_damping is not None
                else self.damping_factor * float(self._sq_norms[:, j].sum()) / (n * b.numel)
            )
            lam += weight_decay
            if not lam > 0:
                raise GradsiftError(
                    f"DataInf damping for block {b.name!r} is {lam}: every training gradient "
                    "is zero there. Pass damping > 0."
                )
            self.block_damping[b.name] = float(lam)
        return self

    def _row_blocks(self):
        assert self.G is not None
        for start in range(0, self.G.shape[0], self.block_rows):
            rows = self.G[start : start + self.block_rows]
            yield (
                start,
                torch.as_tensor(
                    np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows
                ).to(self._device, self._dtype),
            )

    def _block_sq_norms(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [rows[:, b.offset : b.stop].pow(2).sum(dim=1) for b in self.layout], dim=1
        )

    def _solve(self, V: torch.Tensor, diag: SolverDiagnostics) -> torch.Tensor:
        assert self._sq_norms is not None
        n = self._sq_norms.shape[0]
        acc = torch.zeros_like(V)
        for start, rows in self._row_blocks():
            sq = self._sq_norms[start : start + rows.shape[0]]
            for j, b in enumerate(self.layout):
                Gb = rows[:, b.offset : b.stop]
                coeff = (V[:, b.offset : b.stop] @ Gb.T) / (self.block_damping[b.name] + sq[:, j])
                acc[:, b.offset : b.stop] += coeff @ Gb
        X = torch.empty_like(V)
        for b in self.layout:
            lam = self.block_damping[b.name]
            X[:, b.offset : b.stop] = (
                V[:, b.offset : b.stop] - acc[:, b.offset : b.stop] / n
            ) / lam
        diag.block_damping = dict(self.block_damping)
        diag.damping = float(np.mean(list(self.block_damping.values())))
        return X

    def settings(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "damping": self.fixed_damping,
            "damping_factor": self.damping_factor,
            "block_damping": dict(self.block_damping),
        }


# --------------------------------------------------------------------------- registry

#: Solver classes by name.
SOLVERS: dict[str, type[InverseHVP]] = {
    "identity": IdentitySolver,
    "exact": ExactSolver,
    "cg": CGSolver,
    "lissa": LiSSASolver,
    "datainf": DataInfSolver,
}


def make_solver(name: str, **kwargs: Any) -> InverseHVP:
    """A solver by name (``identity``, ``exact``, ``cg``, ``lissa``, ``datainf``); keyword
    arguments go to its constructor."""
    key = name.lower().removeprefix("if-")
    if key not in SOLVERS:
        raise GradsiftError(f"unknown solver {name!r}; available: {', '.join(SOLVERS)}")
    return SOLVERS[key](**kwargs)
