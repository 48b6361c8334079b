"""Planning a trimming experiment: every (method, budget, seed) training run as a :class:`TrimJob`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gradsift.detect.result import DetectionResult, budget_to_count
from gradsift.errors import GradsiftError
from gradsift.experiments.trimming.recipe import TrimConfig

__all__ = ["Kind", "TrimJob", "plan_jobs", "random_removal", "top_ranked"]

Kind = Literal["none", "ranking", "random", "oracle"]


@dataclass(eq=False)
class TrimJob:
    """One training run: ``recipe`` at ``seed`` without the ``removed`` training rows.

    Attributes:
        method: ``"none"``, ``"random"``, ``"oracle"`` or the ranking's name.
        kind: ``"none"``, ``"ranking"``, ``"random"`` or ``"oracle"``.
        budget: fraction removed as requested (``0`` for none, ``m / n`` for the oracle).
        seed: the training seed.
        removed: sorted int64 indices of the removed training rows.
    """

    method: str
    kind: Kind
    budget: float
    seed: int
    removed: np.ndarray


# --------------------------------------------------------------------------- planning


def _check_scores(name: str, scores: np.ndarray | DetectionResult, n: int) -> np.ndarray:
    s = scores.scores if isinstance(scores, DetectionResult) else np.asarray(scores)
    s = np.asarray(s, dtype=np.float64)
    if s.shape != (n,):
        raise GradsiftError(
            f"ranking {name!r} has shape {s.shape}; it must score every training sample ({n},)"
        )
    if not np.all(np.isfinite(s)):
        raise GradsiftError(f"ranking {name!r} has NaN/Inf scores")
    return s


def top_ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the ``k`` highest scores (ties broken by lower index first)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def random_removal(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted indices of ``k`` of ``n`` rows drawn without replacement (seeded by seed, k)."""
    rng = np.random.default_rng([int(seed), int(k), 0x7A1])
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def plan_jobs(
    n_train: int,
    rankings: Mapping[str, np.ndarray | DetectionResult],
    config: TrimConfig,
    flipped: np.ndarray | None = None,
) -> list[TrimJob]:
    """Every run of the experiment (no trimming, each ranking × budget, random, oracle)."""
    reserved = {"none", "random", "oracle"}
    bad = reserved & set(rankings)
    if bad:
        raise GradsiftError(f"ranking names {sorted(bad)} are reserved; rename them")
    scores = {name: _check_scores(name, s, n_train) for name, s in rankings.items()}
    counts = {float(b): budget_to_count(float(b), n_train) for b in config.budgets}
    jobs: list[TrimJob] = []
    for seed in config.seeds:
        jobs.append(TrimJob("none", "none", 0.0, int(seed), np.empty(0, dtype=np.int64)))
        for name, s in scores.items():
            for b, k in counts.items():
                jobs.append(TrimJob(name, "ranking", b, int(seed), top_ranked(s, k)))
        if config.random_control:
            for b, k in counts.items():
                jobs.append(
                    TrimJob("random", "random", b, int(seed), random_removal(n_train, k, seed))
                )
        if config.oracle and flipped is not None and flipped.size:
            jobs.append(
                TrimJob("oracle", "oracle", flipped.size / n_train, int(seed), np.sort(flipped))
            )
    return jobs
