"""OGA-style label-free helpfulness scores against hand computations on tiny matrices."""

from __future__ import annotations

import numpy as np
import pytest

from gradsift.errors import GradsiftError
from gradsift.experiments.llm_outlier_scores import (
    broadcast_ranking,
    l2_distance_scores,
    oga_helpfulness,
)
from gradsift.experiments.llm_tasks import class_retrieval_metrics

# rows: norms by hand  L2: 5, 1, 3, 0   L1: 7, 1, 5, 0
G_TRAIN = np.array([[3.0, -4.0, 0.0], [0.0, 0.0, 1.0], [2.0, -2.0, 1.0], [0.0, 0.0, 0.0]])
G_TEST = np.array([[0.0, 0.0, 2.0], [3.0, 0.0, 0.0]])


def test_norm_scores_are_minus_hand_norms() -> None:
    scores, info = oga_helpfulness(G_TRAIN.astype(np.float32))
    # gradsift's l2 detector is the squared norm: same ranking as -‖g‖₂
    np.testing.assert_allclose(scores["oga-l2"], [-25.0, -1.0, -9.0, 0.0])
    np.testing.assert_allclose(scores["oga-l1"], [-7.0, -1.0, -5.0, 0.0])
    assert info["iforest"]["projection"] is None  # D = 3 is below the projection threshold


def test_iforest_score_is_minus_sklearn_anomaly_score() -> None:
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(0)
    G = rng.normal(size=(40, 5))
    G[7] *= 25.0  # a clear outlier must be ranked least helpful
    scores, _ = oga_helpfulness(G, seed=3)
    ref = IsolationForest(n_estimators=100, random_state=3).fit(G).score_samples(G)
    np.testing.assert_allclose(scores["oga-iforest"], ref)
    assert int(np.argmin(scores["oga-iforest"])) == 7


def test_iforest_projects_large_gradients() -> None:
    G = np.random.default_rng(1).normal(size=(20, 6000)).astype(np.float32)
    _, info = oga_helpfulness(G)
    proj = info["iforest"]["projection"]
    assert proj["input_dim"] == 6000 and 0 < proj["n_components"] <= 6000


def test_l2_distance_matches_hand_distances() -> None:
    # test 0 = (0,0,2): distances sqrt(9+16+4)=sqrt29, 1, sqrt(4+4+1)=3, 2
    # test 1 = (3,0,0): distances 4, sqrt(9+1)=sqrt10, sqrt(1+4+1)=sqrt6, 3
    want = -np.array([[np.sqrt(29), 1.0, 3.0, 2.0], [4.0, np.sqrt(10), np.sqrt(6), 3.0]])
    for block_rows in (1, 3, 64):
        got = l2_distance_scores(G_TEST, G_TRAIN.astype(np.float32), block_rows=block_rows)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_unit_distance_matches_hand_and_orders_like_cosine() -> None:
    got = l2_distance_scores(G_TEST, G_TRAIN, unit=True)
    # unit train rows: (.6,-.8,0), (0,0,1), (2,-2,1)/3, 0; unit test rows: (0,0,1), (1,0,0)
    want = -np.array(
        [
            [np.sqrt(2.0), 0.0, np.sqrt(4 / 9 + 4 / 9 + 4 / 9), 1.0],
            [np.sqrt(0.16 + 0.64), np.sqrt(2.0), np.sqrt(1 / 9 + 4 / 9 + 1 / 9), 1.0],
        ]
    )
    np.testing.assert_allclose(got, want, atol=1e-12)
    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(3, 8)), rng.normal(size=(10, 8))
    cos = (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (
        B / np.linalg.norm(B, axis=1, keepdims=True)
    ).T
    dist = l2_distance_scores(A, B, unit=True)
    np.testing.assert_array_equal(np.argsort(-dist, axis=1), np.argsort(-cos, axis=1))


def test_unconditioned_ranking_has_chance_metrics_on_balanced_classes() -> None:
    """An identity, not a threshold: AUC averages to 0.5 and recall@class-size to 1/C."""
    rng = np.random.default_rng(4)
    train_class = np.repeat(np.arange(3), 5)
    test_class = np.repeat(np.arange(3), 2)
    h = rng.normal(size=15)
    m = class_retrieval_metrics(broadcast_ranking(h, 6), train_class, test_class, k=5)
    assert m["auc"] == pytest.approx(0.5, abs=1e-12)
    assert m["recall"] == pytest.approx(1 / 3, abs=1e-12)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(GradsiftError):
        l2_distance_scores(G_TEST[:, :2], G_TRAIN)
    with pytest.raises(GradsiftError):
        oga_helpfulness(np.zeros((0, 3)))
