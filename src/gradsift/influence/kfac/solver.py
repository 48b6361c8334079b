"""``kfac`` / ``ekfac``: the exact damped inverse of the K-FAC / EK-FAC curvature.

:class:`KFACSolver` fits the factors (:func:`~.factors.fit_kfac_factors`) on the training
data in :meth:`fit`, builds the :class:`~.operator.KFACOperator` and solves
``(C + λI)⁻¹ V`` in closed form in the eigenbasis: no iterations, one pass (K-FAC) or two
(EK-FAC) over the data to fit, then ``O(D·(d_out + cols))`` per vector.

Damping: ``damping=None`` (default) is **relative**, ``λ = damping_factor · mean(Λ)``
with ``damping_factor = 0.1`` and ``mean(Λ)`` the mean eigenvalue of the fitted curvature
(``tr C / D``, weight decay excluded), the same rule for every model scale;
``damping_scope="layer"`` uses each layer's own mean eigenvalue instead (kronfluence's
heuristic). A number sets an absolute ``λ``.

Both solvers register themselves as ``make_solver("kfac")`` / ``make_solver("ekfac")``;
use them in :class:`~gradsift.influence.scores.InfluenceScorer` with ``solver=``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradsift.errors import GradsiftError
from gradsift.grads.layout import layout_of
from gradsift.influence.curvature import CurvatureOperator
from gradsift.influence.kfac.factors import KFACFactors, fit_kfac_factors
from gradsift.influence.kfac.operator import Eigenvalues, KFACOperator
from gradsift.influence.solvers.base import InverseHVP, SolverDiagnostics, record_residuals
from gradsift.influence.solvers.registry import SOLVERS
from gradsift.task import Task

__all__ = ["EKFACSolver", "KFACSolver"]


class KFACSolver(InverseHVP):
    """``(C + λI)⁻¹ V`` with ``C`` the K-FAC curvature (``EKFACSolver``: EK-FAC).

    Args:
        damping: absolute ``λ``; None (default) = relative, see the module docstring.
        damping_factor: the 0.1 of the relative rule.
        damping_scope: ``"global"`` (one ``λ`` from the mean over all layers) or
            ``"layer"`` (one per layer, from that layer's mean eigenvalue).
        fisher: ``"auto"`` (default: the exact Fisher when the output Hessian has at
            most 16 square-root columns — the classes of a softmax, 1 for BCE — else one
            sampled label per sample), ``"sampled"``, ``"exact"`` or ``"empirical"``
            (:mod:`~.statistics`); after :meth:`fit`, ``settings()`` records the one used.
        likelihood: the loss's output likelihood (None: ``task.head_loss``).
        path: directory to store / resume the factors (None: in memory).
        batch_size: samples per fitting pass step (None: the ``batch_size`` given to
            :meth:`fit`); seed: of the sampled labels; checkpoint_every: batches per rank.
        check_residuals: also compute ``‖(C + λI)x − v‖ / ‖v‖`` per solved row into the
            diagnostics (one more K-FAC product, doubling the cost of a solve; the inverse
            is closed-form, so this only checks round-off). Default off: the diagnostics
            then hold no residual.
    """

    name: ClassVar[str] = "kfac"
    eigenvalues: ClassVar[Eigenvalues] = "kfac"

    def __init__(
        self,
        damping: float | None = None,
        damping_factor: float = 0.1,
        damping_scope: str = "global",
        fisher: str = "auto",
        likelihood: str | None = None,
        path: str | Path | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        checkpoint_every: int = 50,
        check_residuals: bool = False,
    ) -> None:
        super().__init__(0.0 if damping is None else damping)
        self.check_residuals = bool(check_residuals)
        if not damping_factor > 0:
            raise GradsiftError(f"damping_factor must be > 0, got {damping_factor}")
        if damping_scope not in ("global", "layer"):
            raise GradsiftError(f"damping_scope must be 'global' or 'layer', got {damping_scope!r}")
        self.fixed_damping = damping
        self.damping_factor, self.damping_scope = float(damping_factor), damping_scope
        self.fisher, self.likelihood = fisher, likelihood
        self.path, self.batch_size, self.seed = path, batch_size, int(seed)
        self.checkpoint_every = int(checkpoint_every)
        self.layer_damping: dict[str, float] = {}
        self.factors: KFACFactors | None = None

    def fit(
        self,
        model: nn.Module,
        task: Task,
        train_data: Dataset | tuple[Any, ...],
        *,
        weight_decay: float = 0.0,
        batch_size: int = 256,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
    ) -> KFACSolver:
        """Fit (or load from ``path``) the factors on the training data; returns ``self``."""
        self.factors = fit_kfac_factors(
            model,
            task,
            train_data,
            fisher=self.fisher,
            likelihood=self.likelihood,
            correct_eigenvalues=self.eigenvalues == "ekfac",
            path=self.path,
            batch_size=self.batch_size or batch_size,
            seed=self.seed,
            checkpoint_every=self.checkpoint_every,
            collate_fn=collate_fn,
        )
        params = task.tracked_parameters(model)
        first = next(iter(params.values()))
        op = KFACOperator(
            self.factors,
            layout_of(params),
            eigenvalues=self.eigenvalues,
            weight_decay=weight_decay,
            dtype=first.dtype,
            device=first.device,
        )
        return self.fit_operator(op)  # type: ignore[return-value]

    def _fit_operator(self, operator: CurvatureOperator) -> None:
        if not isinstance(operator, KFACOperator):
            raise GradsiftError(
                f"{type(self).__name__} inverts a KFACOperator in closed form, got "
                f"{type(operator).__name__}: use CGSolver/ExactSolver for other operators"
            )
        self.layer_damping = {}
        if self.fixed_damping is not None:
            self.damping = float(self.fixed_damping)
        elif self.damping_scope == "global":
            self.damping = self.damping_factor * operator.mean_eigenvalue()
        else:
            self.layer_damping = {
                name: self.damping_factor * float(lam.double().mean())
                for name, lam in operator.layer_eigenvalues().items()
            }
            self.damping = sum(self.layer_damping.values()) / len(self.layer_damping)

    def _solve(self, V: torch.Tensor, diag: SolverDiagnostics) -> torch.Tensor:
        op = self.operator
        assert isinstance(op, KFACOperator)
        X = op.inverse(V, self.layer_damping or self.damping)
        if self.check_residuals:
            record_residuals(diag, self.residuals(V, X))
        diag.block_damping = dict(self.layer_damping)
        diag.converged = True
        return X

    def residuals(self, V: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Per-row ``‖(C + λI)x − v‖ / ‖v‖`` (per-layer ``λ`` with ``damping_scope="layer"``)."""
        if not self.layer_damping:
            return super().residuals(V, X)
        op = self.operator
        assert isinstance(op, KFACOperator)
        V, X = V.to(self._device, self._dtype), X.to(self._device, self._dtype)
        lam = torch.zeros(op.dim, dtype=X.dtype, device=X.device)
        for ly in op.factors.layers:
            for pname in (ly.weight, ly.bias):
                b = next((b for b in op.layout if b.name == pname), None)
                if b is not None:
                    lam[b.offset : b.stop] = self.layer_damping[ly.module_name]
        R = op.matvec(X) + lam * X - V
        return R.norm(dim=1) / V.norm(dim=1).clamp_min(torch.finfo(V.dtype).tiny)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "damping_factor": None if self.fixed_damping is not None else self.damping_factor,
            "damping_scope": self.damping_scope,
            "fisher": self.fisher if self.factors is None else self.factors.settings["fisher"],
            "likelihood": self.likelihood,
            "path": None if self.path is None else str(self.path),
            "seed": self.seed,
        }


class EKFACSolver(KFACSolver):
    """EK-FAC: K-FAC's eigenbasis with eigenvalues corrected from per-sample gradients."""

    name: ClassVar[str] = "ekfac"
    eigenvalues: ClassVar[Eigenvalues] = "ekfac"


SOLVERS.setdefault("kfac", KFACSolver)
SOLVERS.setdefault("ekfac", EKFACSolver)
