"""Self-influence detectors, registered next to the OGA detectors.

Self-influence ``s_i = g_iᵀ (H + λI)⁻¹ g_i`` (the influence of a training sample on its
own loss) is a detection score: **higher = more suspicious** — mislabeled samples are
the ones the model must bend towards. Like every detector they take the per-sample
gradient matrix ``X [n, D]`` of the training set (rows ``g_i`` in the layout of
:class:`~gradsift.grads.computer.GradientComputer`, unprojected for the Hessian methods) and
return float64 ``[n]``.

Registered names and what they need besides ``X``:

================  ============================================================  =========
name              score                                                          needs
================  ============================================================  =========
``self-dot``      ``‖g_i‖²`` (identical to ``l2``: influence with ``H = I``)    nothing
``self-datainf``  DataInf ``g_iᵀ (F_l + λ_l I)⁻¹ g_i`` summed over blocks,       ``layout``
                  from ``X`` itself (``F_l``: the blocks' empirical Fisher)       optional
``self-if-exact`` ``g_iᵀ (H + λI)⁻¹ g_i``, explicit Hessian                     model
``self-if-cg``    the same, conjugate gradient                                   model
``self-if-lissa`` the same, LiSSA                                                 model
``self-tracin``   ``Σ_k η_k ‖g_i(θ_k)‖²`` over checkpoints (``X``: row count)     model
================  ============================================================  =========

"model" means ``model=..., task=..., train_data=...`` (plus ``weight_decay`` and solver
options such as ``damping``), or, for the ``self-if-*`` detectors, a fitted
``solver=``. These detectors carry ``needs_model = True``: they can be constructed bare
(``get_detector(name)``, e.g. to read ``settings()``), but ``fit`` then raises a
``ValueError`` saying what to pass; generic loops over ``available_detectors()`` should
skip them or pass the model. There is no ``self-cosine``: ``ĝ_iᵀĝ_i = 1`` for every
sample.

In a comparison table with the OGA detectors (same ``G``, same metrics)::

    G, losses = compute_gradients(model, task, (X, y))
    kw = dict(model=model, task=task, train_data=(X, y), weight_decay=wd)
    dets = {n: get_detector(n) for n in ("l1", "l2", "iforest", "self-dot", "self-datainf")}
    dets |= {n: get_detector(n, **kw) for n in ("self-if-cg", "self-if-lissa")}
    table = {n: detection_metrics(d.fit_score(G, losses), flipped) for n, d in dets.items()}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from gradsift.checkpoints import Checkpoint, CheckpointRecorder
from gradsift.grads.computer import GradientComputer
from gradsift.grads.layout import Block
from gradsift.influence.scores import InfluenceScorer
from gradsift.influence.solvers import DataInfSolver, InverseHVP, make_solver
from gradsift.task import Task

from .base import Detector, iter_row_blocks
from .norms import L2Norm
from .registry import register

__all__ = [
    "SelfDataInf",
    "SelfDot",
    "SelfInfluenceCG",
    "SelfInfluenceExact",
    "SelfInfluenceLiSSA",
    "SelfTracIn",
]


def _quadratic_rows(X: np.ndarray, solve: Any, block_rows: int | None) -> np.ndarray:
    """``rowsum(X ∘ solve(X))`` in float64, one row block at a time."""
    out = np.empty(X.shape[0], dtype=np.float64)
    for start, block in iter_row_blocks(X, block_rows):
        B = torch.as_tensor(np.asarray(block, dtype=np.float64))
        out[start : start + B.shape[0]] = (B * solve(B)).sum(dim=1).numpy()
    return out


@register("self-dot")
class SelfDot(L2Norm):
    """``‖g_i‖²``: self-influence with ``H = I`` (the same scores as ``l2``)."""


class _HessianSelfInfluence(Detector):
    """``g_iᵀ (H + λI)⁻¹ g_i`` with a solver fitted on the model's training data."""

    requires_fit = True
    #: Needs ``model``/``task``/``train_data`` (or a fitted ``solver``) to be fitted.
    needs_model: ClassVar[bool] = True
    solver_name: ClassVar[str] = ""

    def __init__(
        self,
        solver: InverseHVP | None = None,
        *,
        model: nn.Module | None = None,
        task: Task | None = None,
        train_data: Dataset | tuple[Any, ...] | None = None,
        weight_decay: float = 0.0,
        batch_size: int = 256,
        block_rows: int | None = 1024,
        **solver_kwargs: Any,
    ) -> None:
        if solver is None:
            solver = make_solver(self.solver_name, **solver_kwargs)
        elif solver_kwargs:
            raise ValueError(f"solver options {sorted(solver_kwargs)} given with a solver")
        self.solver = solver
        self.model, self.task, self.train_data = model, task, train_data
        self.weight_decay, self.batch_size, self.block_rows = weight_decay, batch_size, block_rows

    def _fit(self, X: np.ndarray | None, losses: np.ndarray | None) -> None:
        assert X is not None
        if not self.solver.fitted:
            if self.model is None or self.task is None or self.train_data is None:
                raise ValueError(
                    f"detector {self.name!r} needs the Hessian of the training loss: pass "
                    "model=, task= and train_data= (and weight_decay= used in training), or "
                    "solver= an inverse-HVP solver fitted on them"
                )
            self.solver.fit(
                self.model,
                self.task,
                self.train_data,
                weight_decay=self.weight_decay,
                batch_size=self.batch_size,
            )
        self._check_dim(X)

    def _check_dim(self, X: np.ndarray) -> None:
        if X.shape[1] != self.solver.dim:
            raise ValueError(
                f"detector {self.name!r} needs the unprojected gradients of the "
                f"{self.solver.dim} tracked scalars the solver inverts, got X with "
                f"{X.shape[1]} columns"
            )

    def _score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        assert X is not None
        self._check_dim(X)
        return _quadratic_rows(X, self.solver.solve, self.block_rows)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "solver": self.solver.settings(),
            "weight_decay": self.weight_decay,
        }


@register("self-if-exact")
class SelfInfluenceExact(_HessianSelfInfluence):
    """Self-influence with :class:`~gradsift.influence.solvers.ExactSolver` (small ``D``)."""

    solver_name = "exact"


@register("self-if-cg")
class SelfInfluenceCG(_HessianSelfInfluence):
    """Self-influence with :class:`~gradsift.influence.solvers.CGSolver`."""

    solver_name = "cg"


@register("self-if-lissa")
class SelfInfluenceLiSSA(_HessianSelfInfluence):
    """Self-influence with :class:`~gradsift.influence.solvers.LiSSASolver`."""

    solver_name = "lissa"


@register("self-datainf")
class SelfDataInf(Detector):
    """DataInf self-influence from the gradients ``X`` themselves.

    ``fit(X)`` sets the per-block damping ``λ_l`` from all rows of ``X`` (DataInf's
    ``0.1 · mean ‖g_il‖² / d_l`` unless ``damping`` is given), so the scores are not the
    constant that a single-sample ``λ`` would give. ``X`` is kept by reference (a memmap
    stays on disk); scoring costs ``O(n² · D)``.

    Args:
        layout: the blocks of ``X``'s columns (e.g. ``GradientComputer(model, task).layout``
            or a projector's ``out_blocks``); or give ``model`` and ``task``; default: one
            block.
        damping, damping_factor, weight_decay: see
            :class:`~gradsift.influence.solvers.DataInfSolver`.
    """

    requires_fit = True

    def __init__(
        self,
        layout: Sequence[Block] | None = None,
        *,
        model: nn.Module | None = None,
        task: Task | None = None,
        damping: float | None = None,
        damping_factor: float = 0.1,
        weight_decay: float = 0.0,
        block_rows: int | None = 1024,
    ) -> None:
        if layout is None and model is not None and task is not None:
            layout = GradientComputer(model, task).layout
        self.layout = None if layout is None else list(layout)
        self.weight_decay, self.block_rows = float(weight_decay), block_rows
        self.solver = DataInfSolver(damping=damping, damping_factor=damping_factor)

    def _fit(self, X: np.ndarray | None, losses: np.ndarray | None) -> None:
        assert X is not None
        self.solver.fit_gradients(X, self.layout, weight_decay=self.weight_decay)

    def _score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        assert X is not None
        return _quadratic_rows(X, self.solver.solve, self.block_rows)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "solver": self.solver.settings(),
            "blocks": None if self.layout is None else [b.name for b in self.layout],
            "weight_decay": self.weight_decay,
        }


@register("self-tracin")
class SelfTracIn(Detector):
    """TracIn-CP self-influence ``Σ_k η_k ‖g_i(θ_k)‖²`` over saved checkpoints.

    The gradients come from the checkpoints, so ``X`` (or ``losses``) only gives the row
    count, which must equal ``len(train_data)``. Equivalent to
    ``ensemble_scores(..., "l2")`` on per-checkpoint gradient matrices.
    """

    needs_gradients = False
    #: Needs ``model``, ``task``, ``train_data`` and ``checkpoints`` to score.
    needs_model: ClassVar[bool] = True

    def __init__(
        self,
        *,
        model: nn.Module | None = None,
        task: Task | None = None,
        train_data: Dataset | tuple[Any, ...] | None = None,
        checkpoints: Sequence[Checkpoint] | CheckpointRecorder | None = None,
        batch_size: int = 256,
    ) -> None:
        self.model, self.task, self.train_data = model, task, train_data
        self.checkpoints, self.batch_size = checkpoints, batch_size
        self.scorer: InfluenceScorer | None = None
        self._cache: np.ndarray | None = None

    def _fit(self, X: np.ndarray | None, losses: np.ndarray | None) -> None:
        if (
            self.model is None
            or self.task is None
            or self.train_data is None
            or not self.checkpoints
        ):
            raise ValueError(
                "detector 'self-tracin' needs model=, task=, train_data= and checkpoints= "
                "(a CheckpointRecorder or its checkpoints, with learning rates)"
            )
        if self.scorer is None:
            self.scorer = InfluenceScorer(
                self.model,
                self.task,
                "tracin",
                checkpoints=self.checkpoints,
                batch_size=self.batch_size,
            )

    def _score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        n = X.shape[0] if X is not None else len(losses)  # type: ignore[arg-type]
        if self.scorer is None:
            self._fit(X, losses)
        assert self.scorer is not None
        if self._cache is None:
            self._cache = self.scorer.self_influence(self.train_data)  # type: ignore[arg-type]
        if len(self._cache) != n:
            raise ValueError(
                f"detector 'self-tracin' scores its {len(self._cache)} train_data rows, but X "
                f"has {n}"
            )
        return self._cache.copy()

    def settings(self) -> dict[str, Any]:
        lrs = None if self.scorer is None else list(self.scorer.lrs)
        return {**super().settings(), "checkpoint_lrs": lrs}
