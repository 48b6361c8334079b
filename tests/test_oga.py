"""The OGA pipeline against known flipped labels, and checkpoint selection."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from gradsift.checkpoints import CheckpointRecorder
from gradsift.config import DEFAULT_DAMPING
from gradsift.detect import DetectionContext, get_detector
from gradsift.detect.ensemble import zscore
from gradsift.detect.metrics import detection_metrics
from gradsift.detect.oga import OGAConfig, OutlierGradientAnalysis, select_checkpoints
from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import load_half_moons
from gradsift.experiments.models import mlp
from gradsift.experiments.training import TrainConfig, train_classifier
from gradsift.grads.extract import compute_gradients
from gradsift.influence import InfluenceScorer
from gradsift.task import ClassificationTask


@pytest.fixture(scope="module")
def moons():
    data = load_half_moons(seed=0)
    model = mlp(2, 2, hidden=(32,), seed=0)
    recorder = CheckpointRecorder(every=1)
    train_classifier(
        model,
        data.train.X,
        data.train.y,
        TrainConfig(epochs=40, lr=1e-2, batch_size=32),
        val=(data.val.X, data.val.y),
        recorder=recorder,
        progress=False,
    )
    return data, model, recorder


def test_detectors_find_the_flipped_moons_and_random_does_not(moons):
    data, model, recorder = moons
    config = OGAConfig(detectors=("l2", "iforest", "knn", "random"), budget=20)
    out = OutlierGradientAnalysis(model, ClassificationTask(), config).run(
        (data.train.X, data.train.y), recorder
    )
    auroc = {
        k: detection_metrics(r.scores, data.train.flipped)["auroc"] for k, r in out.results.items()
    }
    # 20 flipped of 250: gradient norms separate them (measured 0.99+); chance is 0.5
    assert auroc["l2"] > 0.9 and auroc["knn"] > 0.85
    assert abs(auroc["random"] - 0.5) < 0.2
    assert out.results["l2"].is_issue.sum() == 20
    assert out.checkpoints[0]["epoch"] == recorder.best().epoch


def test_l2_scores_equal_squared_gradient_norms_from_autograd(moons):
    data, model, _ = moons
    out = OutlierGradientAnalysis(model, ClassificationTask(), OGAConfig(detectors=("l2",))).run(
        (data.train.X[:15], data.train.y[:15])
    )
    expected = []
    for x, y in zip(torch.tensor(data.train.X[:15]), torch.tensor(data.train.y[:15]), strict=True):
        loss = torch.nn.functional.cross_entropy(model(x[None]), y[None])
        gs = torch.autograd.grad(loss, list(model[-1].parameters()))
        expected.append(sum(g.pow(2).sum() for g in gs).item())
    assert np.allclose(out.results["l2"].scores, expected, rtol=1e-4)


def test_ensemble_l2_is_tracin_self_influence(moons):
    data, model, recorder = moons
    config = OGAConfig(detectors=("l2",), checkpoint=[5, 10, 20])
    oga = OutlierGradientAnalysis(model, ClassificationTask(), config)
    out = oga.run((data.train.X, data.train.y), recorder)
    ckpts = select_checkpoints(recorder, [5, 10, 20])
    grads = oga.gradients((data.train.X, data.train.y), ckpts)
    expected = sum(
        c.lr * (g.astype(np.float64) ** 2).sum(1) for c, (g, _) in zip(ckpts, grads, strict=True)
    )
    assert np.allclose(out.results["l2"].scores, expected, rtol=1e-5)


def test_checkpoint_selection(moons):
    _, _, recorder = moons
    assert select_checkpoints(recorder, "final")[0].epoch == 40
    assert [c.epoch for c in select_checkpoints(recorder, "ensemble", 3)] == [14, 27, 40]
    with pytest.raises(GradsiftError, match="no checkpoint saved at epochs"):
        select_checkpoints(recorder, [99])
    with pytest.raises(ValueError, match="unknown detector"):
        OutlierGradientAnalysis(mlp(2, 2), ClassificationTask(), OGAConfig(detectors=("nope",)))


def test_self_influence_detectors_run_through_oga_like_any_other(moons):
    """OGA hands every detector the context (the model at the chosen checkpoint, the
    task, the data, the recorder, weight decay); each self-influence score equals the
    detector fitted directly with that context, and the scorer's self-influence."""
    data, model, recorder = moons
    train = (data.train.X, data.train.y)
    task, wd = ClassificationTask(), 1e-3
    names = ("l2", "self-if-exact", "self-datainf", "self-tracin")
    config = OGAConfig(detectors=names, weight_decay=wd)
    out = OutlierGradientAnalysis(model, task, config).run(train, recorder)

    best = recorder.best()
    at_best = CheckpointRecorder.load_into(copy.deepcopy(model), best).eval()
    G, losses = compute_gradients(at_best, task, train)
    ctx = DetectionContext(
        G, losses, model=at_best, task=task, data=train, checkpoints=recorder, weight_decay=wd
    )
    for name in names:
        direct = get_detector(name).fit_score(context=ctx)
        np.testing.assert_allclose(out.results[name].scores, direct, rtol=1e-10, err_msg=name)
    tensors = (torch.as_tensor(data.train.X), torch.as_tensor(data.train.y))
    exact = InfluenceScorer(
        at_best, task, "if-exact", damping=DEFAULT_DAMPING, weight_decay=wd, tracked="task"
    )
    np.testing.assert_allclose(
        out.results["self-if-exact"].scores, exact.fit(tensors).self_influence(tensors), rtol=1e-4
    )
    tracin = InfluenceScorer(model, task, "tracin", checkpoints=recorder)
    np.testing.assert_allclose(
        out.results["self-tracin"].scores, tracin.self_influence(tensors), rtol=1e-5
    )


def test_self_influence_in_a_checkpoint_ensemble_uses_each_checkpoint_model(moons):
    data, model, recorder = moons
    train = (data.train.X, data.train.y)
    task = ClassificationTask()
    config = OGAConfig(detectors=("self-if-exact",), checkpoint=[10, 20])
    out = OutlierGradientAnalysis(model, task, config).run(train, recorder)
    tensors = (torch.as_tensor(data.train.X), torch.as_tensor(data.train.y))
    expected = 0.0
    for ckpt in select_checkpoints(recorder, [10, 20]):
        m = CheckpointRecorder.load_into(copy.deepcopy(model), ckpt).eval()
        scorer = InfluenceScorer(m, task, "if-exact", damping=DEFAULT_DAMPING, tracked="task").fit(
            tensors
        )
        expected = expected + ckpt.lr * zscore(scorer.self_influence(tensors))
    np.testing.assert_allclose(out.results["self-if-exact"].scores, expected, atol=1e-4)
    with pytest.raises(ValueError, match="mode='sum'"):
        OutlierGradientAnalysis(
            model, task, dataclasses.replace(config, ensemble_mode="concat")
        ).run(train, recorder)
