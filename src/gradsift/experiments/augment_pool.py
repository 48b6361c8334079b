"""The pool side of the augmentation experiment: carving a pool, checking it, ranking it.

- :func:`carve_pool`: a training set and a disjoint labelled pool from one training split;
- :func:`check_pool_disjoint`: no pool sample may equal a validation or test sample;
- :func:`cut_validation`: the validation split cut into a ranking target and a
  budget-choice part (seeded, stratified);
- rankings of the pool, **higher = added first**: :func:`influence_pool_scores`
  (``mean_t g_tᵀ(H+λI)⁻¹g_z``, positive = adding ``z`` lowers the target loss),
  :func:`nearest_pool_scores` (minus the penultimate-feature distance to the nearest
  target sample) and :func:`random_order` (a seeded permutation);
- the training runs over the rows ``[train; pool]``: :func:`plan_augment_jobs` (a run
  "removes" the pool rows it does not add, so every run sees its rows in one order) and
  :func:`train_runs` (the trimming process pool and run cache).

Used by :mod:`gradsift.experiments.augment`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import LabeledData, Split
from gradsift.experiments.trimming import Recipe, TrimConfig
from gradsift.experiments.trimming.cache import load_cached, run_key
from gradsift.experiments.trimming.jobs import TrimJob
from gradsift.experiments.trimming.pool import RunData, execute
from gradsift.influence.fastif import penultimate_features
from gradsift.influence.neighbors import IndexConfig, build_index
from gradsift.influence.scores import InfluenceMethod, InfluenceScorer
from gradsift.store.kernels import dot_scores
from gradsift.task import ClassificationTask

__all__ = [
    "AugmentError",
    "PoolSplit",
    "carve_pool",
    "check_pool_disjoint",
    "cut_validation",
    "influence_pool_scores",
    "nearest_pool_scores",
    "plan_augment_jobs",
    "random_order",
    "rank_order",
    "train_runs",
]


class AugmentError(GradsiftError):
    """Bad input to the augmentation experiment."""


@dataclass
class PoolSplit:
    """A data set whose training split was cut into ``train`` and a disjoint ``pool``.

    Attributes:
        data: train / val / test (train = the rows ``train_rows`` of the source train split).
        pool: the unseen labelled pool (rows ``pool_rows`` of the source train split).
        train_rows, pool_rows: sorted int64 indices into the source train split; disjoint.
    """

    data: LabeledData
    pool: Split
    train_rows: np.ndarray
    pool_rows: np.ndarray


# --------------------------------------------------------------------------- data


def _strata(y: np.ndarray, n_pick: int, n_rest: int) -> np.ndarray | None:
    """``y`` when a stratified split into ``n_pick`` / ``n_rest`` rows is possible."""
    counts = np.bincount(y)
    counts = counts[counts > 0]
    ok = counts.min() >= 2 and min(n_pick, n_rest) >= counts.size
    return y if ok else None


def carve_pool(data: LabeledData, n_train: int, n_pool: int, seed: int = 0) -> PoolSplit:
    """Split ``data.train`` into a training set of ``n_train`` rows and a disjoint pool of
    ``n_pool`` rows (seeded, stratified by label where possible); val / test untouched."""
    n = len(data.train)
    if n_train < 1 or n_pool < 1 or n_train + n_pool > n:
        raise AugmentError(
            f"n_train + n_pool must fit in the {n} training rows, got {n_train} + {n_pool}"
        )
    rows = np.arange(n)
    y = data.train.y
    strat = _strata(y, n_pool, n - n_pool)
    rest, pool_rows = train_test_split(rows, test_size=n_pool, random_state=seed, stratify=strat)
    if n_train < rest.size:
        strat = _strata(y[rest], n_train, rest.size - n_train)
        rest, _ = train_test_split(rest, train_size=n_train, random_state=seed + 1, stratify=strat)
    train_rows, pool_rows = np.sort(rest).astype(np.int64), np.sort(pool_rows).astype(np.int64)
    carved = LabeledData(**{**data.__dict__, "train": data.train.subset(train_rows)})
    return PoolSplit(carved, data.train.subset(pool_rows), train_rows, pool_rows)


def _row_hashes(X: np.ndarray) -> set[bytes]:
    X = np.ascontiguousarray(X, dtype=np.float32).reshape(len(X), -1)
    return {hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in X}


def check_pool_disjoint(data: LabeledData, pool: Split) -> None:
    """Raise :class:`AugmentError` if a pool sample equals a validation or test sample
    (compared by the bytes of its float32 features)."""
    pool_h = _row_hashes(pool.X)
    for name in ("val", "test"):
        shared = pool_h & _row_hashes(getattr(data, name).X)
        if shared:
            raise AugmentError(f"{len(shared)} pool sample(s) also appear in the {name} split")


def cut_validation(val: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """``(rank, choose)``: a seeded, stratified (where possible) partition of ``val`` with
    ``round(fraction · n)`` rows in ``rank`` (the ranking target) and the rest in
    ``choose`` (the budget choice)."""
    rows = np.arange(len(val))
    n_rank = int(round(fraction * len(val)))
    if not 1 <= n_rank < len(val):
        raise AugmentError(f"the validation split ({len(val)} rows) is too small to cut in two")
    strat = _strata(val.y, n_rank, len(val) - n_rank)
    rank, choose = train_test_split(rows, train_size=n_rank, random_state=seed, stratify=strat)
    return val.subset(np.sort(rank)), val.subset(np.sort(choose))


# --------------------------------------------------------------------------- rankings


def influence_pool_scores(
    model: nn.Module,
    train: Split,
    pool: Split,
    target: Split,
    method: InfluenceMethod = "if-exact",
    tracked: str = "last_linear",
    weight_decay: float = 0.0,
) -> np.ndarray:
    """float64 ``[n_pool]``: ``mean_t g_tᵀ(H+λI)⁻¹g_z`` over ``target``, ``H`` fitted on
    ``train``. Positive = adding ``z`` (with its pool label) lowers the target loss.

    With weight decay ``w`` the retrained optimum also moves by ``−H⁻¹wθ/(n+1)`` (adding
    a sample rescales the data term against the penalty): the same for every pool sample,
    so it does not change the ranking and is left out. ``test_vectors`` solves once per
    target row (cheap for ``if-exact``, whose factorisation is fitted once)."""
    scorer = InfluenceScorer(
        model,
        ClassificationTask(),
        method,
        weight_decay=weight_decay,
        tracked=tracked,  # type: ignore[arg-type]
    ).fit((train.X, train.y))
    q = scorer.test_vectors((target.X, target.y)).mean(dim=0, keepdim=True)
    parts = [dot_scores(block, q)[:, 0] for _, block in scorer.train_blocks((pool.X, pool.y))]
    return torch.cat(parts).double().cpu().numpy()


def nearest_pool_scores(model: nn.Module, pool: Split, target: Split) -> np.ndarray:
    """float64 ``[n_pool]``: minus the L2 distance from each pool sample to its nearest
    ``target`` sample in the model's penultimate features (higher = nearer)."""
    task = ClassificationTask()
    h_target = penultimate_features(model, task, (target.X, target.y))
    h_pool = penultimate_features(model, task, (pool.X, pool.y))
    index = build_index(h_target, IndexConfig(backend="exact", metric="l2"))
    d2, _ = index.search(h_pool, 1)
    return -np.sqrt(np.maximum(d2[:, 0].astype(np.float64), 0.0))


def random_order(n_pool: int, seed: int) -> np.ndarray:
    """A seeded permutation of the pool (the ``random`` arm adds its first ``m``)."""
    return np.random.default_rng([int(seed), 0xA06]).permutation(n_pool).astype(np.int64)


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Pool indices, highest score first (ties: lower index first)."""
    return np.argsort(-scores, kind="stable").astype(np.int64)


# --------------------------------------------------------------------------- training runs


def plan_augment_jobs(
    orders: Mapping[str, Callable[[int], np.ndarray]],
    budgets: Sequence[int],
    seeds: Sequence[int],
    n_train: int,
    n_pool: int,
) -> list[TrimJob]:
    """One run per (arm, m, seed) and ``none`` per seed, over the rows ``[train; pool]``:
    ``removed`` = the pool rows (offset by ``n_train``) that the run does not add."""
    all_pool = np.arange(n_train, n_train + n_pool, dtype=np.int64)
    jobs = []
    for seed in seeds:
        jobs.append(TrimJob("none", "none", 0.0, int(seed), all_pool))
        for arm, order_of in orders.items():
            order = order_of(int(seed))
            for m in budgets:
                removed = np.setdiff1d(all_pool, n_train + order[: int(m)])
                kind = "random" if arm == "random" else "ranking"
                jobs.append(TrimJob(arm, kind, float(m), int(seed), removed))
    return jobs


def _fingerprint(arrays: RunData) -> str:
    h = hashlib.sha256(b"augment-v1")
    for a in (arrays.X_train, arrays.y_train, arrays.X_val, arrays.y_val):
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    a = np.ascontiguousarray(arrays.X_test)
    h.update(a.tobytes() + np.ascontiguousarray(arrays.y_test).tobytes())
    return h.hexdigest()


def train_runs(
    jobs: list[TrimJob],
    recipe: Recipe,
    arrays: RunData,
    n_jobs: int = 1,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Train every job with the trimming pool (:func:`~.trimming.pool.execute`); runs in
    ``cache_dir`` are read back. One row per job: ``arm, budget, seed, val_accuracy,
    test_accuracy, epoch, seconds, cached, key``."""
    fp = _fingerprint(arrays)
    folder = None if cache_dir is None else Path(cache_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    keyed = [(job, run_key(recipe, job.seed, job.removed, fp)) for job in jobs]
    records = {k: r for _, k in keyed if (r := load_cached(folder, k)) is not None}
    cached = set(records)
    todo = list({k: (j, k) for j, k in keyed if k not in cached}.values())
    seeds = tuple(sorted({j.seed for j in jobs}))
    trim_cfg = TrimConfig(seeds=seeds, n_jobs=n_jobs, progress=progress)
    records.update(execute(todo, recipe, arrays, trim_cfg, folder, None))
    rows = []
    for job, key in keyed:
        rec = records[key]
        rows.append(
            {
                "arm": job.method,
                "budget": int(job.budget),
                "seed": job.seed,
                "val_accuracy": float(rec["val_accuracy"]),
                "test_accuracy": float(rec["test_accuracy"]),
                "epoch": int(rec["epoch"]),
                "seconds": float(rec["seconds"]),
                "cached": key in cached,
                "key": key,
            }
        )
    return pd.DataFrame(rows)
