"""FastIF: influence functions restricted to nearest-neighbour candidates.

Three changes to plain influence (METHODS.md, "FastIF"):

1. **Candidates.** Per test point, only the ``k`` training samples nearest to it are
   scored (default ``k = 1000``). The search runs in one of two spaces:

   - ``features``: the penultimate features ``h`` (the input of the model's last
     ``nn.Linear``, captured by a forward hook), as in the FastIF paper (L2 by default);
   - ``gradients``: seeded random projections ``P g_i`` of the training gradients, queried
     with the projected inverse-HVP ``P s_t``. Then the index's inner product
     ``(P s_t)ᵀ(P g_i) ≈ s_tᵀ g_i`` *is* an approximate influence score, and half of the
     ``k`` candidates come from the query ``P s_t`` (helpful) and half from ``−P s_t``
     (harmful). Use ``metric="ip"`` there.

2. **One inverse-HVP per test point.** ``s_t = (H+λI)⁻¹ g_t`` with any
   :class:`~gradsift.influence.solvers.InverseHVP`; candidate ``i`` scores
   ``score(i, t) = s_tᵀ g_i`` (**positive = helpful**: removing ``i`` raises ``t``'s loss).

3. **Processes.** LiSSA repetitions (independent seeded chains,
   :meth:`LiSSASolver.run_chain`) and candidate scoring (blocks of candidate rows) run in a
   ``spawn`` process pool of ``workers`` processes. Work is split into the same units
   whatever the number of workers, and combined in a fixed order, so results do not
   depend on it (up to BLAS thread-count rounding).

Training gradients of the candidates are computed on demand with
:class:`~gradsift.grads.computer.GradientComputer` (a backward pass per candidate, as in the
paper), or gathered from a precomputed matrix or :class:`~gradsift.store.gradient_store.GradientStore`.

:func:`full_influence` is the unrestricted method (every training row, streaming top-k);
:func:`compare_with_full` times both on the same test points and reports the recall of
the full method's top-m helpful and harmful samples and the speed-up.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.multiprocessing as tmp
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradsift.distributed.scoring import fold_block
from gradsift.errors import GradsiftError
from gradsift.grads.computer import GradientComputer, Method
from gradsift.grads.projection import ProjectionConfig, Projector
from gradsift.influence.hessian import BatchSource
from gradsift.influence.neighbors import IndexConfig, NeighborIndex, build_index, recall_at_k
from gradsift.influence.solvers import (
    ConvergenceWarning,
    InverseHVP,
    LiSSASolver,
    SolverDiagnostics,
)
from gradsift.progress import track
from gradsift.store.gradient_store import GradientStore
from gradsift.store.kernels import StreamingTopK
from gradsift.task import Task, last_linear

Space = Literal["features", "gradients"]
TrainGradients = np.ndarray | torch.Tensor | GradientStore

__all__ = [
    "FastIFConfig",
    "FastIF",
    "FastIFResult",
    "FastIFComparison",
    "penultimate_features",
    "full_influence",
    "compare_with_full",
    "solve_parallel",
]


@dataclass(frozen=True)
class FastIFConfig:
    """Settings of :class:`FastIF`.

    Attributes:
        k: candidates per test point (clipped to the training-set size).
        space: ``features`` (penultimate features) or ``gradients`` (projected gradients).
        index: nearest-neighbour backend and metric (see :class:`IndexConfig`); the
            default is exact faiss search with L2, the paper's setting for features.
        projection: projection of the gradients for ``space="gradients"``.
        batch_size: samples per gradient / feature batch.
        workers: processes for candidate scoring and LiSSA repetitions (1 = in-process).
        chunk: test points scored together: the gradients of their distinct candidates
            are computed once (memory ``chunk × distinct candidates`` float64).
        unit_rows: candidate rows per scoring task (the unit of work of a worker process;
            fixed, so results do not depend on ``workers``).
        method: per-sample gradient path (see :class:`GradientComputer`).
    """

    k: int = 1000
    space: Space = "features"
    index: IndexConfig = field(default_factory=lambda: IndexConfig(backend="flat", metric="l2"))
    projection: ProjectionConfig = field(default_factory=lambda: ProjectionConfig(dim=256))
    batch_size: int = 256
    workers: int = 1
    chunk: int = 256
    unit_rows: int = 4096
    method: Method = "auto"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise GradsiftError(f"FastIF k must be >= 1, got {self.k}")
        if self.space not in ("features", "gradients"):
            raise GradsiftError(f"space must be 'features' or 'gradients', got {self.space!r}")
        if self.space == "gradients" and self.index.metric != "ip":
            raise GradsiftError(
                "space='gradients' ranks candidates by the projected influence (P s)ᵀ(P g): "
                "use IndexConfig(metric='ip')"
            )
        for name in ("batch_size", "workers", "chunk", "unit_rows"):
            if getattr(self, name) < 1:
                raise GradsiftError(f"FastIFConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class FastIFResult:
    """Candidate scores per test point, sorted from most helpful to most harmful.

    Attributes:
        candidates: int64 ``[m, k]`` training indices (``-1`` = no candidate).
        scores: float64 ``[m, k]`` ``s_tᵀ g_i`` (positive = helpful; NaN where ``-1``).
        timings: seconds per stage (``solve``, ``queries``, ``search``, ``scoring``).
        settings: solver and FastIF settings, JSON-serialisable.
    """

    candidates: np.ndarray
    scores: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_test(self) -> int:
        return int(self.candidates.shape[0])

    def helpful(self, top: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices int64 [m, top], scores float64 [m, top])``, most helpful first."""
        return self.candidates[:, :top], self.scores[:, :top]

    def harmful(self, top: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices int64 [m, top], scores float64 [m, top])``, most harmful (most
        negative) first; rows with fewer candidates are padded with ``-1`` / NaN."""
        idx = np.full((self.n_test, top), -1, dtype=np.int64)
        val = np.full((self.n_test, top), np.nan)
        for t in range(self.n_test):
            valid = np.flatnonzero(self.candidates[t] >= 0)[::-1][:top]
            idx[t, : len(valid)] = self.candidates[t, valid]
            val[t, : len(valid)] = self.scores[t, valid]
        return idx, val

    def to_frame(self) -> pd.DataFrame:
        """Long table: ``test``, ``rank`` (0 = most helpful), ``train_index``, ``score``."""
        t, r = np.nonzero(self.candidates >= 0)
        return pd.DataFrame(
            {
                "test": t,
                "rank": r,
                "train_index": self.candidates[t, r],
                "score": self.scores[t, r],
            }
        )


# --------------------------------------------------------------------------- features


def penultimate_features(
    model: nn.Module,
    task: Task,
    data: Dataset | tuple[Any, ...] | BatchSource,
    batch_size: int = 1024,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
) -> np.ndarray:
    """Inputs of the model's last ``nn.Linear`` (its head): float32 ``[n, h]``.

    Runs ``task.forward`` in batches under ``no_grad`` with a forward hook; the model
    must be in eval mode if it has BatchNorm or Dropout.
    """
    source = data if isinstance(data, BatchSource) else _source(model, data, collate_fn)
    name, head = last_linear(model)
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach()))
    rows = []
    try:
        with torch.no_grad():
            for _, batch in source.batches(batch_size):
                seen.clear()
                task.forward(model, batch)
                if len(seen) != 1:
                    raise GradsiftError(
                        f"the head {name!r} ran {len(seen)} times in one forward pass; "
                        "penultimate features need exactly one call (use space='gradients')"
                    )
                rows.append(seen[0].reshape(seen[0].shape[0], -1).float().cpu())
    finally:
        handle.remove()
    return torch.cat(rows).numpy()


# --------------------------------------------------------------------------- FastIF


class FastIF:
    """FastIF influence of training samples on test points.

    Args:
        model: the trained model (eval mode); not modified.
        task: loss, forward and tracked parameters (must match the solver's).
        train_data: the training data (Dataset or tuple of arrays), row *i* = sample *i*.
        solver: a **fitted** inverse-HVP solver on the same tracked parameters.
        config: :class:`FastIFConfig`.
        train_gradients: optional precomputed training gradients ``[n, D]`` (matrix,
            memmap or unprojected :class:`GradientStore`); default: computed on demand
            for the candidates only.
        index: optional prebuilt index over the chosen space (e.g. an IVF index filled
            from a projected store); built on first use otherwise.
        collate_fn: for Dataset inputs.

    Use :meth:`influence` for scores, :meth:`close` (or ``with FastIF(...)``) to stop
    the worker processes when ``config.workers > 1``.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        train_data: Dataset | tuple[Any, ...],
        solver: InverseHVP,
        config: FastIFConfig = FastIFConfig(),
        *,
        train_gradients: TrainGradients | None = None,
        index: NeighborIndex | None = None,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
    ) -> None:
        if not solver.fitted:
            raise GradsiftError("FastIF needs a fitted solver: call solver.fit(model, task, data)")
        self.model, self.task, self.solver, self.config = model, task, solver, config
        self.collate_fn = collate_fn
        self.source = _source(model, train_data, collate_fn)
        self.n_train = len(self.source)
        self.computer = GradientComputer(model, task, config.method)
        if self.computer.dim != solver.dim:
            raise GradsiftError(
                f"the solver was fitted on {solver.dim} tracked scalars but the task tracks "
                f"{self.computer.dim}: fit the solver with the same model and task"
            )
        self.train_gradients = _check_train_gradients(train_gradients, self.n_train, solver.dim)
        self.projector = (
            Projector(self.computer.layout, config.projection)
            if config.space == "gradients"
            else None
        )
        self.index = index
        self.index_seconds = 0.0
        self._pool: ProcessPoolExecutor | None = None

    # ------------------------------------------------------------------ index
    def build_index(self) -> NeighborIndex:
        """Build (once) the index over the training set in the configured space."""
        if self.index is not None:
            return self.index
        t0 = time.perf_counter()
        if self.config.space == "features":
            vectors: Any = penultimate_features(
                self.model, self.task, self.source, self.config.batch_size
            )
        else:
            vectors = self._projected_train_blocks()
        self.index = build_index(vectors, self.config.index)
        if self.index.ntotal != self.n_train:
            raise GradsiftError(
                f"the index holds {self.index.ntotal} rows but there are {self.n_train} "
                "training samples"
            )
        self.index_seconds = time.perf_counter() - t0
        return self.index

    def _projected_train_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        assert self.projector is not None
        for start, G in self._gradient_blocks(np.arange(self.n_train), "projected gradients"):
            yield start, self.projector.project(G).float().numpy()

    # ------------------------------------------------------------------ influence
    def test_gradients(self, test_data: Dataset | tuple[Any, ...]) -> torch.Tensor:
        """``g_t`` of the measurement of every test row: ``[m, D]`` (parameters' dtype)."""
        comp = GradientComputer(self.model, self.task, self.config.method, measurement=True)
        source = _source(self.model, test_data, self.collate_fn)
        return torch.cat(
            [comp.compute(b, s)[0].detach() for s, b in source.batches(self.config.batch_size)]
        )

    def solve(self, G_test: torch.Tensor) -> torch.Tensor:
        """``S = (H+λI)⁻¹ g_t`` row-wise, LiSSA repetitions over the worker processes."""
        if self.config.workers > 1 and isinstance(self.solver, LiSSASolver):
            return solve_parallel(self.solver, G_test, self._executor()).detach()
        return self.solver.solve(G_test).detach()

    def candidates(self, test_data: Dataset | tuple[Any, ...], S: torch.Tensor) -> np.ndarray:
        """Candidate training indices per test point: int64 ``[m, k']`` (``-1`` = none)."""
        index = self.build_index()
        k = min(self.config.k, self.n_train)
        if self.config.space == "features":
            queries = penultimate_features(
                self.model, self.task, _source(self.model, test_data, self.collate_fn)
            )
            return index.search(queries, k)[1]
        assert self.projector is not None
        q = self.projector.project(S).float().numpy()
        half = -(-k // 2)
        up = index.search(q, half)[1]
        down = index.search(-q, k - half)[1] if k > half else np.zeros((len(q), 0), np.int64)
        return _merge_candidates(up, down, k)

    def influence(
        self, test_data: Dataset | tuple[Any, ...], S: torch.Tensor | None = None
    ) -> FastIFResult:
        """FastIF scores of the candidates of every row of ``test_data``.

        ``S`` (optional) are precomputed inverse-HVPs ``[m, D]`` of the test gradients.
        """
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if S is None:
            S = self.solve(self.test_gradients(test_data))
        S = S.detach()
        timings["solve"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cand = self.candidates(test_data, S)
        timings["search"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = self.score_candidates(S, cand)
        timings["scoring"] = time.perf_counter() - t0
        timings["index_build"] = self.index_seconds
        order = np.argsort(np.where(cand >= 0, -scores, np.inf), axis=1, kind="stable")
        return FastIFResult(
            candidates=np.take_along_axis(cand, order, 1),
            scores=np.take_along_axis(scores, order, 1),
            timings=timings,
            settings={
                "fastif": _config_dict(self.config),
                "solver": self.solver.settings(),
                "n_train": self.n_train,
            },
        )

    def score_candidates(self, S: torch.Tensor, candidates: np.ndarray) -> np.ndarray:
        """``scores[t, j] = S[t] · g_{candidates[t, j]}``: float64 ``[m, k]`` (NaN at ``-1``).

        Per group of ``config.chunk`` test points, the gradients of the distinct candidate
        rows are computed once, in tasks of ``config.unit_rows`` rows (run by the worker
        processes when ``workers > 1``; the split does not depend on ``workers``).
        """
        if len(S) != len(candidates):
            raise GradsiftError(f"{len(S)} inverse-HVPs but {len(candidates)} candidate rows")
        out = np.full(candidates.shape, np.nan)
        S = S.detach().cpu()
        for s in range(0, len(S), self.config.chunk):
            cand = candidates[s : s + self.config.chunk]
            valid = cand >= 0
            rows = np.unique(cand[valid])
            if len(rows) == 0:
                continue
            S_chunk = S[s : s + self.config.chunk].contiguous()
            units = [
                rows[u : u + self.config.unit_rows]
                for u in range(0, len(rows), self.config.unit_rows)
            ]
            if self.config.workers > 1:
                S_chunk.share_memory_()
                parts = list(self._executor().map(_worker_dots, [S_chunk] * len(units), units))
            else:
                state = self._state()
                parts = [_dots(state, S_chunk, u) for u in track(units, "FastIF scoring")]
            dense = torch.cat(parts, dim=1)  # [c, len(rows)]
            t_idx, _ = np.nonzero(valid)
            where = np.searchsorted(rows, cand[valid])
            block = out[s : s + self.config.chunk]
            block[valid] = dense[torch.as_tensor(t_idx), torch.as_tensor(where)].numpy()
        return out

    # ------------------------------------------------------------------ internals
    def _gradient_blocks(
        self, rows: np.ndarray, description: str = "train gradients"
    ) -> Iterator[tuple[int, torch.Tensor]]:
        yield from _gradient_blocks(self._state(), rows, description)

    def _state(self) -> dict[str, Any]:
        return {
            "computer": self.computer,
            "source": self.source,
            "train_gradients": self.train_gradients,
            "batch_size": self.config.batch_size,
            "solver": self.solver if isinstance(self.solver, LiSSASolver) else None,
        }

    def _executor(self) -> Executor:
        if self._pool is None:
            threads = max(1, (os.cpu_count() or 1) // self.config.workers)
            self._pool = ProcessPoolExecutor(
                self.config.workers,
                mp_context=tmp.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self._state(), threads),
            )
        return self._pool

    def close(self) -> None:
        """Shut the worker pool down (a no-op with ``workers=1``)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> FastIF:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- full method


def full_influence(
    fastif: FastIF, S: torch.Tensor, top: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The unrestricted method: ``s_tᵀ g_i`` for **every** training row, streamed in blocks.

    Uses the same gradients (on demand or precomputed) and solver outputs ``S [m, D]`` as
    ``fastif``. Returns ``((helpful_idx, helpful_scores), (harmful_idx, harmful_scores))``,
    each ``[m, top]`` (int64, float64), best first; never holds an ``n × m`` matrix.
    """
    helpful = StreamingTopK(len(S), top, largest=True)
    harmful = StreamingTopK(len(S), top, largest=False)
    rows = np.arange(fastif.n_train)
    St = S.detach().cpu()
    for start, G in fastif._gradient_blocks(rows, "full influence"):
        scores = G.to(St.dtype) @ St.T  # [b, m]
        fold_block(helpful, scores, start)  # = StreamingTopK.update, pre-filtered by topk
        fold_block(harmful, scores, start)
    (hv, hi), (av, ai) = helpful.result(), harmful.result()
    return (hi, hv), (ai, av)


@dataclass
class FastIFComparison:
    """FastIF against the full method on the same test points (one run).

    ``recall[("helpful", m)]`` is the mean fraction of the full method's top-m most
    helpful samples that FastIF also ranks in its top-m (equivalently, that are among its
    candidates, since candidate scores are exact); likewise for ``"harmful"``.
    Times are seconds; ``speedup = full_total / fastif_total`` where both totals include
    the same inverse-HVP solve, and ``speedup_scoring`` leaves it (and the one-off index
    build) out.
    """

    n_train: int
    n_test: int
    k: int
    recall: dict[tuple[str, int], float]
    solve_seconds: float
    full_seconds: float
    fastif_seconds: float
    index_seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return (self.solve_seconds + self.full_seconds) / (self.solve_seconds + self.fastif_seconds)

    @property
    def speedup_scoring(self) -> float:
        return self.full_seconds / self.fastif_seconds

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["recall"] = {f"{kind}@{m}": v for (kind, m), v in self.recall.items()}
        out["speedup"], out["speedup_scoring"] = self.speedup, self.speedup_scoring
        return out


def compare_with_full(
    fastif: FastIF, test_data: Dataset | tuple[Any, ...], tops: Sequence[int] = (10, 100)
) -> FastIFComparison:
    """Time FastIF and the full method on ``test_data``; recall of the full top-m.

    The inverse-HVPs are solved once and shared (both methods need the same ones); the
    index is built before timing starts and reported separately.
    """
    fastif.build_index()
    t0 = time.perf_counter()
    S = fastif.solve(fastif.test_gradients(test_data))
    solve_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = fastif.influence(test_data, S=S)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (h_idx, _), (a_idx, _) = full_influence(fastif, S, max(tops))
    full_s = time.perf_counter() - t0
    f_help, _ = fast.helpful(max(tops))
    f_harm, _ = fast.harmful(max(tops))
    recall = {}
    for m in tops:
        recall[("helpful", m)] = recall_at_k(f_help[:, :m], h_idx[:, :m])
        recall[("harmful", m)] = recall_at_k(f_harm[:, :m], a_idx[:, :m])
    return FastIFComparison(
        n_train=fastif.n_train,
        n_test=fast.n_test,
        k=min(fastif.config.k, fastif.n_train),
        recall=recall,
        solve_seconds=solve_s,
        full_seconds=full_s,
        fastif_seconds=fast_s,
        index_seconds=fastif.index_seconds,
        timings={k: v for k, v in fast.timings.items() if k != "solve"},
    )


# --------------------------------------------------------------------------- parallel LiSSA


def solve_parallel(solver: LiSSASolver, V: torch.Tensor, executor: Executor) -> torch.Tensor:
    """``solver.solve(V)`` with its repetitions (chains ``seed, seed+1, …``) run by
    ``executor``; chains are averaged in seed order, as the serial solver does.

    The executor's workers must have been initialised with this solver (see
    :class:`FastIF`). Diagnostics (residuals, scale) are recorded on the solver.
    """
    if not solver.fitted:
        raise GradsiftError("LiSSASolver is not fitted; call fit(...) first")
    t0 = time.perf_counter()
    V_in = torch.as_tensor(V)
    op = solver.operator
    assert op is not None
    W = V_in.to(op.device, op.dtype)
    seeds = [solver.seed + r for r in range(solver.repetitions)]
    X = torch.zeros_like(W)
    for chain in executor.map(_worker_chain, [W] * len(seeds), seeds):
        X += chain
    X /= solver.repetitions
    res = solver.residuals(W, X)
    diag = SolverDiagnostics(
        method=solver.name,
        damping=solver.damping,
        rows=W.shape[0],
        iterations=solver.steps,
        scale=solver.scale,
        top_eigenvalue=solver.top_eigenvalue,
        residual_max=float(res.max()),
        residual_mean=float(res.mean()),
    )
    diag.converged = diag.residual_max <= solver.residual_tol
    diag.seconds = time.perf_counter() - t0
    solver.diagnostics = diag
    if not diag.converged:
        warnings.warn(
            f"LiSSA did not converge: relative residual up to {diag.residual_max:.3g} "
            f"(tolerance {solver.residual_tol:g}) after {solver.steps} steps × "
            f"{solver.repetitions} repetitions; use more steps or repetitions, or CGSolver.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return X.to(V_in.device, V_in.dtype)


# --------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _init_worker(state: dict[str, Any], threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("GRADSIFT_PROGRESS", "0")
    _WORKER.clear()
    _WORKER.update(state)


def _worker_dots(S: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    return _dots(_WORKER, S, rows)


def _worker_chain(V: torch.Tensor, seed: int) -> torch.Tensor:
    return _WORKER["solver"].run_chain(V, seed).detach()


def _dots(state: dict[str, Any], S: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """``S [c, D] · g_iᵀ`` for the sorted distinct training ``rows``: float64 ``[c, len(rows)]``."""
    parts = [(S.to(G.dtype) @ G.T).double() for _, G in _gradient_blocks(state, rows)]
    return torch.cat(parts, dim=1)


def _gradient_blocks(
    state: dict[str, Any], rows: np.ndarray, description: str | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first_row, G [b, D])`` for sorted distinct ``rows``, in batches.

    ``first_row`` is the first row's training index when ``rows`` is a contiguous range
    starting at 0 (full passes), and otherwise the row itself (looked up by the caller).
    """
    size = state["batch_size"]
    stored = state["train_gradients"]
    starts = range(0, len(rows), size)
    it = track(starts, description, total=len(starts)) if description else starts
    for s in it:
        batch_rows = rows[s : s + size]
        if stored is None:
            batch = state["source"].take(batch_rows)
            G = state["computer"].compute(batch, int(batch_rows[0]))[0].detach()
        else:
            G = _gather(stored, batch_rows)
        yield int(batch_rows[0]), G


def _gather(stored: TrainGradients, rows: np.ndarray) -> torch.Tensor:
    if isinstance(stored, torch.Tensor):
        return stored[torch.as_tensor(rows)]
    if isinstance(stored, np.ndarray):
        return torch.as_tensor(np.asarray(stored[rows]))
    parts = []
    size = stored.settings.rows_per_shard
    shards = rows // size
    for shard in np.unique(shards):
        mine = rows[shards == shard] - shard * size
        parts.append(np.asarray(stored.read_shard(int(shard))[mine]))
    return torch.as_tensor(np.concatenate(parts))


# --------------------------------------------------------------------------- helpers


def _source(
    model: nn.Module, data: Dataset | tuple[Any, ...], collate_fn: Callable[[list[Any]], Any]
) -> BatchSource:
    first = next(iter(model.parameters()))
    return BatchSource(data, first.device, first.dtype, collate_fn)


def _check_train_gradients(
    stored: TrainGradients | None, n: int, dim: int
) -> TrainGradients | None:
    if stored is None:
        return None
    if isinstance(stored, GradientStore):
        if stored.settings.projection is not None:
            raise GradsiftError(
                "the store holds projected gradients, but influence scores need the tracked "
                "gradients the solver inverts: extract without projection, or index the "
                "projected store with FastIF(index=build_index(store, ...))"
            )
        shape = (stored.n_rows, stored.dim)
    else:
        shape = tuple(stored.shape)
    if shape != (n, dim):
        raise GradsiftError(f"train_gradients must be [{n}, {dim}], got {list(shape)}")
    return stored


def _merge_candidates(up: np.ndarray, down: np.ndarray, k: int) -> np.ndarray:
    """Per row: ``up`` then ``down`` without duplicates, padded with ``-1`` to ``k``."""
    out = np.full((len(up), k), -1, dtype=np.int64)
    for t in range(len(up)):
        row = np.concatenate([up[t], down[t]])
        row = row[row >= 0]
        _, first = np.unique(row, return_index=True)
        keep = row[np.sort(first)][:k]
        out[t, : len(keep)] = keep
    return out


def _config_dict(config: FastIFConfig) -> dict[str, Any]:
    out = asdict(config)
    out["k"] = int(config.k)
    return out
