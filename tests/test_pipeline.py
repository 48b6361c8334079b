"""The shared pipeline (load → build → train → OGA) and the one parser each for tracked / budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gradsift.checkpoints import CheckpointRecorder
from gradsift.config import parse_budget
from gradsift.detect.oga import OGAConfig, OutlierGradientAnalysis
from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import load_digits, load_half_moons, load_with_noise
from gradsift.experiments.detect_run import detect_user_model
from gradsift.experiments.models import logistic_regression
from gradsift.experiments.pipeline import (
    BuiltinModel,
    builtin_setup,
    load_and_build,
    train_and_rank,
)
from gradsift.experiments.training import TrainConfig, train_classifier
from gradsift.factory import load_factory
from gradsift.task import ClassificationTask, parse_tracked

FACTORY = Path(__file__).parent / "fixtures" / "user_factory.py"


def _loop_scores(model: torch.nn.Module, X, y, params: list[torch.nn.Parameter]):
    """Per-sample ``(squared gradient norm over params, loss)`` by one backward pass each."""
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    norms, losses = [], []
    for i in range(len(y)):
        loss = torch.nn.functional.cross_entropy(model(X[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norms.append(sum(float((g.double() ** 2).sum()) for g in grads))
        losses.append(float(loss.detach()))
    return np.array(norms), np.array(losses)


def test_parse_tracked() -> None:
    assert parse_tracked("all") == "all"
    assert parse_tracked(" last_linear ") == "last_linear"
    assert parse_tracked("lora") == "lora"
    assert parse_tracked("linear") == "linear"  # every nn.Linear of a Hugging Face task
    assert parse_tracked("fc1") == ["fc1"]
    assert parse_tracked("0, 2,") == ["0", "2"]
    with pytest.raises(ValueError, match="alone"):
        parse_tracked("all,fc1")
    with pytest.raises(ValueError, match="names no"):
        parse_tracked(" , ")


def test_parse_budget() -> None:
    assert parse_budget(0.1) == 0.1 and isinstance(parse_budget(0.1), float)
    assert parse_budget(12.0) == 12 and isinstance(parse_budget(12.0), int)
    assert parse_budget(1.0) == 1 and isinstance(parse_budget(1.0), int)


def test_with_tracked_copies_the_task() -> None:
    task = ClassificationTask()
    other = task.with_tracked(["0"])
    assert task.tracked == "last_linear" and other.tracked == ["0"]
    assert type(other) is ClassificationTask
    setup = load_factory(f"{FACTORY}:make")
    assert setup.with_tracked(None) is setup
    changed = setup.with_tracked("all")
    assert changed.task.tracked == "all" and setup.task.tracked == "last_linear"
    assert changed.model is setup.model


def test_load_with_noise_matches_the_loader() -> None:
    got = load_with_noise("Digits", 0.2, "asymmetric", seed=3)
    want = load_digits(noise=0.2, noise_kind="asymmetric", seed=3)
    assert np.array_equal(got.train.X, want.train.X)
    assert np.array_equal(got.train.y, want.train.y)
    assert np.array_equal(got.train.flipped, want.train.flipped)
    moons = load_with_noise("half-moons", 0.0, seed=1)
    assert np.array_equal(moons.train.y, load_half_moons(seed=1).train.y)
    with pytest.raises(GradsiftError, match="fixed label noise"):
        load_with_noise("half_moons", 0.1)
    with pytest.raises(GradsiftError, match="unknown data set"):
        load_with_noise("nope")


def test_train_and_rank_equals_training_then_oga_by_hand() -> None:
    torch.set_num_threads(1)
    data, model = load_and_build("digits", "logreg", seed=2, noise=0.2)
    config = TrainConfig(epochs=4, seed=2)
    oga = {
        "best": OGAConfig(detectors=("l2", "loss"), checkpoint="best", seed=2),
        "final": OGAConfig(detectors=("l2",), checkpoint="final", seed=2),
    }
    train = (data.train.X, data.train.y)
    run = train_and_rank(model, train, config, oga, val=(data.val.X, data.val.y), progress=False)

    # ground truth: plain training with a recorder, then the best checkpoint's gradients
    ref = logistic_regression(64, 10, seed=2)
    recorder = CheckpointRecorder(every=1)
    train_classifier(
        ref, *train, config, val=(data.val.X, data.val.y), recorder=recorder, progress=False
    )
    for a, b in zip(run.model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    best = recorder.best()
    at_best = CheckpointRecorder.load_into(logistic_regression(64, 10, seed=2), best).eval()
    norms, losses = _loop_scores(at_best, *train, list(at_best.parameters()))
    assert run.oga["best"].checkpoints[0]["epoch"] == best.epoch
    np.testing.assert_allclose(run.oga["best"].results["l2"].scores, norms, rtol=1e-4)
    np.testing.assert_allclose(run.oga["best"].results["loss"].scores, losses, rtol=1e-4)
    direct = OutlierGradientAnalysis(ref, ClassificationTask(), oga["final"]).run(train, recorder)
    assert np.array_equal(run.oga["final"].results["l2"].scores, direct.results["l2"].scores)
    assert set(run.timings) == {"train", "oga best", "oga final"}


def test_builtin_setup_tracks_what_it_is_told(tmp_path: Path) -> None:
    spec = BuiltinModel("digits", "mlp", str(tmp_path / "w.pt"), epochs=1, split="val")
    first = builtin_setup(spec)
    again = builtin_setup(spec, tracked="all")  # weights from the file written by the first
    assert first.task.tracked == "last_linear" and again.task.tracked == "all"
    for a, b in zip(first.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert len(first.dataset[0]) == len(load_digits().val)
    with pytest.raises(GradsiftError, match="split"):
        builtin_setup(BuiltinModel(split="dev"))


def test_detect_user_model_honours_tracked() -> None:
    last = detect_user_model(f"{FACTORY}:make", OGAConfig(detectors=("l2",), budget=6))
    every = detect_user_model(f"{FACTORY}:make", OGAConfig(detectors=("l2",), budget=6), "all")
    setup = load_factory(f"{FACTORY}:make")
    want, _ = _loop_scores(setup.model, *setup.dataset.tensors, list(setup.model.parameters()))
    np.testing.assert_allclose(every.oga.results["l2"].scores, want, rtol=1e-4)
    assert not np.allclose(last.oga.results["l2"].scores, want)
    assert every.flagged() == {"l2": 6} and list(every.most_suspicious(3).index) == list(
        np.argsort(-want, kind="stable")[:3]
    )
