"""Evaluators (gradsift.evaluate) against directly computed truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from gradsift.errors import GradsiftError
from gradsift.evaluate import (
    lds_from_outputs,
    leave_one_out,
    linear_datamodeling_score,
    run_retrains,
    subset_masks,
)

N, M_TEST = 40, 6
CONTRIB = np.random.default_rng(0).normal(size=(N, M_TEST))  # exact per-row contributions


def additive_outputs(keep: np.ndarray, seed: int) -> np.ndarray:
    """A 'model' whose test outputs are exactly additive in its training rows."""
    return CONTRIB[keep].sum(axis=0)


def ridge_losses(keep: np.ndarray, seed: int) -> np.ndarray:
    """Squared test errors of ridge regression (closed form) trained on ``keep``."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=N)
    Xt = rng.normal(size=(M_TEST, 3))
    yt = Xt @ np.array([1.0, -2.0, 0.5])
    A, b = X[keep], y[keep]
    w = np.linalg.solve(A.T @ A + 0.1 * np.eye(3), A.T @ b)
    return (Xt @ w - yt) ** 2


def test_lds_is_one_for_exact_additive_scores_and_matches_direct_spearman(tmp_path):
    res = linear_datamodeling_score(CONTRIB, additive_outputs, n_models=30, seed=2)
    assert res.score == pytest.approx(1.0)
    noisy = CONTRIB + np.random.default_rng(3).normal(scale=1.0, size=CONTRIB.shape)
    res = linear_datamodeling_score(noisy, additive_outputs, n_models=30, seed=2)
    masks = subset_masks(N, 30, 0.5, seed=2)
    assert np.array_equal(res.masks, masks) and masks.sum(1).tolist() == [N // 2] * 30
    direct = [
        spearmanr([noisy[m, t].sum() for m in masks], [CONTRIB[m, t].sum() for m in masks])[0]
        for t in range(M_TEST)
    ]
    assert np.allclose(res.per_test, direct)
    assert res.score == pytest.approx(np.mean(direct))
    assert 0.2 < res.score < 0.99


def test_retraining_resumes_from_cache_and_runs_in_processes(tmp_path):
    masks = subset_masks(N, 6, seed=4)
    subsets = [np.flatnonzero(m) for m in masks]
    first = run_retrains(additive_outputs, subsets, range(6), tmp_path, workers=2, name="x")
    assert len(list(tmp_path.glob("x_*.npy"))) == 6

    def broken(keep, seed):
        raise AssertionError("cached jobs must not rerun")

    again = run_retrains(broken, subsets, range(6), tmp_path, name="x")
    assert np.array_equal(first, again)
    assert np.allclose(first, np.stack([CONTRIB[s].sum(0) for s in subsets]))
    (tmp_path / "x_00002.npy").unlink()  # an interrupted run: only job 2 reruns
    calls = []

    def counting(keep, seed):
        calls.append(seed)
        return additive_outputs(keep, seed)

    run_retrains(counting, subsets, range(6), tmp_path, name="x")
    assert calls == [2]


def test_leave_one_out_against_direct_retraining():
    everything = np.arange(N)
    base = ridge_losses(everything, 0)
    actual = np.stack([ridge_losses(np.delete(everything, i), 0) - base for i in range(N)])
    res = leave_one_out(actual * N, ridge_losses)  # scores whose prediction is the truth
    assert res.pearson == pytest.approx(1.0) and res.spearman == pytest.approx(1.0)
    noisy = actual + np.random.default_rng(5).normal(scale=actual.std(), size=actual.shape)
    res = leave_one_out(noisy * N, ridge_losses, rows=np.arange(0, N, 2))
    direct = [pearsonr(noisy[::2, t], actual[::2, t])[0] for t in range(M_TEST)]
    assert res.pearson == pytest.approx(np.mean(direct))


def test_bad_shapes():
    with pytest.raises(GradsiftError, match="actual must be"):
        lds_from_outputs(CONTRIB, subset_masks(N, 3), np.zeros((2, M_TEST)))
    with pytest.raises(GradsiftError, match="alpha"):
        subset_masks(N, 3, alpha=1.0)
