"""The linear datamodeling score (LDS; METHODS.md, "Ground truth and metrics").

Train ``M`` models on seeded random ``α``-fraction subsets ``S_j`` of the training data.
For each test point ``t``, LDS is the Spearman correlation over the subsets between the
*predicted* ``Σ_{i∈S_j} score(i, t)`` and the *actual* output of model ``j`` on ``t``,
averaged over test points. Scores follow the pairwise convention (positive = helpful),
so the actual output must be one that helpful samples raise (e.g. ``−loss`` or the
correct-class margin).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from gradsift.errors import GradsiftError
from gradsift.evaluate.retrain import TrainFn, run_retrains

__all__ = [
    "LDSResult",
    "linear_datamodeling_score",
    "lds_from_outputs",
    "subset_indices",
    "subset_masks",
]


def subset_indices(
    n_train: int, n_models: int, alpha: float = 0.5, seed: int = 0
) -> list[np.ndarray]:
    """The ``n_models`` seeded random subsets of :func:`subset_masks` as int64 row arrays
    ``[⌊α·n⌋]`` (at least 1 row) **in draw order** (``numpy.random.default_rng(seed)``, one
    ``choice`` without replacement per subset)."""
    if not 0 < alpha < 1:
        raise GradsiftError(f"alpha must lie in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    size = max(1, int(alpha * n_train))
    return [rng.choice(n_train, size, replace=False).astype(np.int64) for _ in range(n_models)]


def subset_masks(n_train: int, n_models: int, alpha: float = 0.5, seed: int = 0) -> np.ndarray:
    """``bool [M, n]``: row ``j`` keeps the rows of subset ``j`` of :func:`subset_indices`."""
    masks = np.zeros((n_models, n_train), dtype=bool)
    for j, rows in enumerate(subset_indices(n_train, n_models, alpha, seed)):
        masks[j, rows] = True
    return masks


@dataclass
class LDSResult:
    """Attributes: ``score`` (mean LDS), ``per_test`` float64 ``[m]``, ``predicted`` and
    ``actual`` float64 ``[M, m]``, ``masks`` bool ``[M, n]``."""

    score: float
    per_test: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    masks: np.ndarray


def _spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b``."""
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    den = np.sqrt((ra**2).sum(0) * (rb**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(0) / den, np.nan)


def lds_from_outputs(scores: np.ndarray, masks: np.ndarray, actual: np.ndarray) -> LDSResult:
    """LDS of ``scores [n, m]`` given the subset ``masks [M, n]`` and the retrained
    models' ``actual`` outputs ``[M, m]`` (test points with constant outputs are NaN and
    left out of the mean)."""
    scores, actual = np.asarray(scores, np.float64), np.asarray(actual, np.float64)
    if scores.ndim != 2 or masks.shape[1] != scores.shape[0]:
        raise GradsiftError(
            f"scores [n, m] and masks [M, n] disagree: {scores.shape}, {masks.shape}"
        )
    if actual.shape != (masks.shape[0], scores.shape[1]):
        raise GradsiftError(
            f"actual must be [{masks.shape[0]}, {scores.shape[1]}], got {actual.shape}"
        )
    predicted = masks.astype(np.float64) @ scores
    per_test = _spearman_columns(predicted, actual)
    ok = np.isfinite(per_test)
    score = float(per_test[ok].mean()) if ok.any() else float("nan")
    return LDSResult(score, per_test, predicted, actual, masks)


def linear_datamodeling_score(
    scores: np.ndarray,
    train_fn: TrainFn,
    n_models: int = 50,
    alpha: float = 0.5,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
) -> LDSResult:
    """Retrain on ``n_models`` seeded ``alpha``-subsets with ``train_fn(keep, seed) ->
    outputs [m]`` (resumable via ``cache_dir``, parallel over ``workers`` processes; see
    :func:`gradsift.evaluate.retrain.run_retrains`) and score ``scores [n, m]``."""
    masks = subset_masks(scores.shape[0], n_models, alpha, seed)
    subsets = [np.flatnonzero(m) for m in masks]
    actual = run_retrains(
        train_fn, subsets, [seed * 100_003 + j for j in range(n_models)], cache_dir, workers, "lds"
    )
    return lds_from_outputs(scores, masks, actual)
