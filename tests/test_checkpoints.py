"""Tests for gradsift.checkpoints.CheckpointRecorder with a hand-written training loop."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from gradsift.checkpoints import Checkpoint, CheckpointRecorder
from gradsift.experiments.models import mlp


def _run(recorder: CheckpointRecorder, epochs: int = 6, steps_per_epoch: int = 3):
    """Train a tiny MLP with SGD + StepLR; return (model, {(epoch, step): (lr, state copy)})."""
    torch.manual_seed(0)
    model = mlp(4, 3, hidden=(5,), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    X, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    truth = {}
    step = 0
    for epoch in range(1, epochs + 1):
        for b in range(steps_per_epoch):
            xb, yb = X[b * 4 : (b + 1) * 4], y[b * 4 : (b + 1) * 4]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            step += 1
            truth[("step", step)] = (opt.param_groups[0]["lr"], copy.deepcopy(model.state_dict()))
            recorder.on_step_end(model, opt, epoch, step)
        truth[("epoch", epoch)] = (opt.param_groups[0]["lr"], copy.deepcopy(model.state_dict()))
        recorder.on_epoch_end(model, opt, epoch, step, {"val_accuracy": float(-((epoch - 4) ** 2))})
        sched.step()
    return model, truth


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_epochs_saved_with_lr() -> None:
    rec = CheckpointRecorder(epochs=[1, 3, 4, 6])
    _, truth = _run(rec)
    assert [c.epoch for c in rec.checkpoints] == [1, 3, 4, 6]
    assert [c.step for c in rec.checkpoints] == [3, 9, 12, 18]
    for c in rec.checkpoints:
        lr, state = truth[("epoch", c.epoch)]
        assert c.lr == pytest.approx(lr)
        assert _states_equal(c.state, state)
    # the scheduler actually changed the lr (0.5, 0.05, 0.05, 0.005)
    assert len({round(c.lr, 10) for c in rec.checkpoints}) == 3


def test_every_and_steps() -> None:
    rec = CheckpointRecorder(every=2)
    _run(rec)
    assert [c.epoch for c in rec.checkpoints] == [2, 4, 6]
    rec = CheckpointRecorder(every=None, steps=[2, 7])
    _, truth = _run(rec)
    assert [(c.epoch, c.step) for c in rec.checkpoints] == [(1, 2), (3, 7)]
    assert all(c.metrics == {} for c in rec.checkpoints)
    assert _states_equal(rec.checkpoints[1].state, truth[("step", 7)][1])


def test_step_and_epoch_at_same_point_merge() -> None:
    rec = CheckpointRecorder(epochs=[1], steps=[3])
    _run(rec, epochs=2)
    assert len(rec) == 1
    assert rec.checkpoints[0].step == 3 and "val_accuracy" in rec.checkpoints[0].metrics


def test_best_final_and_load_into_exact() -> None:
    rec = CheckpointRecorder(every=1)
    model, truth = _run(rec)
    best = rec.best("val_accuracy", "max")
    assert best.epoch == 4
    assert rec.best("val_accuracy", "min").epoch == 1
    assert rec.final().epoch == 6
    # saved tensors are clones: later training did not change them
    assert _states_equal(rec.checkpoints[0].state, truth[("epoch", 1)][1])
    out = CheckpointRecorder.load_into(model, best)
    assert out is model
    assert _states_equal(model.state_dict(), truth[("epoch", 4)][1])
    with pytest.raises(ValueError, match="no checkpoint has metric"):
        rec.best("loss")
    with pytest.raises(ValueError):
        CheckpointRecorder().final()


def test_params_subset() -> None:
    keys = ["3.weight", "3.bias"]  # the Linear head of mlp(hidden=(5,))
    rec = CheckpointRecorder(epochs=[2], params=keys)
    model, truth = _run(rec)
    ck = rec.checkpoints[0]
    assert list(ck.state) == keys
    before = copy.deepcopy(model.state_dict())
    CheckpointRecorder.load_into(model, ck)
    after = model.state_dict()
    for k in after:
        expected = truth[("epoch", 2)][1][k] if k in keys else before[k]
        assert torch.equal(after[k], expected)
    with pytest.raises(KeyError):
        _run(CheckpointRecorder(epochs=[1], params=["nope.weight"]))


def test_directory_roundtrip(tmp_path: Path) -> None:
    rec = CheckpointRecorder(epochs=[2, 5], directory=tmp_path / "ck")
    _run(rec)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["ckpt-epoch0002-step0000006.pt", "ckpt-epoch0005-step0000015.pt"]
    loaded = CheckpointRecorder.from_directory(tmp_path / "ck")
    assert len(loaded) == 2
    for a, b in zip(rec.checkpoints, loaded.checkpoints, strict=True):
        assert isinstance(b, Checkpoint)
        assert (a.epoch, a.step, a.lr, a.metrics) == (b.epoch, b.step, b.lr, b.metrics)
        assert _states_equal(a.state, b.state)
    with pytest.raises(FileNotFoundError):
        CheckpointRecorder.from_directory(tmp_path / "missing")


def test_bad_schedule() -> None:
    with pytest.raises(ValueError):
        CheckpointRecorder(epochs=[0])
    with pytest.raises(ValueError):
        CheckpointRecorder(every=0)
    with pytest.raises(ValueError):
        CheckpointRecorder(steps=[0])
