"""Tests for gradsift.experiments.training: determinism, modes, recorder hook, input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradsift.checkpoints import CheckpointRecorder
from gradsift.experiments.datasets import load_half_moons
from gradsift.experiments.models import logistic_regression, mlp
from gradsift.experiments.training import (
    TrainConfig,
    accuracy,
    predict_proba,
    seed_everything,
    train_classifier,
)


@pytest.fixture(scope="module")
def moons():
    return load_half_moons(seed=0, flips_per_class=0)


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_bit_identical_different_seed_differs(moons) -> None:
    X, y = moons.train.X, moons.train.y
    models = []
    for seed in (0, 0, 1):
        m = mlp(2, 2, hidden=(16,), dropout=0.2, seed=0)  # same init, dropout exercised
        train_classifier(m, X, y, TrainConfig(epochs=3, batch_size=32, seed=seed), progress=False)
        models.append(m)
    assert _states_equal(models[0], models[1])
    assert not _states_equal(models[0], models[2])


def test_global_rng_untouched_and_eval_after(moons) -> None:
    m = mlp(2, 2, hidden=(8,), dropout=0.5, seed=0)
    torch.manual_seed(99)
    state = torch.random.get_rng_state()
    train_classifier(m, moons.train.X, moons.train.y, TrainConfig(epochs=1), progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not m.training


def test_learns_and_history(moons) -> None:
    m = mlp(2, 2, hidden=(32,), seed=0)
    cfg = TrainConfig(epochs=25, batch_size=32, lr=1e-2, seed=0)
    hist = train_classifier(
        m, moons.train.X, moons.train.y, cfg, val=(moons.val.X, moons.val.y), progress=False
    )
    assert hist.epochs == 25 and len(hist.train_loss) == 25 and len(hist.val_accuracy) == 25
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert hist.val_accuracy[-1] == accuracy(m, moons.val.X, moons.val.y)
    assert accuracy(m, moons.test.X, moons.test.y) > 0.9


def test_sgd_weight_decay_and_recorder(moons) -> None:
    m = logistic_regression(2, 2, seed=0)
    rec = CheckpointRecorder(every=2)
    cfg = TrainConfig(epochs=4, optimizer="sgd", lr=0.1, weight_decay=1e-3, batch_size=50)
    hist = train_classifier(
        m,
        moons.train.X,
        moons.train.y,
        cfg,
        val=(moons.val.X, moons.val.y),
        recorder=rec,
        progress=False,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    )
    assert [c.epoch for c in rec.checkpoints] == [2, 4]
    assert [c.step for c in rec.checkpoints] == [10, 20]  # 250 / 50 = 5 steps per epoch
    assert [c.lr for c in rec.checkpoints] == pytest.approx([0.1, 0.05])
    for c in rec.checkpoints:
        assert c.metrics["val_accuracy"] == hist.val_accuracy[c.epoch - 1]
        assert c.metrics["train_loss"] == hist.train_loss[c.epoch - 1]
    final = rec.final().state
    assert all(torch.equal(final[k], v) for k, v in m.state_dict().items())


def test_predict_proba_matches_softmax(moons) -> None:
    m = mlp(2, 2, hidden=(8,), dropout=0.5, seed=0)
    m.train()
    p = predict_proba(m, moons.test.X, batch_size=7)
    assert m.training, "mode restored"
    assert p.shape == (100, 2) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    m.eval()
    with torch.no_grad():
        ref = torch.softmax(m(torch.from_numpy(moons.test.X)), dim=1).numpy()
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6)


def test_bce_single_logit(moons) -> None:
    m = logistic_regression(2, 1, seed=0)
    train_classifier(
        m, moons.train.X, moons.train.y, TrainConfig(epochs=20, lr=5e-2), loss="bce", progress=False
    )
    p = predict_proba(m, moons.test.X)
    assert p.shape == (100, 2)
    assert accuracy(m, moons.test.X, moons.test.y) > 0.8


def test_seed_everything_repeatable() -> None:
    seed_everything(5)
    a = (np.random.rand(), torch.rand(1))
    seed_everything(5)
    b = (np.random.rand(), torch.rand(1))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.zeros((0, 2), np.float32), np.zeros(0, np.int64), "empty"),
        (np.array([[0.0, np.nan], [1.0, 1.0]], np.float32), np.array([0, 1]), "NaN"),
        (np.zeros((2, 2), np.float32), np.array([0, 2]), "lie in"),
        (np.zeros((2, 2), np.float32), np.array([0, -1]), "lie in"),
        (np.zeros((2, 2), np.float32), np.array([0, 1, 1]), "shape"),
    ],
)
def test_bad_inputs(X, y, match) -> None:
    m = logistic_regression(2, 2)
    with pytest.raises(ValueError, match=match):
        train_classifier(m, X, y, TrainConfig(epochs=1), progress=False)


def test_bad_config() -> None:
    with pytest.raises(ValueError):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError):
        TrainConfig(optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TrainConfig(lr=-1.0)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_validation_only_observes(moons, loss) -> None:
    """Evaluating on a validation split after each epoch must not change training: the
    weights equal those of the same run without ``val``; the recorded validation loss is
    the mean cross-entropy of the final model, recomputed here."""
    X, y = moons.train.X, moons.train.y
    val = (moons.val.X, moons.val.y)
    config = TrainConfig(epochs=4, batch_size=32, seed=0)
    n_out = 1 if loss == "bce" else 2
    plain, watched = (mlp(2, n_out, hidden=(16,), seed=0) for _ in range(2))
    train_classifier(plain, X, y, config, loss=loss, progress=False)
    history = train_classifier(watched, X, y, config, val=val, loss=loss, progress=False)
    assert _states_equal(plain, watched)
    p = predict_proba(watched, *val[:1]).astype(np.float64)
    expected = -np.log(p[np.arange(len(val[1])), val[1]]).mean()
    assert len(history.val_loss) == 4
    assert history.val_loss[-1] == pytest.approx(expected, rel=1e-5)
