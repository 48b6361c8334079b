"""Leave-one-out agreement (METHODS.md): predicted against actual test-output changes.

For small convex models: retrain without training row ``i`` (to a tight tolerance) and
compare the actual change of each test point's loss with the influence prediction
``score(i, t) / n`` (positive = helpful: removing ``i`` raises the test loss).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy.stats import pearsonr, spearmanr

from gradsift.errors import GradsiftError
from gradsift.evaluate.retrain import TrainFn, run_retrains

__all__ = ["LOOResult", "leave_one_out", "loo_agreement"]


@dataclass
class LOOResult:
    """Mean (over test points) Pearson and Spearman, per-test values, and the arrays
    ``predicted`` / ``actual`` float64 ``[r, m]`` over the evaluated training ``rows``."""

    pearson: float
    spearman: float
    per_test_pearson: np.ndarray
    per_test_spearman: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    rows: np.ndarray


def loo_agreement(
    predicted: np.ndarray, actual: np.ndarray, rows: np.ndarray | None = None
) -> LOOResult:
    """Agreement of ``predicted [r, m]`` and ``actual [r, m]`` loss changes, per test column."""
    predicted, actual = np.asarray(predicted, np.float64), np.asarray(actual, np.float64)
    if predicted.shape != actual.shape or predicted.ndim != 2:
        raise GradsiftError(f"predicted {predicted.shape} and actual {actual.shape} must be [r, m]")
    p = np.array([pearsonr(predicted[:, t], actual[:, t])[0] for t in range(actual.shape[1])])
    s = np.array([spearmanr(predicted[:, t], actual[:, t])[0] for t in range(actual.shape[1])])
    rows = np.arange(len(actual)) if rows is None else rows
    return LOOResult(float(np.nanmean(p)), float(np.nanmean(s)), p, s, predicted, actual, rows)


def leave_one_out(
    scores: np.ndarray,
    train_fn: TrainFn,
    rows: np.ndarray | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
) -> LOOResult:
    """LOO agreement of ``scores [n, m]`` (pairwise influence). ``train_fn(keep, seed)``
    returns the retrained model's test **losses** ``[m]``; it is called once with every row
    (the base model) and once without each of ``rows`` (default: all ``n``)."""
    n = scores.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    everything = np.arange(n)
    subsets = [everything] + [np.delete(everything, i) for i in rows]
    losses = run_retrains(train_fn, subsets, [0] * len(subsets), cache_dir, workers, "loo")
    return loo_agreement(scores[rows] / n, losses[1:] - losses[0], rows)
