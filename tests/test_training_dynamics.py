"""AUM and forgetting against direct loops over the recorded checkpoints."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from gradsift.checkpoints import CheckpointRecorder
from gradsift.detect import DetectionContext, get_detector
from gradsift.detect.checkpoint_choice import choose_epoch
from gradsift.detect.metrics import detection_metrics
from gradsift.detect.oga import OGAConfig, OutlierGradientAnalysis
from gradsift.detect.training_dynamics import (
    forgetting_events,
    forgetting_scores,
    label_margins,
)
from gradsift.experiments.datasets import load_half_moons
from gradsift.experiments.models import mlp
from gradsift.experiments.training import TrainConfig, train_classifier
from gradsift.task import ClassificationTask

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def moons():
    data = load_half_moons(seed=0)
    model = mlp(2, 2, hidden=(16,), seed=0)
    recorder = CheckpointRecorder(every=1)
    train_classifier(
        model,
        data.train.X,
        data.train.y,
        TrainConfig(epochs=12, lr=1e-2, batch_size=32),
        val=(data.val.X, data.val.y),
        recorder=recorder,
        progress=False,
    )
    return data, model, recorder


def hand_margins(model, recorder, X, y, epochs=None):
    """Margins [K, n] by a plain loop: load each checkpoint, logits, per-sample max."""
    rows = []
    for ckpt in recorder.checkpoints:
        if epochs is not None and ckpt.epoch not in epochs:
            continue
        net = CheckpointRecorder.load_into(copy.deepcopy(model), ckpt).eval()
        with torch.no_grad():
            z = net(torch.as_tensor(X)).double().numpy()
        row = []
        for i, label in enumerate(y):
            others = [z[i, c] for c in range(z.shape[1]) if c != label]
            row.append(z[i, label] - max(others))
        rows.append(row)
    return np.array(rows)


def context(data, model, recorder):
    return DetectionContext(
        model=model,
        task=ClassificationTask(),
        data=(data.train.X, data.train.y),
        checkpoints=recorder,
    )


def test_aum_equals_a_direct_loop_over_checkpoints(moons):
    data, model, recorder = moons
    X, y = data.train.X, data.train.y
    rows = np.zeros((len(y), 1))  # only the row count is read
    ctx = context(data, model, recorder)
    margins = hand_margins(model, recorder, X, y)
    scores = get_detector("aum", window="all").fit_score(rows, context=ctx)
    np.testing.assert_allclose(scores, -margins.mean(axis=0), rtol=1e-6, atol=1e-6)
    first5 = get_detector("aum", window=5).fit_score(rows, context=ctx)
    np.testing.assert_allclose(first5, -margins[:5].mean(axis=0), rtol=1e-6, atol=1e-6)
    # early-stop window: epochs 1..the epoch choose_epoch picks from the recorded metrics
    stop = choose_epoch(
        val_accuracy=[c.metrics["val_accuracy"] for c in recorder.checkpoints],
        val_loss=[c.metrics["val_loss"] for c in recorder.checkpoints],
    )
    det = get_detector("aum")
    early = det.fit_score(rows, context=ctx)
    np.testing.assert_allclose(early, -margins[: stop.epoch].mean(axis=0), rtol=1e-6, atol=1e-6)
    assert det.settings()["epochs"] == list(range(1, stop.epoch + 1))
    assert stop.reason in det.settings()["why"]


def test_forgetting_counts_a_hand_made_sequence():
    # rows: epochs; columns: samples
    correct = np.array(
        [
            [1, 0, 1, 0],
            [0, 0, 1, 1],
            [1, 0, 0, 1],
            [0, 0, 1, 1],
        ],
        dtype=bool,
    )
    # sample 0: T F T F -> 2 events; 1: never learned; 2: T T F T -> 1; 3: F T T T -> 0
    np.testing.assert_array_equal(forgetting_events(correct), [2, 0, 1, 0])
    margins = np.where(correct, 1.0, -1.0) * np.array([1.0, 2.0, 3.0, 4.0])
    scores = forgetting_scores(margins)  # never-learned samples count K = 4
    np.testing.assert_array_equal(np.floor(scores), [2, 4, 1, 0])
    np.testing.assert_array_equal(np.floor(forgetting_scores(margins, "count")), [2, 0, 1, 0])
    # tie-break by the mean margin: lower mean margin = more suspicious
    tied = forgetting_scores(np.array([[1.0, 3.0, 2.0]]))
    assert np.all(np.floor(tied) == 0) and tied[0] > tied[2] > tied[1]


def test_forgetting_detector_equals_the_hand_loop(moons):
    data, model, recorder = moons
    X, y = data.train.X, data.train.y
    margins = hand_margins(model, recorder, X, y)
    scores = get_detector("forgetting", window="all").fit_score(
        np.zeros((len(y), 1)), context=context(data, model, recorder)
    )
    counts = np.array(
        [
            sum(margins[k - 1, i] > 0 >= margins[k, i] for k in range(1, len(margins)))
            for i in range(len(y))
        ]
    )
    never = ~(margins > 0).any(axis=0)
    counts[never] = len(margins)
    np.testing.assert_array_equal(np.floor(scores), counts)


def test_binary_logit_margins():
    z = torch.tensor([[2.0], [-1.0], [0.5]])
    y = torch.tensor([1, 1, 0])
    np.testing.assert_allclose(label_margins(z, y).numpy(), [2.0, -1.0, -0.5])
    z3 = torch.tensor([[1.0, 3.0, 2.0]])
    np.testing.assert_allclose(label_margins(z3, torch.tensor([2])).numpy(), [-1.0])


def test_through_oga_beside_l2(moons):
    data, model, recorder = moons
    config = OGAConfig(detectors=["aum", "forgetting", "l2"])
    out = OutlierGradientAnalysis(model, ClassificationTask(), config).run(
        (data.train.X, data.train.y), recorder
    )
    assert list(out.results) == ["aum", "forgetting", "l2"]
    settings = json.loads(json.dumps(out.results["forgetting"].settings))
    assert settings["name"] == "forgetting" and settings["never_learned"] == "max"
    margins = hand_margins(model, recorder, data.train.X, data.train.y)
    stop = choose_epoch(
        val_accuracy=[c.metrics["val_accuracy"] for c in recorder.checkpoints],
        val_loss=[c.metrics["val_loss"] for c in recorder.checkpoints],
    )
    np.testing.assert_allclose(
        out.results["aum"].scores, -margins[: stop.epoch].mean(axis=0), rtol=1e-6, atol=1e-6
    )
    auroc = detection_metrics(out.results["aum"].scores, data.train.flipped)["auroc"]
    assert auroc > 0.8  # 20 flipped moons; chance is 0.5


def test_a_clear_error_without_checkpoints(moons):
    data, model, _ = moons
    ctx = DetectionContext(
        model=model, task=ClassificationTask(), data=(data.train.X, data.train.y)
    )
    for name in ("aum", "forgetting"):
        with pytest.raises(ValueError, match="checkpoints="):
            get_detector(name).fit_score(np.zeros((len(data.train.y), 1)), context=ctx)
    config = OGAConfig(detectors=["aum"])
    with pytest.raises(ValueError, match="checkpoints="):
        OutlierGradientAnalysis(model, ClassificationTask(), config).run(
            (data.train.X, data.train.y)
        )
    with pytest.raises(ValueError, match="window"):
        get_detector("aum", window="best")
