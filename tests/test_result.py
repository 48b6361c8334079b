"""DetectionResult ranks/flags vs a direct argsort, budgets, CSV round-trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gradsift.detect import get_detector
from gradsift.detect.result import DetectionResult, budget_to_count


def _direct_rank(scores: np.ndarray) -> np.ndarray:
    order = np.lexsort((np.arange(len(scores)), -scores))  # by score desc, then index
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(len(scores))
    return rank


def test_rank_and_flags_match_argsort() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 10, size=200).astype(np.float64)  # many ties
    res = DetectionResult(scores, detector="toy", budget=0.1)
    expected = _direct_rank(scores)
    np.testing.assert_array_equal(res.rank, expected)
    assert res.rank.dtype == np.int64 and res.is_issue.dtype == bool
    assert res.n_flagged == 20 and res.is_issue.sum() == 20
    np.testing.assert_array_equal(res.is_issue, expected < 20)
    flagged = res.flagged_indices()
    np.testing.assert_array_equal(flagged, np.argsort(expected)[:20])
    assert scores[flagged].min() >= scores[~res.is_issue].max()


def test_ties_broken_by_index() -> None:
    res = DetectionResult(np.array([1.0, 3.0, 3.0, 0.0]), detector="toy", budget=2)
    np.testing.assert_array_equal(res.rank, [2, 0, 1, 3])
    np.testing.assert_array_equal(res.flagged_indices(), [1, 2])


def test_fraction_vs_count_budget() -> None:
    scores = np.random.default_rng(1).normal(size=50)
    frac = DetectionResult(scores, detector="toy", budget=0.1)
    count = frac.with_budget(5)
    assert frac.n_flagged == count.n_flagged == 5
    np.testing.assert_array_equal(frac.is_issue, count.is_issue)
    assert frac.budget == 0.1  # with_budget returns a new object
    assert frac.with_budget(0.3).n_flagged == 15
    assert frac.with_budget(50).is_issue.all()
    assert budget_to_count(0.001, 50) == 1 and budget_to_count(0.99, 10) == 10
    assert budget_to_count(np.int64(3), 10) == 3


@pytest.mark.parametrize(
    "budget, err",
    [
        (0.0, ValueError),
        (1.0, ValueError),
        (-0.1, ValueError),
        (float("nan"), ValueError),
        (0, ValueError),
        (51, ValueError),
        (True, TypeError),
        ("10%", TypeError),
    ],
)
def test_invalid_budget(budget, err) -> None:
    with pytest.raises(err, match="budget"):
        DetectionResult(np.zeros(50), detector="toy", budget=budget)


def test_invalid_scores() -> None:
    with pytest.raises(ValueError, match=r"\[2\]"):
        DetectionResult(np.array([0.0, 1.0, np.nan]), detector="toy")
    with pytest.raises(ValueError, match="1-D"):
        DetectionResult(np.zeros((2, 2)), detector="toy")


def test_frame_and_csv_round_trip(tmp_path) -> None:
    scores = np.random.default_rng(2).normal(size=30)
    res = DetectionResult(scores, detector="l2", settings={"name": "l2"}, budget=4)
    frame = res.to_frame()
    assert list(frame.columns) == ["index", "score", "rank", "is_issue", "detector"]
    res.to_csv(tmp_path / "res.csv")
    back = pd.read_csv(tmp_path / "res.csv")
    pd.testing.assert_frame_equal(back, frame)
    np.testing.assert_array_equal(back["score"].to_numpy(), scores)  # exact floats


def test_summary_json() -> None:
    res = DetectionResult(np.arange(10.0), detector="toy", budget=0.2)
    summary = json.loads(json.dumps(res.summary()))
    assert summary["n"] == 10 and summary["n_flagged"] == 2 and summary["budget"] == 0.2
    assert summary["score_quantiles"]["max"] == 9.0
    assert summary["score_quantiles"]["median"] == 4.5


def test_from_detector() -> None:
    X = np.random.default_rng(3).normal(size=(40, 6))
    res = DetectionResult.from_detector(get_detector("l2"), X, budget=3)
    np.testing.assert_allclose(res.scores, (X**2).sum(axis=1))
    assert res.detector == "l2" and res.settings == {"name": "l2"}
    np.testing.assert_array_equal(res.flagged_indices(), np.argsort(-(X**2).sum(axis=1))[:3])
    copod = DetectionResult.from_detector(get_detector("pyod:copod"), X)
    assert copod.detector == "pyod:copod" and copod.n_flagged == 4
