"""FastIF's parallel execution: training-gradient blocks, the worker pool, parallel LiSSA.

Work is split into units that do not depend on the number of workers (candidate rows in
blocks of ``unit_rows``, whose gradients the workers return; one LiSSA chain per seed) and combined in a fixed order, so
results do not depend on it. Workers are ``spawn`` processes initialised with the state
of a :class:`~gradsift.influence.fastif.fastif.FastIF` (:func:`init_worker`): its gradient
computer, training data, optional stored gradients and LiSSA solver.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as tmp

from gradsift.errors import GradsiftError
from gradsift.influence.solvers import LiSSASolver, SolverDiagnostics
from gradsift.influence.solvers.lissa import LiSSADivergence
from gradsift.progress import track
from gradsift.store.gradient_store import GradientStore

__all__ = [
    "TrainGradients",
    "candidate_rows",
    "check_train_gradients",
    "gradient_blocks",
    "make_pool",
    "solve_parallel",
    "worker_rows",
]

#: Precomputed training gradients ``[n, D]``: a matrix, memmap or unprojected store.
TrainGradients = np.ndarray | torch.Tensor | GradientStore


def solve_parallel(solver: LiSSASolver, V: torch.Tensor, executor: Executor) -> torch.Tensor:
    """``solver.solve(V)`` with its repetitions (chains ``seed, seed+1, …``) run by
    ``executor``; chains are averaged in seed order, as the serial solver does.

    The executor's workers must have been initialised with this solver (see
    :func:`make_pool`). Diagnostics (residuals, scale) are recorded on the solver. When a
    chain diverges with the automatic scale, the scale is doubled and the solve reruns in
    this process (the workers hold the old scale); see :meth:`LiSSASolver.restart_or_raise`.
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
    try:
        for chain in executor.map(_worker_chain, [W] * len(seeds), seeds):
            X += chain
    except LiSSADivergence as err:
        solver.restart_or_raise(err, stacklevel=3)
        return solver.solve(V_in)
    X /= solver.repetitions
    diag = SolverDiagnostics(method=solver.name, damping=solver.damping, rows=W.shape[0])
    solver.check_chains(W, X, diag, stacklevel=3)
    diag.seconds = time.perf_counter() - t0
    solver.diagnostics = diag
    return X.to(V_in.device, V_in.dtype)


def make_pool(state: dict[str, Any], workers: int) -> ProcessPoolExecutor:
    """A ``spawn`` pool of ``workers`` processes initialised with ``state`` (each with an
    equal share of the CPU threads)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    return ProcessPoolExecutor(
        workers,
        mp_context=tmp.get_context("spawn"),
        initializer=init_worker,
        initargs=(state, threads),
    )


# --------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def init_worker(state: dict[str, Any], threads: int) -> None:
    """Worker-process initialiser: thread count, no progress bars, the shared ``state``."""
    torch.set_num_threads(threads)
    os.environ.setdefault("GRADSIFT_PROGRESS", "0")
    _WORKER.clear()
    _WORKER.update(state)


def worker_rows(rows: np.ndarray) -> torch.Tensor:
    """``candidate_rows`` in a worker process (on the state of :func:`init_worker`)."""
    return candidate_rows(_WORKER, rows)


def _worker_chain(V: torch.Tensor, seed: int) -> torch.Tensor:
    return _WORKER["solver"].run_chain(V, seed).detach()


def candidate_rows(state: dict[str, Any], rows: np.ndarray) -> torch.Tensor:
    """Training gradients ``[len(rows), D]`` of the sorted distinct ``rows``."""
    return torch.cat([G for _, G in gradient_blocks(state, rows)])


def gradient_blocks(
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


def check_train_gradients(stored: TrainGradients | None, n: int, dim: int) -> TrainGradients | None:
    """``stored`` after checking it holds unprojected gradients ``[n, dim]`` (None passes)."""
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
