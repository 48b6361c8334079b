"""Tests for gradsift.detect.metrics against brute-force computations."""

from __future__ import annotations

import numpy as np
import pytest

from gradsift.detect.metrics import detection_metrics


def _brute_auroc(scores: np.ndarray, pos: np.ndarray) -> float:
    sp, sn = scores[pos][:, None], scores[~pos][None, :]
    return float(((sp > sn) + 0.5 * (sp == sn)).mean())


def _brute_ap(scores: np.ndarray, pos: np.ndarray) -> float:
    # no ties: AP = mean over positives of precision at that positive's rank
    order = np.argsort(-scores)
    hits = np.cumsum(pos[order])
    ranks = np.arange(1, len(scores) + 1)
    return float(np.mean((hits / ranks)[pos[order]]))


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 300))
    m = int(rng.integers(1, n // 2))
    flipped = rng.choice(n, size=m, replace=False)
    pos = np.zeros(n, bool)
    pos[flipped] = True
    scores = rng.normal(size=n) + 1.0 * pos  # informative but imperfect
    res = detection_metrics(scores, flipped)
    assert res["m"] == m and res["n"] == n
    assert res["auroc"] == pytest.approx(_brute_auroc(scores, pos))
    assert res["average_precision"] == pytest.approx(_brute_ap(scores, pos))
    top = sorted(range(n), key=lambda i: -scores[i])
    assert res["precision_at_m"] == pytest.approx(sum(pos[i] for i in top[:m]) / m)
    for key, frac in (("recall_at_10pct", 0.1), ("recall_at_20pct", 0.2)):
        k = int(np.ceil(round(frac * n, 9)))
        assert res[key] == pytest.approx(sum(pos[i] for i in top[:k]) / m)
    # boolean mask gives the same result
    assert detection_metrics(scores, pos) == res


def test_perfect_and_inverted() -> None:
    n, flipped = 100, np.arange(90, 100)
    scores = np.arange(n, dtype=float)
    res = detection_metrics(scores, flipped)
    assert res["auroc"] == 1.0 and res["average_precision"] == pytest.approx(1.0)
    assert res["precision_at_m"] == 1.0
    assert res["recall_at_10pct"] == 1.0 and res["recall_at_20pct"] == 1.0
    inv = detection_metrics(-scores, flipped)
    assert inv["auroc"] == 0.0 and inv["precision_at_m"] == 0.0


def test_ties_do_not_favour_index_order() -> None:
    # constant scores: a detector that found nothing must score like chance
    n, m = 50, 5
    res = detection_metrics(np.zeros(n), np.arange(m))  # flipped are the first indices
    assert res["auroc"] == 0.5
    assert res["precision_at_m"] == pytest.approx(m / n)
    assert res["recall_at_10pct"] == pytest.approx(0.1)
    assert res["recall_at_20pct"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("scores", "flipped", "match"),
    [
        (np.array([0.1, np.nan, 0.3]), [0], "NaN"),
        (np.arange(3.0), [], "no flipped"),
        (np.arange(3.0), [0, 1, 2], "every"),
        (np.arange(3.0), [3], "range|lie in"),
        (np.arange(3.0), [-1], "range|lie in"),
        (np.arange(3.0), [1, 1], "duplicate"),
        (np.ones((3, 2)), [0], "one-dimensional"),
        (np.arange(3.0), np.array([True, False]), "mask"),
    ],
)
def test_bad_inputs(scores, flipped, match) -> None:
    with pytest.raises(ValueError, match=match):
        detection_metrics(scores, np.asarray(flipped))
