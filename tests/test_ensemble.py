"""Checkpoint ensembles vs direct computations (TracIn self-influence, z-scored sums)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from gradsift.detect import Detector, ensemble_scores


@pytest.fixture(scope="module")
def checkpoints() -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(60, d)).astype(np.float32) for d in (5, 7, 3)]
    losses = [rng.random(60) for _ in grads]
    return grads, losses, [0.1, 0.05, 0.01]


def test_l2_sum_is_tracin_self_influence(checkpoints) -> None:
    grads, _, lrs = checkpoints
    scores, settings = ensemble_scores("l2", grads, None, lrs)
    direct = sum(
        lr * (g.astype(np.float64) ** 2).sum(axis=1) for g, lr in zip(grads, lrs, strict=True)
    )
    np.testing.assert_allclose(scores, direct, rtol=1e-12)
    assert settings["mode"] == "sum" and settings["standardised"] is False
    assert settings["weights"] == lrs and len(settings["checkpoints"]) == 3
    json.dumps(settings)


def test_l2_concat_equals_sum(checkpoints) -> None:
    grads, _, lrs = checkpoints
    summed, _ = ensemble_scores("l2", grads, None, lrs, mode="sum")
    concat, settings = ensemble_scores("l2", grads, None, lrs, mode="concat")
    np.testing.assert_allclose(concat, summed, rtol=1e-5)  # float32 concatenation
    assert settings["mode"] == "concat"


def test_l1_and_loss_are_raw_sums(checkpoints) -> None:
    grads, losses, lrs = checkpoints
    l1, _ = ensemble_scores("l1", grads, None, lrs)
    direct = sum(
        lr * np.abs(g.astype(np.float64)).sum(axis=1) for g, lr in zip(grads, lrs, strict=True)
    )
    np.testing.assert_allclose(l1, direct, rtol=1e-12)
    loss, _ = ensemble_scores("loss", [None] * 3, losses, lrs)
    np.testing.assert_allclose(loss, sum(lr * x for x, lr in zip(losses, lrs, strict=True)))


def _z(s: np.ndarray) -> np.ndarray:
    return (s - s.mean()) / s.std()


def test_non_additive_scores_are_zscored(checkpoints) -> None:
    grads, _, lrs = checkpoints
    scores, settings = ensemble_scores("iforest", grads, None, lrs, n_estimators=10, seed=2)
    direct = sum(
        lr * _z(-IsolationForest(n_estimators=10, random_state=2).fit(g).score_samples(g))
        for g, lr in zip(grads, lrs, strict=True)
    )
    np.testing.assert_allclose(scores, direct, rtol=1e-10, atol=1e-12)
    assert settings["standardised"] is True and settings["detector"] == "iforest"
    json.dumps(settings)


class _FirstColumn(Detector):
    """Non-additive toy detector: score = first column (scale differs per checkpoint)."""

    name = "first_column"

    def _score(self, X, losses):
        return X[:, 0]


def test_factory_and_constant_checkpoint(checkpoints) -> None:
    grads, _, lrs = checkpoints
    scaled = [grads[0] * 1000.0, grads[1], np.ones_like(grads[2])]  # last is constant
    scores, settings = ensemble_scores(_FirstColumn, scaled, None, lrs)
    direct = lrs[0] * _z(scaled[0][:, 0].astype(np.float64)) + lrs[1] * _z(
        scaled[1][:, 0].astype(np.float64)
    )
    np.testing.assert_allclose(scores, direct, rtol=1e-10)
    assert settings["detector"] == "first_column"
    with pytest.raises(TypeError, match="detector_kwargs"):
        ensemble_scores(_FirstColumn, scaled, None, lrs, seed=1)


def test_invalid_inputs(checkpoints) -> None:
    grads, losses, lrs = checkpoints
    with pytest.raises(ValueError, match="2 weights for 3"):
        ensemble_scores("l2", grads, None, lrs[:2])
    with pytest.raises(ValueError, match=">= 0"):
        ensemble_scores("l2", grads, None, [0.1, -0.1, 0.1])
    with pytest.raises(ValueError, match="mode"):
        ensemble_scores("l2", grads, None, lrs, mode="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="use mode='sum'"):
        ensemble_scores("loss", [None] * 3, losses, lrs, mode="concat")
    with pytest.raises(ValueError, match="different row counts"):
        ensemble_scores("l2", [grads[0], grads[1][:10]], None, lrs[:2], mode="concat")
    with pytest.raises(ValueError, match="expected 60"):
        ensemble_scores("l2", [grads[0], grads[1][:10]], None, lrs[:2])
