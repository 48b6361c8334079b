"""Tests for gradsift.evaluate.simulatability on constructed cases with known answers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import norm

from gradsift.evaluate.simulatability import (
    compare_selections,
    explanation_simulatability,
    knn_vote,
    label_vote,
    nearest_selection,
    random_selection,
    simulator_accuracy,
    wilson_interval,
)

LABELS = np.array([0, 0, 1, 1, 2, 2])


def test_shown_labels_equal_to_prediction_give_accuracy_one() -> None:
    shown = np.array([[0, 1], [2, 3], [4, 5]])
    acc = simulator_accuracy(shown, LABELS, np.array([0, 1, 2]))
    assert acc.accuracy == 1.0 and acc.correct == 3 and acc.n == 3 and acc.k == 2


def test_shown_labels_all_different_give_accuracy_zero() -> None:
    shown = np.array([[2, 3], [4, 5], [0, 1]])
    acc = simulator_accuracy(shown, LABELS, np.array([0, 1, 2]))
    assert acc.accuracy == 0.0 and acc.correct == 0


def test_mixed_case_by_hand_with_first_shown_tie_break() -> None:
    shown = np.array(
        [
            [0, 2, 4],  # labels 0,1,2: three-way tie -> first shown: 0
            [2, 3, 0],  # labels 1,1,0: majority 1
            [4, 0, 2],  # labels 2,0,1: tie -> first shown: 2
            [2, 0, 1],  # labels 1,0,0: majority 0 (the first shown loses)
        ]
    )
    np.testing.assert_array_equal(label_vote(shown, LABELS), [0, 1, 2, 0])
    # predictions agree on rows 0 and 2 only -> 2 / 4
    acc = simulator_accuracy(shown, LABELS, np.array([0, 0, 2, 1]))
    assert acc.correct == 2 and acc.accuracy == pytest.approx(0.5)


def test_padding_is_ignored_and_an_empty_row_is_a_miss() -> None:
    shown = np.array([[-1, 3, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(label_vote(shown, LABELS), [1, -1])
    acc = simulator_accuracy(shown, LABELS, np.array([1, 0]))
    assert acc.correct == 1


def test_knn_simulator_votes_over_the_nearest_shown_samples() -> None:
    X_train = np.array([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0]])
    X_test = np.array([[0.9], [10.2]])
    shown = np.array([[0, 1, 4, 5], [0, 1, 4, 5]])
    # 1-NN: nearest shown to 0.9 is row 1 (label 0); to 10.2 is row 4 (label 2)
    np.testing.assert_array_equal(knn_vote(shown, LABELS, X_train, X_test, 1), [0, 2])
    # 3-NN of 10.2 among shown: rows 4, 5 (label 2) and 1 (label 0) -> 2
    np.testing.assert_array_equal(knn_vote(shown, LABELS, X_train, X_test, 3), [0, 2])
    acc = simulator_accuracy(
        shown,
        LABELS,
        np.array([0, 1]),
        simulator="knn",
        train_features=X_train,
        test_features=X_test,
    )
    assert acc.correct == 1
    with pytest.raises(ValueError, match="features"):
        simulator_accuracy(shown, LABELS, np.array([0, 1]), simulator="knn")


def _wilson_by_inversion(correct: int, n: int, confidence: float) -> tuple[float, float]:
    """The set of p0 the score test does not reject, found on a fine grid."""
    z = norm.ppf(0.5 + confidence / 2)
    grid = np.linspace(0.0, 1.0, 200_001)
    keep = np.abs(correct / n - grid) <= z * np.sqrt(grid * (1 - grid) / n) + 1e-15
    return float(grid[keep].min()), float(grid[keep].max())


@pytest.mark.parametrize(("correct", "n"), [(0, 10), (3, 10), (10, 10), (37, 50), (420, 500)])
def test_wilson_interval_matches_the_inverted_score_test(correct: int, n: int) -> None:
    low, high = wilson_interval(correct, n, 0.95)
    ref_low, ref_high = _wilson_by_inversion(correct, n, 0.95)
    assert low == pytest.approx(ref_low, abs=2e-5)
    assert high == pytest.approx(ref_high, abs=2e-5)


def test_interval_contains_the_estimate_and_shrinks_with_n() -> None:
    widths = []
    for n in (10, 100, 1000):
        shown = np.zeros((n, 1), dtype=np.int64)  # label 0 shown everywhere
        pred = np.where(np.arange(n) % 10 < 7, 0, 1)  # 70% of predictions are 0
        acc = simulator_accuracy(shown, LABELS, pred)
        assert acc.accuracy == pytest.approx(0.7)
        assert acc.low <= acc.accuracy <= acc.high
        widths.append(acc.high - acc.low)
    assert widths[0] > widths[1] > widths[2]


def test_nearest_selection_matches_a_sort_of_all_distances() -> None:
    rng = np.random.default_rng(0)
    X_train, X_test = rng.normal(size=(50, 3)), rng.normal(size=(7, 3))
    got = nearest_selection(X_train, X_test, 5)
    d = np.linalg.norm(X_test[:, None, :] - X_train[None, :, :], axis=2)
    np.testing.assert_array_equal(got, np.argsort(d, axis=1)[:, :5])


def test_random_selection_is_distinct_seeded_and_in_range() -> None:
    a = random_selection(20, 4, 6, seed=3)
    assert a.shape == (4, 6) and a.min() >= 0 and a.max() < 20
    assert all(len(set(row)) == 6 for row in a)
    np.testing.assert_array_equal(a, random_selection(20, 4, 6, seed=3))


def test_compare_selections_truncates_to_each_k() -> None:
    helpful = np.array([[0, 2, 3], [2, 0, 1]])  # labels [0,1,1], [1,0,0]
    rows = compare_selections({"helpful": helpful}, LABELS, np.array([0, 1]), ks=(1, 3))
    by_k = {r["k"]: r["accuracy"] for r in rows}
    assert by_k == {1: 1.0, 3: 0.0}  # k=1: the first label; k=3: the majority flips both
    with pytest.raises(ValueError, match="fewer than k"):
        compare_selections({"helpful": helpful}, LABELS, np.array([0, 1]), ks=(4,))


def test_explanation_simulatability_reads_helpful_and_harmful() -> None:
    expl = SimpleNamespace(
        helpful_indices=np.array([[0, 1], [4, -1]]),
        harmful_indices=np.array([[2, 3], [0, 1]]),
    )
    out = explanation_simulatability(expl, LABELS, np.array([0, 2]))  # type: ignore[arg-type]
    assert out["helpful"].accuracy == 1.0 and out["harmful"].accuracy == 0.0
    assert set(out) == {"helpful", "harmful", "random"} and out["random"].k == 2


def test_explanation_simulatability_random_control_has_a_known_answer() -> None:
    # every training label is 1: any random pick votes 1, so the random control reproduces
    # exactly the predictions equal to 1 (3 of 5), whatever the seed
    labels = np.ones(40, dtype=np.int64)
    expl = SimpleNamespace(
        helpful_indices=np.zeros((5, 3), dtype=np.int64),
        harmful_indices=np.zeros((5, 3), dtype=np.int64),
    )
    pred = np.array([1, 0, 1, 2, 1])
    for seed in (0, 7):
        out = explanation_simulatability(expl, labels, pred, seed=seed)  # type: ignore[arg-type]
        assert out["random"].correct == 3 and out["random"].n == 5 and out["random"].k == 3
    # with mixed labels the control is the vote over random_selection with the same seed
    out = explanation_simulatability(expl, LABELS, pred, seed=4)  # type: ignore[arg-type]
    direct = simulator_accuracy(random_selection(6, 5, 3, seed=4), LABELS, pred)
    assert out["random"] == direct
