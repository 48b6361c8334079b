"""The FastIF front object: :class:`FastIF` and its result :class:`FastIFResult`.

Per test point: one inverse-HVP ``s_t = (H+λI)⁻¹ g_t``, ``k`` candidates from a
nearest-neighbour index, and ``score(i, t) = s_tᵀ g_i`` (**positive = helpful**) for the
candidates only. See :mod:`gradsift.influence.fastif`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradsift.errors import GradsiftError
from gradsift.grads.computer import GradientComputer
from gradsift.grads.projection import ProjectionConfig, Projector
from gradsift.influence.fastif.candidates import (
    batch_source,
    gathered_scores,
    gradient_basis,
    penultimate_features,
    search_both_ways,
)
from gradsift.influence.fastif.config import FastIFConfig, config_dict
from gradsift.influence.fastif.parallel import (
    TrainGradients,
    candidate_rows,
    check_train_gradients,
    gradient_blocks,
    make_pool,
    solve_parallel,
    worker_rows,
)
from gradsift.influence.neighbors import NeighborIndex, build_index
from gradsift.influence.solvers import InverseHVP, LiSSASolver
from gradsift.store.gradient_store import GradientStore
from gradsift.task import Task

__all__ = ["FastIF", "FastIFResult"]


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

    def matrix(self, n_train: int | None = None) -> np.ndarray:
        """The result as a train × test matrix float64 ``[n_train, m]`` with **explicit
        zeros** for the pairs FastIF did not score (non-candidates): a sparse answer,
        not the full influence matrix. ``n_train`` defaults to ``settings["n_train"]``."""
        n = n_train if n_train is not None else self.settings.get("n_train")
        if n is None:
            raise GradsiftError("FastIFResult.matrix needs n_train (not in settings)")
        t, r = np.nonzero(self.candidates >= 0)
        out = np.zeros((int(n), self.n_test))
        out[self.candidates[t, r], t] = self.scores[t, r]
        return out

    def sparse(self, n_train: int | None = None) -> Any:
        """The same as a ``scipy.sparse.csr_array`` ``[n_train, m]`` (only candidates stored)."""
        from scipy.sparse import csr_array

        n = n_train if n_train is not None else self.settings.get("n_train")
        if n is None:
            raise GradsiftError("FastIFResult.sparse needs n_train (not in settings)")
        t, r = np.nonzero(self.candidates >= 0)
        return csr_array(
            (self.scores[t, r], (self.candidates[t, r], t)), shape=(int(n), self.n_test)
        )

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
        projected_store: a :class:`GradientStore` of **projected** training gradients
            (``space="gradients"``): the index is built over its rows and test queries
            are projected with its manifest's projection (``config.projection`` is then
            ignored). Preconditioned retrieval: the query ``P s_t = P (H+λI)⁻¹ g_t``
            finds the rows of largest ``(P s_t)ᵀ(P g_i) ≈ influence``.
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
        projected_store: GradientStore | None = None,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
    ) -> None:
        if not solver.fitted:
            raise GradsiftError("FastIF needs a fitted solver: call solver.fit(model, task, data)")
        self.model, self.task, self.solver, self.config = model, task, solver, config
        self.collate_fn = collate_fn
        self.source = batch_source(model, train_data, collate_fn)
        self.n_train = len(self.source)
        self.computer = GradientComputer(model, task, config.method)
        if self.computer.dim != solver.dim:
            raise GradsiftError(
                f"the solver was fitted on {solver.dim} tracked scalars but the task tracks "
                f"{self.computer.dim}: fit the solver with the same model and task"
            )
        self.train_gradients = check_train_gradients(train_gradients, self.n_train, solver.dim)
        self.projected_store = projected_store
        projection = config.projection
        if projected_store is not None:
            projection = _store_projection(projected_store, config, self.n_train)
        self.projector = (
            Projector(self.computer.layout, projection)
            if config.space == "gradients" and projection is not None
            else None
        )
        self.basis: torch.Tensor | None = None  # [D, r] for config.basis == "pca"
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
        elif self.projected_store is not None:
            vectors = self.projected_store
        else:
            self._fit_basis()
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
        for start, G in self.gradient_blocks(np.arange(self.n_train), "projected gradients"):
            yield start, self.project(G).float().numpy()

    def _fit_basis(self) -> None:
        """PCA basis of a seeded sample of ``pca_rows`` training gradients (basis="pca")."""
        if self.config.basis != "pca" or self.basis is not None:
            return
        rng = np.random.default_rng(self.config.index.seed)
        take = np.sort(rng.choice(self.n_train, min(self.config.pca_rows, self.n_train), False))
        sample = torch.cat([G for _, G in self.gradient_blocks(take, "PCA basis")])
        self.basis = gradient_basis(sample, self.config.pca_dim)

    def project(self, V: torch.Tensor) -> torch.Tensor:
        """``P V`` in the index space: the PCA basis (``Vᵀ v``), the random projection, or
        the identity (``projection=None``)."""
        if self.config.space == "gradients" and self.config.basis == "pca":
            self._fit_basis()
            assert self.basis is not None
            return V.to(self.basis.dtype) @ self.basis
        return V if self.projector is None else self.projector.project(V)

    # ------------------------------------------------------------------ influence
    def test_gradients(self, test_data: Dataset | tuple[Any, ...]) -> torch.Tensor:
        """``g_t`` of the measurement of every test row: ``[m, D]`` (parameters' dtype)."""
        comp = GradientComputer(self.model, self.task, self.config.method, measurement=True)
        source = batch_source(self.model, test_data, self.collate_fn)
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
        return self._retrieve(test_data, S)[0]

    def _retrieve(
        self, test_data: Dataset | tuple[Any, ...], S: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Candidates and, for the gradient space, the index's projected influence."""
        index = self.build_index()
        k = min(self.config.k, self.n_train)
        if self.config.space == "features":
            queries = penultimate_features(
                self.model, self.task, batch_source(self.model, test_data, self.collate_fn)
            )
            return index.search(queries, k)[1], None
        return search_both_ways(index, self.project(S).float().numpy(), k)

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
        cand, approx = self._retrieve(test_data, S)
        timings["search"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.config.rerank or approx is None:
            scores = self.score_candidates(S, cand)
        else:
            scores = approx
        timings["scoring"] = time.perf_counter() - t0
        timings["index_build"] = self.index_seconds
        order = np.argsort(np.where(cand >= 0, -scores, np.inf), axis=1, kind="stable")
        return FastIFResult(
            candidates=np.take_along_axis(cand, order, 1),
            scores=np.take_along_axis(scores, order, 1),
            timings=timings,
            settings={
                "fastif": config_dict(self.config),
                "solver": self.solver.settings(),
                "n_train": self.n_train,
            },
        )

    def score_candidates(self, S: torch.Tensor, candidates: np.ndarray) -> np.ndarray:
        """``scores[t, j] = S[t] · g_{candidates[t, j]}``: float64 ``[m, k]`` (NaN at ``-1``).

        Per group of ``config.chunk`` test points, the gradients of the distinct candidate
        rows are computed once, in tasks of ``config.unit_rows`` rows (run by the worker
        processes when ``workers > 1``; the split does not depend on ``workers``), and
        each test point is dotted with its own candidates only (cost ``m·k·D``, not
        ``m·|union of candidates|·D``). Training gradients held as an in-memory CPU tensor
        are gathered directly, without the union copy.
        """
        if len(S) != len(candidates):
            raise GradsiftError(f"{len(S)} inverse-HVPs but {len(candidates)} candidate rows")
        out = np.full(candidates.shape, np.nan)
        S = S.detach().cpu()
        stored = self.train_gradients
        if isinstance(stored, torch.Tensor) and stored.device.type == "cpu":
            # In memory: gather each test point's rows straight from the matrix (no copy
            # of the candidates' union first).
            return gathered_scores(S, stored, candidates, candidates >= 0)
        for s in range(0, len(S), self.config.chunk):
            cand = candidates[s : s + self.config.chunk]
            valid = cand >= 0
            rows = np.unique(cand[valid])
            if len(rows) == 0:
                continue
            units = [
                rows[u : u + self.config.unit_rows]
                for u in range(0, len(rows), self.config.unit_rows)
            ]
            if self.config.workers > 1:
                parts = list(self._executor().map(worker_rows, units))
            else:
                state = self._state()
                parts = [candidate_rows(state, u) for u in units]
            where = np.searchsorted(rows, np.where(valid, cand, rows[0]))
            S_chunk = S[s : s + self.config.chunk]
            out[s : s + self.config.chunk] = gathered_scores(
                S_chunk, torch.cat(parts), where, valid
            )
        return out

    def gradient_blocks(
        self, rows: np.ndarray, description: str | None = "train gradients"
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first_row, G [b, D])`` training-gradient blocks of the sorted distinct ``rows``
        (computed on demand or gathered from ``train_gradients``)."""
        yield from gradient_blocks(self._state(), rows, description)

    # ------------------------------------------------------------------ internals
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
            self._pool = make_pool(self._state(), self.config.workers)
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


def _store_projection(store: GradientStore, config: FastIFConfig, n: int) -> ProjectionConfig:
    """The projection of a projected store that FastIF indexes (checked against the task)."""
    st = store.settings
    if config.space != "gradients":
        raise GradsiftError("projected_store is an index over gradients: use space='gradients'")
    if config.basis == "pca":
        raise GradsiftError("projected_store brings its own projection: use basis='random'")
    if st.projection is None:
        raise GradsiftError(
            "projected_store holds unprojected gradients: pass them as train_gradients "
            "(and projection=None to index them as they are)"
        )
    if st.extra.get("measurement"):
        raise GradsiftError("projected_store holds test-side (measurement) gradients")
    if store.n_rows != n:
        raise GradsiftError(f"projected_store holds {store.n_rows} rows, training data {n}")
    if st.projection.get("kind") == "kronecker":
        raise GradsiftError(
            "projected_store holds factored (kronecker) projections; FastIF queries the index "
            "with a projected preconditioned test gradient, which needs a dense projection "
            "kind (gaussian, rademacher, sparse) or basis='pca'"
        )
    return ProjectionConfig(**st.projection)
