"""Resumable, process-parallel retraining on training subsets: :func:`run_retrains`.

The evaluators (:mod:`.lds`, :mod:`.loo`) need the model's test outputs after training on
many subsets of the training data. The user provides the training function::

    def train_fn(keep: np.ndarray, seed: int) -> np.ndarray:  # keep: int64 training rows
        ...                                                  # → float [m_test] outputs

It must be a module-level (picklable) function for ``workers > 1`` (``spawn`` processes).
Each job's outputs are saved to ``cache_dir/<name>_<j>.npy`` as soon as it finishes, and
jobs whose file exists are not rerun, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch.multiprocessing as tmp

from gradsift.errors import GradsiftError
from gradsift.progress import track

__all__ = ["TrainFn", "run_retrains"]

#: ``train_fn(keep int64 [r], seed) -> float [m_test]`` test outputs of the retrained model.
TrainFn = Callable[[np.ndarray, int], np.ndarray]


def run_retrains(
    train_fn: TrainFn,
    subsets: Sequence[np.ndarray],
    seeds: Sequence[int],
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
    name: str = "job",
) -> np.ndarray:
    """Outputs ``[J, m_test]`` (float64) of ``train_fn(subsets[j], seeds[j])`` for every job.

    Jobs cached in ``cache_dir`` are loaded, the others run (in ``workers`` spawn
    processes when ``workers > 1``) and saved atomically one by one.
    """
    if len(subsets) != len(seeds):
        raise GradsiftError(f"{len(subsets)} subsets but {len(seeds)} seeds")
    if workers < 1:
        raise GradsiftError(f"workers must be >= 1, got {workers}")
    folder = Path(cache_dir) if cache_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}_{j:05d}.npy" if folder else None for j in range(len(subsets))]
    results: dict[int, np.ndarray] = {}
    todo = []
    for j, path in enumerate(paths):
        if path is not None and path.exists():
            results[j] = np.load(path)
        else:
            todo.append(j)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(workers, mp_context=tmp.get_context("spawn")) as pool:
            futures = {j: pool.submit(train_fn, subsets[j], int(seeds[j])) for j in todo}
            for j in track(todo, f"retraining ({name})"):
                results[j] = _save(futures[j].result(), paths[j])
    else:
        for j in track(todo, f"retraining ({name})"):
            results[j] = _save(train_fn(subsets[j], int(seeds[j])), paths[j])
    out = [np.asarray(results[j], dtype=np.float64).reshape(-1) for j in range(len(subsets))]
    if len({len(o) for o in out}) > 1:
        raise GradsiftError("train_fn returned outputs of different lengths")
    return np.stack(out) if out else np.zeros((0, 0))


def _save(values: np.ndarray, path: Path | None) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all():
        raise GradsiftError("train_fn returned NaN/Inf outputs")
    if path is not None:
        part = path.with_name(f".{path.stem}.tmp{os.getpid()}.npy")
        np.save(part, values)
        os.replace(part, path)
    return values
