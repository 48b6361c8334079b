"""Detectors vs independent ground truth: numpy norms, planted outliers, seeds, projection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.random_projection import johnson_lindenstrauss_min_dim

from gradsift.detect import (
    Detector,
    NotFittedError,
    available_detectors,
    get_detector,
    register,
)
from gradsift.detect import registry as det_registry


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray]:
    """300 N(0, I) inliers in D=8 plus 15 outliers at radius 10 in random directions."""
    rng = np.random.default_rng(0)
    n, n_out, d = 300, 15, 8
    X = rng.normal(size=(n, d))
    out = rng.choice(n, n_out, replace=False)
    dirs = rng.normal(size=(n_out, d))
    X[out] = 10.0 * dirs / np.linalg.norm(dirs, axis=1, keepdims=True) + 0.3 * rng.normal(
        size=(n_out, d)
    )
    y = np.zeros(n, dtype=bool)
    y[out] = True
    return X.astype(np.float32), y


# ----------------------------------------------------------------------- registry


def test_registry_lists_builtins() -> None:
    names = available_detectors()
    for name in ["l1", "l2", "loss", "random", "iforest", "ecod", "knn", "lof"]:
        assert name in names
        assert get_detector(name).name == name


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ValueError, match="available: .*iforest.*l2"):
        get_detector("no_such_detector")
    with pytest.raises(ValueError, match="no pyod model"):
        get_detector("pyod:no_such_model")


def test_pyod_by_module_or_class_name() -> None:
    assert get_detector("pyod:copod").model_cls.__name__ == "COPOD"
    assert get_detector("pyod:HBOS").model_cls.__name__ == "HBOS"
    assert get_detector("pyod:IForest").settings()["name"] == "pyod:iforest"


def test_register_custom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(det_registry, "_REGISTRY", dict(det_registry._REGISTRY))

    @register("first_col")
    class FirstCol(Detector):
        def _score(self, X, losses):
            return X[:, 0]

    X = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(get_detector("FIRST_COL").fit_score(X), [0.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="already registered"):
        register("first_col")(type("Other", (FirstCol,), {}))


# ----------------------------------------------------------------------- norms


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norms_match_numpy(dtype: type) -> None:
    X = np.random.default_rng(1).normal(size=(53, 11)).astype(dtype)
    Xd = X.astype(np.float64)
    for block_rows in (None, 7):
        l1 = get_detector("l1", block_rows=block_rows).fit_score(X)
        l2 = get_detector("l2", block_rows=block_rows).fit_score(X)
        assert l1.dtype == l2.dtype == np.float64 and l1.shape == (53,)
        np.testing.assert_allclose(l1, np.abs(Xd).sum(axis=1), rtol=1e-12)
        np.testing.assert_allclose(l2, np.linalg.norm(Xd, axis=1) ** 2, rtol=1e-12)


def test_norms_on_memmap(tmp_path) -> None:
    rng = np.random.default_rng(2)
    data = rng.normal(size=(101, 13)).astype(np.float32)
    mm = np.memmap(tmp_path / "g.f32", dtype=np.float32, mode="w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    ro = np.memmap(tmp_path / "g.f32", dtype=np.float32, mode="r", shape=data.shape)
    d64 = data.astype(np.float64)
    l2 = get_detector("l2", block_rows=10).fit_score(ro)
    np.testing.assert_allclose(l2, (d64**2).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(get_detector("l1").score(ro), np.abs(d64).sum(axis=1), rtol=1e-12)


def test_loss_detector() -> None:
    losses = np.array([0.5, 2.0, 0.1])
    det = get_detector("loss")
    assert not det.needs_gradients and det.additive
    np.testing.assert_array_equal(det.fit_score(None, losses), losses)
    np.testing.assert_array_equal(det.score(np.zeros((3, 2)), losses), losses)
    with pytest.raises(ValueError, match="needs per-sample losses"):
        det.fit_score(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="3 rows"):
        det.fit_score(np.zeros((3, 2)), np.ones(4))


def test_random_seeded() -> None:
    a = get_detector("random", seed=3).fit_score(None, np.zeros(50))
    b = get_detector("random", seed=3).fit_score(np.zeros((50, 2)))
    c = get_detector("random", seed=4).fit_score(np.zeros((50, 2)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() < 1.0


# ----------------------------------------------------------------------- fitted


@pytest.mark.parametrize("name", ["iforest", "ecod", "knn", "lof", "l2", "pyod:copod"])
def test_planted_outliers_found(name: str, planted) -> None:
    X, y = planted
    scores = get_detector(name).fit_score(X)
    assert scores.shape == (X.shape[0],) and scores.dtype == np.float64
    assert roc_auc_score(y, scores) > 0.97


def test_random_fails_planted_check(planted) -> None:
    X, y = planted
    for seed in range(3):
        assert roc_auc_score(y, get_detector("random", seed=seed).fit_score(X)) < 0.8


def test_iforest_seed_determinism(planted) -> None:
    X, _ = planted
    a = get_detector("iforest", seed=0, n_estimators=20).fit_score(X)
    b = get_detector("iforest", seed=0, n_estimators=20).fit_score(X)
    c = get_detector("iforest", seed=1, n_estimators=20).fit_score(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_iforest_matches_sklearn(planted) -> None:
    from sklearn.ensemble import IsolationForest

    X, _ = planted
    ref = -IsolationForest(n_estimators=20, random_state=5).fit(X).score_samples(X)
    det = get_detector("iforest", n_estimators=20, seed=5).fit(X)
    np.testing.assert_allclose(det.score(X), ref)


def test_knn_fit_score_is_in_sample(planted) -> None:
    """fit_score uses pyod's decision_scores_ (a sample is not its own neighbour)."""
    X, _ = planted
    det = get_detector("knn")
    in_sample = det.fit_score(X)
    np.testing.assert_allclose(in_sample, det.model_.decision_scores_)
    assert (det.score(X) <= in_sample + 1e-9).all()


@pytest.mark.parametrize("name", ["iforest", "knn"])
def test_score_before_fit_raises(name: str) -> None:
    X = np.zeros((5, 3))
    with pytest.raises(NotFittedError, match="not fitted"):
        get_detector(name).score(X)
    det = get_detector(name).fit(np.random.default_rng(0).normal(size=(20, 3)))
    with pytest.raises(ValueError, match="fitted on 3"):
        det.score(np.zeros((5, 4)))


def test_auto_projection_above_threshold() -> None:
    rng = np.random.default_rng(3)
    n, d = 100, 400
    X = rng.normal(size=(n, d)).astype(np.float32)
    det = get_detector("iforest", n_estimators=10, project_above=300, eps=0.5).fit(X)
    proj = det.settings()["projection"]
    expected = min(d, int(johnson_lindenstrauss_min_dim(n, eps=0.5)))
    assert expected < d
    assert proj["n_components"] == expected and proj["input_dim"] == d
    assert proj["kind"] == "sparse_random" and proj["seed"] == 0
    assert det.model_.n_features_in_ == expected
    assert det.score(X[:7]).shape == (7,)  # the same projection is reused
    json.dumps(det.settings())
    # at / below the threshold: no projection
    below = get_detector("iforest", n_estimators=10, project_above=400).fit(X)
    assert below.settings()["projection"] is None and below.model_.n_features_in_ == d
    # explicit n_components, pyod model
    knn = get_detector("knn", project_above=300, n_components=16).fit(X)
    assert knn.settings()["projection"]["n_components"] == 16
    assert knn.model_.decision_function(np.zeros((1, 16))).shape == (1,)


def test_default_projection_dimension() -> None:
    n, d = 40, 6000
    X = np.random.default_rng(4).normal(size=(n, d)).astype(np.float32)
    det = get_detector("iforest", n_estimators=5).fit(X)
    assert det.settings()["projection"]["n_components"] == johnson_lindenstrauss_min_dim(n, eps=0.1)
    assert det.settings()["project_above"] == 5000


def test_projection_is_seeded() -> None:
    X = np.random.default_rng(5).normal(size=(30, 50))
    kw = dict(project_above=10, n_components=8)
    a = get_detector("ecod", seed=1, **kw).fit_score(X)
    b = get_detector("ecod", seed=1, **kw).fit_score(X)
    c = get_detector("ecod", seed=2, **kw).fit_score(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_settings_json_serialisable(planted) -> None:
    X, _ = planted
    for name in available_detectors():
        det = get_detector(name)
        if det.needs_model:  # self-influence detectors: covered in test_influence_scores.py
            continue
        det.fit(X, np.ones(X.shape[0]))
        s = json.loads(json.dumps(det.settings()))
        assert s["name"] == name


# ----------------------------------------------------------------------- validation


def test_nan_rows_named() -> None:
    X = np.ones((20, 4), dtype=np.float32)
    X[17, 2] = np.nan
    X[3, 0] = np.inf
    for name in ["l2", "iforest"]:
        with pytest.raises(ValueError, match=r"2 row\(s\).*\[3, 17\]"):
            get_detector(name).fit_score(X)


@pytest.mark.parametrize(
    "X, msg",
    [
        (None, "got None"),
        (np.ones(5), "2-D"),
        (np.ones((0, 3)), "empty"),
        (np.ones((3, 0)), "empty"),
        (np.array([["a"]]), "real-valued"),
    ],
)
def test_invalid_gradients(X, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        get_detector("l1").fit_score(X)


def test_nan_losses_named() -> None:
    with pytest.raises(ValueError, match=r"\[1\]"):
        get_detector("loss").fit_score(None, np.array([0.0, np.nan]))
