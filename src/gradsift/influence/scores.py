"""Pairwise and self-influence scores for every method, computed in train-row blocks.

Sign convention (METHODS.md): ``score(train i, test t)`` is **positive when i is helpful**
— removing *i* would increase the test loss of *t*, and ``L_t(θ₋ᵢ) − L_t(θ) ≈ score / n``
for the influence-function methods.

==============  =============================================================
method          ``score(i, t)``
==============  =============================================================
``dot``         ``g_tᵀ g_i``
``cosine``      ``g_tᵀ g_i / (‖g_t‖ ‖g_i‖)``
``tracin``      ``Σ_k η_k g_t(θ_k)ᵀ g_i(θ_k)`` over saved checkpoints (TracIn-CP)
``if-exact``    ``g_tᵀ (H + λI)⁻¹ g_i`` with :class:`~.solvers.ExactSolver`
``if-cg``       the same with :class:`~.solvers.CGSolver`
``if-lissa``    the same with :class:`~.solvers.LiSSASolver`
``datainf``     the same with :class:`~.solvers.DataInfSolver`
``if-kfac``     ``g_tᵀ (F_KFAC + λI)⁻¹ g_i`` (:class:`~.kfac.KFACSolver`, Fisher)
``if-ekfac``    the same with eigenvalue-corrected K-FAC (:class:`~.kfac.EKFACSolver`)
==============  =============================================================

``g_i`` is the gradient of training sample *i*'s loss, ``g_t`` the gradient of the test
point's ``task.measurement`` (its loss by default), both over the tracked parameters.
The test side is transformed once (``q_t = (H+λI)⁻¹ g_t``, or ``η_k``-weighted, or
normalised) and every train block is scored by ``G_block · Qᵀ``, so an
``n_train × n_test`` matrix is never needed: :meth:`InfluenceScorer.top_k` streams the
blocks through :func:`gradsift.store.kernels.pairwise_topk`. The arithmetic is that of
:mod:`gradsift.store.kernels` throughout (pairwise scores, top-k, and self-influence as
the quadratic form ``g_iᵀ P g_i``), the same functions that score a sharded store.

Train rows come from a data set (gradients computed on the fly, ``block_rows`` at a
time) or from a :class:`~gradsift.store.gradient_store.GradientStore` extracted from the same model
(for ``tracin``: one store per checkpoint, in checkpoint order). A projected store is
scored against the projected test vectors ``P q_t`` (inner products preserved by
Johnson–Lindenstrauss); self-influence of the Hessian methods needs unprojected rows.

Defaults (issue 13), each recorded in :meth:`InfluenceScorer.settings` and logged on the
``gradsift`` logger:

- **Tracked parameters** (``tracked="auto"``): for the Hessian methods without a given
  solver, a task that tracks the class default ``"last_linear"`` is widened to **all**
  parameters when the model has at most :data:`AUTO_TRACK_LIMITS` ``[solver]`` of them
  (on a small MLP the last layer alone gave LDS 0.488, all parameters 0.691). Pass
  ``tracked="task"`` to keep the task's choice, or any tracking spec.
- **Damping** (``damping=None``): ``λ = RELATIVE_DAMPING · tr(H)/D`` — a fraction of the
  mean eigenvalue of the curvature (Hutchinson estimate, 32 seeded probes, one pass),
  instead of a fixed ``1e-3`` that is large for flat losses and negligible for sharp
  ones. DataInf keeps its own per-layer rule. (The rules live in
  :mod:`gradsift.influence.defaults`.)

This module is over 400 lines because it is the one scorer of every method (train-row
sources, projected stores, checkpoints, self-influence) and splitting its methods would
scatter one class over several files.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradsift.checkpoints import Checkpoint, CheckpointRecorder
from gradsift.errors import GradsiftError
from gradsift.grads.computer import GradientComputer
from gradsift.grads.computer import Method as GradMethod
from gradsift.grads.projection import ProjectionConfig, Projector
from gradsift.influence.defaults import (
    AUTO_TRACK_LIMITS,
    RELATIVE_DAMPING,
    SOLVER_OF,
    choose_tracked,
    mean_eigenvalue,
)
from gradsift.influence.hessian import BatchSource, HessianOperator
from gradsift.influence.solvers import InverseHVP, make_solver
from gradsift.progress import track
from gradsift.store.gradient_store import GradientStore, model_fingerprint
from gradsift.store.kernels import (
    ScoreFn,
    as_tensor,
    concat_rows,
    dot_scores,
    pairwise_scores,
    pairwise_topk,
    self_influence_rows,
    unit_rows,
)
from gradsift.task import Task, TrackSpec

__all__ = [
    "AUTO_TRACK_LIMITS",
    "METHODS",
    "RELATIVE_DAMPING",
    "InfluenceMethod",
    "InfluenceScorer",
    "TopKInfluence",
    "mean_eigenvalue",
]

log = logging.getLogger("gradsift")

InfluenceMethod = Literal[
    "dot", "cosine", "tracin", "if-exact", "if-cg", "if-lissa", "datainf", "if-kfac", "if-ekfac"
]
#: Every method name :class:`InfluenceScorer` accepts.
METHODS: tuple[str, ...] = get_args(InfluenceMethod)
_SOLVER_OF = SOLVER_OF

_DEFAULT = "default"

Data = Dataset | tuple[Any, ...]
TrainSource = Data | GradientStore | Sequence[GradientStore]


@dataclass
class TopKInfluence:
    """Per test point, the ``k`` most helpful and most harmful training rows.

    Attributes:
        helpful_scores: float64 ``[n_test, k]``, largest (most helpful) first.
        helpful_indices: int64 ``[n_test, k]`` training row indices.
        harmful_scores: float64 ``[n_test, k]``, most negative (most harmful) first.
        harmful_indices: int64 ``[n_test, k]``.
    """

    helpful_scores: np.ndarray
    helpful_indices: np.ndarray
    harmful_scores: np.ndarray
    harmful_indices: np.ndarray


class _Side:
    """Gradients of one model (final weights or a checkpoint): train loss and test measurement."""

    def __init__(self, model: nn.Module, task: Task, method: GradMethod, chunk: int) -> None:
        self.model = model
        self.train = GradientComputer(model, task, method, chunk)
        self.test = GradientComputer(model, task, method, chunk, measurement=True)


class InfluenceScorer:
    """Influence of training rows on test points, sklearn-style: ``fit`` then score.

    Args:
        model: the trained model (not modified; eval mode if it has BatchNorm/Dropout).
        task: loss, measurement and tracked parameters.
        method: one of :data:`METHODS`.
        solver: an inverse-HVP solver (fitted or not) to use instead of the method's
            default; only for the Hessian methods.
        damping: ``λ`` for the default solver. None (default): ``RELATIVE_DAMPING`` times
            the mean eigenvalue of ``H`` (estimated at :meth:`fit`); for ``datainf`` its
            per-layer rule. The value used is in ``settings()["damping"]``.
        weight_decay: the coupled L2 coefficient the model was trained with (enters ``H``).
        checkpoints: for ``tracin``: the :class:`~gradsift.checkpoints.Checkpoint` list (or
            the recorder) with learning rates ``η_k``.
        batch_size: samples per gradient / Hessian-vector call (memory, not statistics).
            block_rows: train rows per block.
        tracked: ``"auto"`` (default; see the module docstring), ``"task"`` (exactly the
            task's parameters) or a tracking spec (``"all"``, ``"last_linear"``, names).
        lissa_batch_size: mini-batch size of LiSSA's recursion (``if-lissa`` only; None
            = the full batch, deterministic; default: the solver's, 64).
        gradient_method, chunk_size: passed to :class:`~gradsift.grads.computer.GradientComputer`.
        collate_fn: turns a list of data-set items into a batch.
        **solver_kwargs: passed to the default solver (e.g. ``steps=2000`` for LiSSA).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        method: InfluenceMethod = "if-cg",
        *,
        solver: InverseHVP | None = None,
        damping: float | None = None,
        weight_decay: float = 0.0,
        checkpoints: Sequence[Checkpoint] | CheckpointRecorder | None = None,
        batch_size: int = 256,
        block_rows: int = 1024,
        gradient_method: GradMethod = "auto",
        chunk_size: int = 64,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
        tracked: TrackSpec | Literal["auto", "task"] = "auto",
        lissa_batch_size: int | None | Literal["default"] = _DEFAULT,
        **solver_kwargs: Any,
    ) -> None:
        if method not in METHODS:
            raise GradsiftError(f"unknown influence method {method!r}; use one of {METHODS}")
        if not isinstance(batch_size, int) or not isinstance(block_rows, int):
            raise GradsiftError(
                f"batch_size and block_rows must be integers, got {batch_size!r} and "
                f"{block_rows!r} (batch_size is the samples per gradient/Hessian call; "
                "LiSSA's mini-batch is lissa_batch_size, None = full batch)"
            )
        if batch_size < 1 or block_rows < 1:
            raise GradsiftError("batch_size and block_rows must be >= 1")
        if lissa_batch_size != _DEFAULT:
            if method != "if-lissa" or solver is not None:
                raise GradsiftError("lissa_batch_size applies to method='if-lissa' without solver")
            solver_kwargs["batch_size"] = lissa_batch_size
        task, self.tracked_choice = choose_tracked(model, task, method, solver, tracked)
        self.model, self.task, self.method = model, task, method
        self.relative_damping = (
            damping is None and solver is None and method in ("if-exact", "if-cg", "if-lissa")
        )
        self.weight_decay = float(weight_decay)
        self.batch_size, self.block_rows = int(batch_size), int(block_rows)
        self.collate_fn = collate_fn
        self.solver = self._make_solver(solver, damping, solver_kwargs)
        self.sides = [_Side(model, task, gradient_method, chunk_size)]
        self.lrs = [1.0]
        if method == "tracin":
            self.sides, self.lrs = self._checkpoint_sides(checkpoints, gradient_method, chunk_size)
        elif checkpoints is not None:
            raise GradsiftError(f"checkpoints are only used by method='tracin', not {method!r}")
        first = next(iter(self.sides[0].train.params.values()))
        self.dtype, self.device = first.dtype, first.device
        self.layout = self.sides[0].train.layout
        self.dim = self.sides[0].train.dim
        self._fitted = method in ("dot", "cosine", "tracin")

    # ------------------------------------------------------------------ set-up
    def _make_solver(
        self, solver: InverseHVP | None, damping: float | None, kwargs: dict[str, Any]
    ) -> InverseHVP | None:
        if self.method not in _SOLVER_OF:
            if solver is not None or damping is not None or kwargs:
                raise GradsiftError(
                    f"method {self.method!r} uses no Hessian: solver, damping and solver "
                    f"options ({sorted(kwargs)}) do not apply"
                )
            return None
        if solver is not None:
            if damping is not None or kwargs:
                raise GradsiftError("pass either a solver or damping/solver options, not both")
            return solver
        if damping is not None:
            kwargs["damping"] = damping
        return make_solver(_SOLVER_OF[self.method], **kwargs)

    def _checkpoint_sides(
        self,
        checkpoints: Sequence[Checkpoint] | CheckpointRecorder | None,
        gradient_method: GradMethod,
        chunk_size: int,
    ) -> tuple[list[_Side], list[float]]:
        ckpts = (
            checkpoints.checkpoints if isinstance(checkpoints, CheckpointRecorder) else checkpoints
        )
        if not ckpts:
            raise GradsiftError(
                "method='tracin' needs checkpoints: record them with a CheckpointRecorder "
                "during training and pass checkpoints=recorder"
            )
        sides, lrs = [], []
        for k, ckpt in enumerate(ckpts):
            if not (math.isfinite(ckpt.lr) and ckpt.lr >= 0):
                raise GradsiftError(
                    f"checkpoint {k} (epoch {ckpt.epoch}, step {ckpt.step}) has learning rate "
                    f"{ckpt.lr}: TracIn-CP weights checkpoints by η_k; record checkpoints with "
                    "the optimizer (or set Checkpoint.lr)"
                )
            m = CheckpointRecorder.load_into(copy.deepcopy(self.model), ckpt)
            m.eval()
            sides.append(_Side(m, self.task, gradient_method, chunk_size))
            lrs.append(float(ckpt.lr))
        return sides, lrs

    # ------------------------------------------------------------------ fitting
    def fit(self, train_data: Data) -> InfluenceScorer:
        """Fit the inverse-HVP solver on the training data (no-op for Hessian-free methods).

        With ``damping=None`` the solver's ``λ`` is set here, relative to the curvature."""
        if self.solver is not None and not self.solver.fitted:
            if self.relative_damping:
                op = HessianOperator(
                    self.model,
                    self.task,
                    train_data,
                    weight_decay=self.weight_decay,
                    batch_size=self.batch_size,
                    block_diagonal=self.solver.block_diagonal,
                    collate_fn=self.collate_fn,
                )
                self.mean_eigenvalue = mean_eigenvalue(op)
                self.solver.damping = RELATIVE_DAMPING * abs(self.mean_eigenvalue)
                log.info(
                    "%s: damping %.3g = %g × mean Hessian eigenvalue %.3g (pass damping= to fix it)",
                    self.method,
                    self.solver.damping,
                    RELATIVE_DAMPING,
                    self.mean_eigenvalue,
                )
                self.solver.fit_operator(op)
            else:
                self.solver.fit(
                    self.model,
                    self.task,
                    train_data,
                    weight_decay=self.weight_decay,
                    batch_size=self.batch_size,
                    collate_fn=self.collate_fn,
                )
        if self.solver is not None and self.solver.dim != self.dim:
            raise GradsiftError(
                f"the solver was fitted on {self.solver.dim} tracked scalars, the task tracks "
                f"{self.dim}: fit it with the same model and task"
            )
        self._fitted = True
        return self

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise GradsiftError(f"{self.method!r} scorer is not fitted; call fit(train_data)")

    # ------------------------------------------------------------------ gradients
    def _source(self, data: Data) -> BatchSource:
        return BatchSource(data, self.device, self.dtype, self.collate_fn)

    def _rows(self, source: BatchSource, start: int, stop: int, test: bool) -> torch.Tensor:
        """Gradients of rows ``[start, stop)``: ``[r, K·D]`` (K checkpoints, concatenated)."""
        parts = []
        for side in self.sides:
            comp = side.test if test else side.train
            chunks = [
                comp.compute(source.slice(b, min(b + self.batch_size, stop)), b)[0]
                for b in range(start, stop, self.batch_size)
            ]
            parts.append(torch.cat(chunks).detach())
        return torch.cat(parts, dim=1)

    def _transform(self, G: torch.Tensor) -> torch.Tensor:
        """The test-side map: ``q = (H+λI)⁻¹ g``, ``η``-weighting, or normalisation."""
        if self.method == "cosine":
            return unit_rows(G)
        if self.method == "tracin":
            weights = torch.repeat_interleave(
                torch.tensor(self.lrs, dtype=G.dtype, device=G.device), self.dim
            )
            return G * weights
        if self.solver is not None:
            return self.solver.solve(G)
        return G

    def test_vectors(self, test_data: Data) -> torch.Tensor:
        """Transformed test-side vectors ``Q [n_test, K·D]``; ``score(i, t) = train_side(g_i)·q_t``."""
        self._check_fitted()
        source = self._source(test_data)
        G = self._rows(source, 0, source.n, test=True)
        return self._transform(G)

    def train_blocks(self, train: TrainSource) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first_row, G_block [r, K·D])`` training gradients (unprojected data only)."""
        blocks, projectors = self._train_blocks(train)
        if any(p is not None for p in projectors):
            raise GradsiftError("train_blocks() of a projected store: use top_k/scores")
        return blocks

    def _train_blocks(
        self, train: TrainSource
    ) -> tuple[Iterator[tuple[int, torch.Tensor]], list[Projector | None]]:
        stores = _as_stores(train)
        if stores is None:
            source = self._source(train)  # type: ignore[arg-type]

            def gen() -> Iterator[tuple[int, torch.Tensor]]:
                starts = range(0, source.n, self.block_rows)
                for s in track(starts, f"{self.method} train blocks", total=len(starts)):
                    yield s, self._rows(source, s, min(s + self.block_rows, source.n), test=False)

            return gen(), [None] * len(self.sides)
        if len(stores) != len(self.sides):
            raise GradsiftError(
                f"{len(stores)} gradient stores for {len(self.sides)} checkpoint(s): "
                "pass one store per checkpoint, in checkpoint order"
            )
        projectors = [
            self._check_store(st, side) for st, side in zip(stores, self.sides, strict=True)
        ]
        n_rows = {s.n_rows for s in stores}
        if len(n_rows) != 1:
            raise GradsiftError(f"the stores hold different row counts {sorted(n_rows)}")

        def from_stores() -> Iterator[tuple[int, torch.Tensor]]:
            iters = [s.iter_blocks(self.block_rows) for s in stores]
            for parts in zip(*iters, strict=True):
                block = torch.cat(
                    [as_tensor(b).to(self.device, self.dtype) for _, b in parts],
                    dim=1,
                )
                yield parts[0][0], block

        return from_stores(), projectors

    def _check_store(self, store: GradientStore, side: _Side) -> Projector | None:
        st = store.settings
        if st.fingerprint != model_fingerprint(side.model):
            raise GradsiftError(
                f"the gradient store at {store.path} was extracted from another model "
                "(fingerprint mismatch): re-extract it from this model (checkpoint)"
            )
        tracked = [{"name": b.name, "shape": list(b.shape)} for b in side.train.layout]
        if st.tracked != tracked:
            raise GradsiftError(
                f"the store at {store.path} tracks {[t['name'] for t in st.tracked]}, the task "
                f"tracks {[t['name'] for t in tracked]}"
            )
        if st.extra.get("measurement"):
            raise GradsiftError(
                f"the store at {store.path} holds test-side (measurement) gradients; training "
                "rows need the training-loss gradients (ExtractConfig(measurement=False))"
            )
        if st.projection is None:
            return None
        if st.projection.get("kind") == "kronecker":
            raise GradsiftError(
                f"the store at {store.path} holds factored (kronecker) projections, which "
                "project layer inputs and output gradients, not the flat inverse-HVP of a "
                "test point: score it against a test store extracted with the same "
                "projection (gradsift score --test), or extract the train store unprojected "
                "or with a dense projection kind"
            )
        return Projector(side.train.layout, ProjectionConfig(**st.projection))

    def _project(self, Q: torch.Tensor, projectors: list[Projector | None]) -> torch.Tensor:
        if all(p is None for p in projectors):
            return Q
        parts = Q.split(self.dim, dim=1)
        return torch.cat(
            [q if p is None else p.project(q) for q, p in zip(parts, projectors, strict=True)],
            dim=1,
        )

    def _score_fn(self) -> ScoreFn:
        """Train block × test vectors; the test side is already transformed (normalised
        for cosine, before any projection), so cosine normalises only the train rows."""
        if self.method == "cosine":
            return lambda block, Q: dot_scores(unit_rows(block), Q)
        return dot_scores

    # ------------------------------------------------------------------ scores
    def scores(self, train: TrainSource, test_data: Data) -> np.ndarray:
        """The full matrix float64 ``[n_train, n_test]`` (small problems; see :meth:`top_k`)."""
        Q = self.test_vectors(test_data)
        blocks, projectors = self._train_blocks(train)
        return pairwise_scores(blocks, self._project(Q, projectors), self._score_fn())

    def top_k(self, train: TrainSource, test_data: Data, k: int = 10) -> TopKInfluence:
        """The ``k`` most helpful and most harmful training rows per test point, streamed."""
        Q = self.test_vectors(test_data)
        blocks, projectors = self._train_blocks(train)
        helpful, harmful = pairwise_topk(blocks, self._project(Q, projectors), k, self._score_fn())
        hv, hi = helpful.result()
        av, ai = harmful.result()
        return TopKInfluence(hv, hi, av, ai)

    def self_influence(self, train: TrainSource) -> np.ndarray:
        """Self-influence float64 ``[n_train]``: ``score(i, i)`` with the training loss on
        both sides (``g_iᵀ(H+λI)⁻¹g_i``, ``‖g_i‖²``, ``Σ_k η_k‖g_i(θ_k)‖²``; 1 for cosine),
        the quadratic form :func:`gradsift.store.kernels.self_influence_rows` in float64.

        A detection score: higher = more suspicious (mislabeled samples are self-influential).
        """
        self._check_fitted()
        blocks, projectors = self._train_blocks(train)
        if any(p is not None for p in projectors) and self.solver is not None:
            raise GradsiftError(
                f"self-influence with {self.method!r} needs unprojected training gradients "
                "(the inverse Hessian lives in the full parameter space): pass the data set "
                "or an unprojected store"
            )
        if self.method == "cosine":  # ĝ_iᵀ ĝ_i
            blocks = ((first, unit_rows(block)) for first, block in blocks)
            return concat_rows(self_influence_rows(blocks))
        return concat_rows(self_influence_rows(blocks, self._transform))

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable description of the scorer."""
        return {
            "method": self.method,
            "weight_decay": self.weight_decay,
            "tracked": [b.name for b in self.layout],
            "tracked_choice": self.tracked_choice,
            "dim": self.dim,
            "damping": None if self.solver is None else self.solver.damping,
            "damping_rule": (
                f"{RELATIVE_DAMPING:g} × mean eigenvalue" if self.relative_damping else "given"
            ),
            "solver": None if self.solver is None else self.solver.settings(),
            "checkpoint_lrs": self.lrs if self.method == "tracin" else None,
        }


def _as_stores(train: TrainSource) -> list[GradientStore] | None:
    if isinstance(train, GradientStore):
        return [train]
    if (
        isinstance(train, (list, tuple))
        and train
        and all(isinstance(s, GradientStore) for s in train)
    ):
        return list(train)
    return None
