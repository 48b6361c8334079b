"""Self-influence detectors, registered next to the OGA detectors.

Self-influence ``s_i = g_iᵀ (H + λI)⁻¹ g_i`` (the influence of a training sample on its
own loss) is a detection score: **higher = more suspicious** — mislabeled samples are
the ones the model must bend towards. They are ordinary detectors: they take the
per-sample gradient matrix ``X [n, D]`` of the training set (rows ``g_i`` in the layout
of :class:`~gradsift.grads.computer.GradientComputer`, unprojected for the Hessian
methods), return float64 ``[n]``, and read anything else from the
:class:`~gradsift.detect.context.DetectionContext` given to ``fit``/``fit_score``. The
quadratic form is :func:`gradsift.store.kernels.self_influence_rows`, the kernel that
:meth:`InfluenceScorer.self_influence <gradsift.influence.scores.InfluenceScorer.self_influence>`
and the distributed :func:`~gradsift.distributed.scoring.self_influence` use too.

Registered names and what they read from the context:

================  ============================================================  =============
name              score                                                          context
================  ============================================================  =============
``self-dot``      ``‖g_i‖²`` (identical to ``l2``: influence with ``H = I``)    nothing
``self-datainf``  DataInf ``g_iᵀ (F_l + λ_l I)⁻¹ g_i`` summed over blocks,       ``layout``
                  from ``X`` itself (``F_l``: the blocks' empirical Fisher)       (optional)
``self-if-exact`` ``g_iᵀ (H + λI)⁻¹ g_i``, explicit Hessian                     model, task,
``self-if-cg``    the same, conjugate gradient                                   data,
``self-if-lissa`` the same, LiSSA                                                 weight_decay
``self-tracin``   ``Σ_k η_k ‖g_i(θ_k)‖²`` over checkpoints (``X``: row count)     + checkpoints
================  ============================================================  =============

The constructors take only the detectors' own knobs (solver options such as
``damping``, ``batch_size``, ``block_rows``), or, for the ``self-if-*`` detectors, an
already fitted ``solver=`` (then no context is needed). Detectors that need the model
carry ``needs_model = True``; fitted without it, they raise a ``ValueError`` saying what
to pass. There is no ``self-cosine``: ``ĝ_iᵀĝ_i = 1`` for every sample.

In a comparison table with the OGA detectors (same ``G``, same metrics)::

    G, losses = compute_gradients(model, task, (X, y))
    ctx = DetectionContext(G, losses, model=model, task=task, data=(X, y), weight_decay=wd)
    names = ("l1", "l2", "iforest", "self-dot", "self-datainf", "self-if-cg")
    table = {n: detection_metrics(get_detector(n).fit_score(context=ctx), flipped) for n in names}

or ``OutlierGradientAnalysis(model, task, OGAConfig(detectors=names)).run((X, y))``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from gradsift.grads.layout import layout_of
from gradsift.influence.scores import InfluenceScorer
from gradsift.influence.solvers import DataInfSolver, InverseHVP, make_solver
from gradsift.store.kernels import concat_rows, self_influence_rows

from .base import Detector, iter_row_blocks
from .context import DetectionContext
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

#: What used to be constructor arguments and now comes from the DetectionContext.
_CONTEXT_ARGS = frozenset({"model", "task", "train_data", "data", "checkpoints", "weight_decay"})


def _quadratic(X: np.ndarray, solver: InverseHVP, block_rows: int | None) -> np.ndarray:
    """``g_iᵀ P g_i`` float64 ``[n]`` over row blocks of ``X``, ``P`` = the solver."""
    return concat_rows(self_influence_rows(iter_row_blocks(X, block_rows), solver))


def _reject_context_args(name: str, kwargs: dict[str, Any]) -> None:
    moved = sorted(_CONTEXT_ARGS & set(kwargs))
    if moved:
        raise TypeError(
            f"detector {name!r} reads {moved} from the detection context: "
            "fit_score(G, context=DetectionContext(model=..., task=..., data=..., ...))"
        )


@register("self-dot")
class SelfDot(L2Norm):
    """``‖g_i‖²``: self-influence with ``H = I`` (the same scores as ``l2``)."""


class _ModelDetector(Detector):
    """A detector that reads model, task and training data from the context."""

    needs_model: ClassVar[bool] = True
    #: The context attributes it needs.
    context_needs: ClassVar[tuple[str, ...]] = ("model", "task", "data")
    context: DetectionContext | None = None

    def _use_context(self, context: DetectionContext) -> None:
        self.context = context

    def _required_context(self, alternative: str = "") -> DetectionContext:
        """The context, or a ``ValueError`` naming what is missing and how to pass it."""
        ctx = self.context or DetectionContext()
        missing = ctx.missing(*self.context_needs)
        if missing:
            fields = ", ".join(f"{m}=..." for m in missing)
            raise ValueError(
                f"detector {self.name!r} needs the model it scores: pass "
                f"fit_score(G, context=DetectionContext({fields})){alternative} "
                "(OutlierGradientAnalysis.run(data, recorder) builds one for every detector)"
            )
        return ctx


class _HessianSelfInfluence(_ModelDetector):
    """``g_iᵀ (H + λI)⁻¹ g_i`` with a solver fitted on the context's training data.

    Args:
        solver: an inverse-HVP solver, fitted (then no context is needed) or not
            (default: the method's solver built from ``solver_kwargs``).
        batch_size: samples per Hessian call when fitting.
        block_rows: rows of ``X`` per scored block.
        **solver_kwargs: solver options, e.g. ``damping=1e-3``, ``tol=1e-8``.
    """

    requires_fit = True
    solver_name: ClassVar[str] = ""

    def __init__(
        self,
        solver: InverseHVP | None = None,
        *,
        batch_size: int = 256,
        block_rows: int | None = 1024,
        **solver_kwargs: Any,
    ) -> None:
        _reject_context_args(self.name, solver_kwargs)
        if solver is None:
            solver = make_solver(self.solver_name, **solver_kwargs)
        elif solver_kwargs:
            raise ValueError(f"solver options {sorted(solver_kwargs)} given with a solver")
        self.solver = solver
        self.batch_size, self.block_rows = batch_size, block_rows
        self.weight_decay: float | None = None

    def _fit(self, X: np.ndarray | None, losses: np.ndarray | None) -> None:
        assert X is not None
        if not self.solver.fitted:
            ctx = self._required_context(", or solver= an inverse-HVP solver fitted on them")
            self.solver.fit(
                ctx.model,  # type: ignore[arg-type]
                ctx.task,  # type: ignore[arg-type]
                ctx.data,
                weight_decay=ctx.weight_decay,
                batch_size=self.batch_size,
            )
            self.weight_decay = float(ctx.weight_decay)
        self.context = None  # scoring needs only the fitted solver
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
        return _quadratic(X, self.solver, self.block_rows)

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


@register("self-if-kfac")
class SelfInfluenceKFAC(_HessianSelfInfluence):
    """Self-influence with K-FAC (:class:`~gradsift.influence.kfac.KFACSolver`): every
    tracked parameter must be a weight/bias of an ``nn.Linear``/``nn.Conv2d``."""

    solver_name = "kfac"


@register("self-if-ekfac")
class SelfInfluenceEKFAC(_HessianSelfInfluence):
    """Self-influence with eigenvalue-corrected K-FAC
    (:class:`~gradsift.influence.kfac.EKFACSolver`)."""

    solver_name = "ekfac"


@register("self-datainf")
class SelfDataInf(Detector):
    """DataInf self-influence from the gradients ``X`` themselves.

    ``fit(X)`` sets the per-block damping ``λ_l`` from all rows of ``X`` (DataInf's
    ``0.1 · mean ‖g_il‖² / d_l`` unless ``damping`` is given), so the scores are not the
    constant that a single-sample ``λ`` would give. ``X`` is kept by reference (a memmap
    stays on disk); scoring costs ``O(n² · D)``.

    The blocks of ``X``'s columns come from the context: ``context.layout``, else the
    tracked parameters of ``context.model``/``context.task``; without a context, one block.
    ``context.weight_decay`` is added to every block's damping.

    Args:
        damping, damping_factor: see :class:`~gradsift.influence.solvers.DataInfSolver`.
        block_rows: rows of ``X`` per scored block.
    """

    requires_fit = True

    def __init__(
        self,
        *,
        damping: float | None = None,
        damping_factor: float = 0.1,
        block_rows: int | None = 1024,
    ) -> None:
        self.block_rows = block_rows
        self.solver = DataInfSolver(damping=damping, damping_factor=damping_factor)
        self.layout: list[Any] | None = None
        self.weight_decay = 0.0

    def _use_context(self, context: DetectionContext) -> None:
        layout = context.layout
        if layout is None and context.model is not None and context.task is not None:
            layout = layout_of(context.task.tracked_parameters(context.model))
        self.layout = None if layout is None else list(layout)
        self.weight_decay = float(context.weight_decay)

    def _fit(self, X: np.ndarray | None, losses: np.ndarray | None) -> None:
        assert X is not None
        self.solver.fit_gradients(X, self.layout, weight_decay=self.weight_decay)

    def _score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        assert X is not None
        return _quadratic(X, self.solver, self.block_rows)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "solver": self.solver.settings(),
            "blocks": None if self.layout is None else [b.name for b in self.layout],
            "weight_decay": self.weight_decay,
        }


@register("self-tracin")
class SelfTracIn(_ModelDetector):
    """TracIn-CP self-influence ``Σ_k η_k ‖g_i(θ_k)‖²`` over the context's checkpoints.

    The gradients come from the checkpoints (``context.model`` gives the architecture,
    ``context.data`` the rows), so ``X`` (or ``losses``) only gives the row count, which
    must equal ``len(context.data)``. Equivalent to ``ensemble_scores(..., "l2")`` on
    per-checkpoint gradient matrices.

    Args:
        batch_size: samples per gradient call.
    """

    needs_gradients = False
    context_needs = ("model", "task", "data", "checkpoints")

    def __init__(self, *, batch_size: int = 256) -> None:
        self.batch_size = batch_size
        self.scorer: InfluenceScorer | None = None
        self._cache: np.ndarray | None = None

    def _use_context(self, context: DetectionContext) -> None:
        if context is not self.context:
            self.scorer, self._cache = None, None
        super()._use_context(context)

    def _fit(self, X: np.ndarray | None, losses: np.ndarray | None) -> None:
        ctx = self._required_context()
        if self.scorer is None:
            self.scorer = InfluenceScorer(
                ctx.model,  # type: ignore[arg-type]
                ctx.task,  # type: ignore[arg-type]
                "tracin",
                checkpoints=ctx.checkpoints,
                batch_size=self.batch_size,
            )

    def _score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        n = X.shape[0] if X is not None else len(losses)  # type: ignore[arg-type]
        if self.scorer is None:
            self._fit(X, losses)
        assert self.scorer is not None and self.context is not None
        if self._cache is None:
            self._cache = self.scorer.self_influence(self.context.data)
        if len(self._cache) != n:
            raise ValueError(
                f"detector 'self-tracin' scores the {len(self._cache)} rows of the context's "
                f"data, but X has {n}"
            )
        return self._cache.copy()

    def settings(self) -> dict[str, Any]:
        lrs = None if self.scorer is None else list(self.scorer.lrs)
        return {**super().settings(), "checkpoint_lrs": lrs}
