"""Choosing the early-stopping epoch from noisy validation curves with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gradsift.detect.checkpoint_choice import DEFAULT_RULE, RULES, choose_epoch, smoothed
from gradsift.experiments.training import History


def direct_moving_average(values, width):
    half = width // 2
    return [
        float(np.mean(values[max(0, i - half) : min(len(values), i + half + 1)]))
        for i in range(len(values))
    ]


def test_smoothed_equals_a_direct_loop():
    values = np.random.default_rng(0).random(13)
    for width in (1, 3, 5, 7):
        np.testing.assert_allclose(smoothed(values, width), direct_moving_average(values, width))
    with pytest.raises(ValueError, match="odd"):
        smoothed(values, 4)


def test_a_flat_tied_curve_does_not_pick_epoch_1():
    flat = [0.8] * 10
    assert choose_epoch(val_accuracy=flat, rule="max-accuracy").epoch == 1  # the old rule
    choice = choose_epoch(val_accuracy=flat, rule="smoothed-accuracy")
    assert choice.epoch == 10  # every epoch tied: the latest
    assert "later epoch kept on ties" in choice.reason


def test_smoothed_accuracy_ignores_a_lone_early_spike():
    acc = [0.5, 0.9, 0.5, 0.6, 0.7, 0.8, 0.85, 0.86, 0.86, 0.86, 0.86, 0.86, 0.8, 0.7, 0.6]
    avg = direct_moving_average(acc, 5)
    best = max(avg)
    expected = max(i for i, v in enumerate(avg) if v >= best - 1e-9) + 1
    choice = choose_epoch(val_accuracy=acc, rule="smoothed-accuracy")
    assert choice.epoch == expected and expected > 5
    assert choose_epoch(val_accuracy=acc, rule="max-accuracy").epoch == 2
    assert choice.reason.startswith(f"epoch {expected}: highest 5-epoch smoothed")


def test_min_loss_finds_a_clear_minimum_and_says_why():
    epochs = np.arange(1, 21)
    loss = (epochs - 7.0) ** 2 / 10 + 0.4
    acc = np.full(20, 0.75)
    choice = choose_epoch(val_accuracy=acc, val_loss=loss, rule="min-loss")
    assert (choice.epoch, choice.epochs, choice.rule) == (7, (7,), "min-loss")
    assert choice.reason.startswith("epoch 7: lowest noisy-validation loss (0.400)")
    assert "accuracy plateau 1–20" in choice.reason


def test_min_loss_without_a_loss_curve_falls_back_and_says_so():
    acc = [0.6, 0.7, 0.72, 0.71, 0.7]
    choice = choose_epoch(val_accuracy=acc, rule="min-loss")
    assert choice.rule == "smoothed-accuracy"
    assert "no validation loss recorded" in choice.reason
    assert choice.epoch == choose_epoch(val_accuracy=acc, rule="smoothed-accuracy").epoch


def test_window_is_centred_on_the_chosen_epoch_and_clipped_at_the_ends():
    loss = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])  # minimum at epoch 1
    acc = np.full(6, 0.7)
    choice = choose_epoch(val_accuracy=acc, val_loss=loss, rule="window")
    assert (choice.epoch, choice.epochs) == (1, (1, 2, 3))
    loss = np.abs(np.arange(1, 11) - 5.0)  # minimum at epoch 5
    choice = choose_epoch(val_accuracy=np.full(10, 0.7), val_loss=loss, rule="window")
    assert (choice.epoch, choice.epochs) == (5, (3, 4, 5, 6, 7))
    assert choice.reason.startswith("epochs 3–7 around epoch 5")


def test_history_input_and_json_ready_output():
    history = History(train_loss=[1.0, 0.8, 0.7], val_accuracy=[0.5, 0.6, 0.6], epochs=3)
    history.val_loss = [0.9, 0.7, 0.8]  # what a History that records the loss carries
    choice = choose_epoch(history)
    assert DEFAULT_RULE in RULES and choice.rule in RULES
    out = json.loads(json.dumps(choice.to_dict()))
    assert set(out) == {"epoch", "epochs", "rule", "reason"} and out["epoch"] in (1, 2, 3)
    assert choose_epoch(history, rule="min-loss").epoch == 2


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown checkpoint rule"):
        choose_epoch(val_accuracy=[0.5], rule="best")
    with pytest.raises(ValueError, match="validation accuracy"):
        choose_epoch(val_accuracy=[])
    with pytest.raises(ValueError, match="epochs"):
        choose_epoch(val_accuracy=[0.5, 0.6], val_loss=[1.0])


def test_detect_table_takes_gradients_over_the_chosen_window(one_thread):
    """The detect path retrains for the window's last epoch and sums the L2 scores of the
    window's checkpoints; both are recomputed here from an independent training run."""
    from sklearn.datasets import load_digits

    from gradsift.detect.oga import OGAConfig
    from gradsift.experiments.datasets import from_arrays
    from gradsift.experiments.models import mlp
    from gradsift.experiments.pipeline import train_and_rank
    from gradsift.experiments.tabular import Table, detect_table, standardized
    from gradsift.experiments.training import TrainConfig, train_classifier

    X, y = load_digits(return_X_y=True)
    X, y = X[:400].astype(np.float32), y[:400].astype(np.int64)
    y[::7] = (y[::7] + 3) % 10  # label noise, so the validation curve is noisy
    table = Table(X, y, [f"f{i}" for i in range(X.shape[1])])
    train = TrainConfig(epochs=12, seed=3)
    got = detect_table(table, "mlp", train, OGAConfig(detectors=["l2"]), hidden=(32,))

    std = standardized(table)
    split = from_arrays(std.X, std.y, val_fraction=0.2, seed=3, n_classes=10)
    history = train_classifier(
        mlp(64, 10, hidden=(32,), seed=3),
        split.train.X,
        split.train.y,
        train,
        val=(split.val.X, split.val.y),
    )
    assert len(history.val_loss) == 12
    choice = choose_epoch(history)
    assert got.info["checkpoint_choice"] == json.loads(json.dumps(choice.to_dict()))
    assert [c["epoch"] for c in got.oga.checkpoints] == list(choice.epochs)
    final = TrainConfig(**{**train.__dict__, "epochs": max(choice.epochs)})
    single = {
        e: train_and_rank(
            mlp(64, 10, hidden=(32,), seed=3),
            (std.X, std.y),
            final,
            {"l2": OGAConfig(detectors=["l2"], checkpoint=[e])},
            progress=False,
        )
        .oga["l2"]
        .results["l2"]
        .scores
        for e in choice.epochs
    }
    # constant learning rate: the window's score is η · Σ_k (l2 score at epoch k)
    expected = train.lr * np.sum(list(single.values()), axis=0)
    np.testing.assert_allclose(got.oga.results["l2"].scores, expected, rtol=1e-5)
