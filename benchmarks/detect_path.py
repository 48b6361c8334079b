"""The ``gradsift detect`` path (noisy validation only) against the clean-validation path,
AUM / forgetting and cleanlab-CV: detection of known flipped labels, and wall time.

Settings: MNIST 8k training rows with 20% symmetric and 20% class-pair noise, and sklearn
digits with 20% symmetric noise; 3 seeds each. The recipe is the detect path's: per-column
z-scored features, MLP with one hidden layer of 128, Adam lr 1e-3, batch 64, 50 epochs,
one torch thread. Per seed:

- **user path** (what ``gradsift detect`` can do, noisy labels only): split 20% of the
  user's rows off as a *noisy* validation split, train 50 epochs on the other 80% with a
  checkpoint per epoch (noisy-validation accuracy and loss per epoch), choose the epoch
  with each rule of :mod:`gradsift.detect.checkpoint_choice`, retrain on *all* rows for
  that many epochs and score with ``l2`` at the last checkpoint (``window``: the l2 sum over
  the window's checkpoints). The retraining is emulated by one seeded 50-epoch run on all
  rows: seeded training makes its first *e* epochs identical to an *e*-epoch run, so its
  checkpoint *e* is the retrained model; its time counts only the first *e* epochs.
- **clean-validation path** (the reference, needs clean labels): the same all-rows run,
  ``l2`` at the epoch with the best accuracy on the data set's *clean* validation split.
- **AUM / forgetting**: from the all-rows run's checkpoints, over all 50 epochs and over
  epochs 1..e (e = the rule's single epoch, for ``window`` its centre, the noisy-loss
  minimum: about what the detect path's retrained run holds).
- **cleanlab-CV**: 5-fold out-of-sample ``predict_proba`` with the same recipe (50 epochs),
  score = 1 − ``cleanlab.rank.get_label_quality_scores``.

Wall seconds include every training the method needs. Prints markdown tables (mean ± std).

    .venv/bin/python benchmarks/detect_path.py --json runs/detect_path.json   # ~18 min, 2 cores
    .venv/bin/python benchmarks/detect_path.py --render runs/detect_path.json # tables only
    .venv/bin/python benchmarks/detect_path.py --quick                # a check of the script
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from gradsift.checkpoints import CheckpointRecorder
from gradsift.detect.checkpoint_choice import DEFAULT_RULE, RULES, choose_epoch
from gradsift.detect.metrics import detection_metrics
from gradsift.detect.norms import L2Norm
from gradsift.detect.oga import OGAConfig, OutlierGradientAnalysis
from gradsift.detect.training_dynamics import (
    aum_scores,
    checkpoint_margins,
    epoch_checkpoints,
    forgetting_scores,
)
from gradsift.experiments.datasets import LabeledData, from_arrays, load_digits, load_mnist
from gradsift.experiments.models import mlp
from gradsift.experiments.noise import noisy_train_labels
from gradsift.experiments.training import TrainConfig, predict_proba, train_classifier
from gradsift.task import ClassificationTask

SETTINGS = {
    "mnist-8k symmetric": ("mnist", "symmetric"),
    "mnist-8k class-pair": ("mnist", "asymmetric"),
    "digits symmetric": ("digits", "symmetric"),
    "breast-cancer symmetric": ("breast-cancer", "symmetric"),
}


class TimedRecorder(CheckpointRecorder):
    """A checkpoint per epoch plus the wall time at each epoch end."""

    def __init__(self) -> None:
        super().__init__(every=1)
        self.t0 = time.perf_counter()
        self.times: list[float] = []

    def on_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        super().on_epoch_end(*args, **kwargs)
        self.times.append(time.perf_counter() - self.t0)


def load(dataset: str, kind: str, seed: int, n_train: int) -> LabeledData:
    if dataset == "mnist":
        return load_mnist(0.2, kind, seed, n_train=n_train, n_val=2000, n_test=100)
    if dataset == "breast-cancer":
        return load_breast_cancer_noisy(0.2, seed)
    return load_digits(0.2, kind, seed)


def load_breast_cancer_noisy(noise: float, seed: int) -> LabeledData:
    """scikit-learn's breast_cancer (569 rows, 30 features, 2 classes): 60% train with
    ``noise`` of its labels flipped (seeded), 20% clean validation, 20% test."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    data = from_arrays(X, y, "breast-cancer", val_fraction=0.2, test_fraction=0.2, seed=seed)
    noisy = noisy_train_labels(data.train.y_clean, 2, noise, "symmetric", None, seed)
    data.train.y = noisy
    return data


def zscore_columns(X: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The detect path's per-column standardisation (statistics of the user's rows)."""
    mean, std = ref.mean(axis=0), ref.std(axis=0)
    return ((X - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def train(X, y, n_classes, epochs, seed, recorder=None) -> torch.nn.Module:
    model = mlp(X.shape[1], n_classes, hidden=(128,), seed=seed)
    config = TrainConfig(epochs=epochs, batch_size=64, seed=seed)
    train_classifier(model, X, y, config, recorder=recorder, progress=False)
    return model


def curves(model, rec, X, y) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch accuracy and mean cross-entropy of ``(X, y)`` at every checkpoint."""
    acc, loss = [], []
    for ckpt in epoch_checkpoints(rec):
        p = predict_proba(CheckpointRecorder.load_into(model, ckpt), X).astype(np.float64)
        acc.append(float(np.mean(p.argmax(1) == y)))
        loss.append(float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)))))
    return np.array(acc), np.array(loss)


def l2_per_epoch(model, rec, X, y) -> tuple[np.ndarray, float]:
    """l2 scores ``[E, n]`` at every checkpoint and the mean seconds per checkpoint."""
    oga = OutlierGradientAnalysis(model, ClassificationTask(), OGAConfig(detectors=["l2"]))
    ckpts = epoch_checkpoints(rec)
    t0 = time.perf_counter()
    out = np.stack([L2Norm().fit_score(oga.gradients((X, y), [c])[0][0]) for c in ckpts])
    return out, (time.perf_counter() - t0) / len(ckpts)


def cleanlab_cv(X, y, n_classes, epochs, seed, folds=5) -> tuple[np.ndarray, float]:
    from cleanlab.rank import get_label_quality_scores

    t0 = time.perf_counter()
    pred = np.zeros((len(y), n_classes))
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (fit, out) in enumerate(skf.split(X, y)):
        model = train(X[fit], y[fit], n_classes, epochs, seed + 1000 * (k + 1))
        pred[out] = predict_proba(model, X[out])
    return 1.0 - get_label_quality_scores(y, pred), time.perf_counter() - t0


def one_run(dataset: str, kind: str, seed: int, epochs: int, n_train: int) -> dict[str, Any]:
    data = load(dataset, kind, seed, n_train)
    X = zscore_columns(data.train.X, data.train.X)
    y, C, flipped = data.train.y, data.n_classes, data.train.flipped
    Xv, yv = zscore_columns(data.val.X, data.train.X), data.val.y_clean

    # user path, step 1: noisy validation split of the user's rows
    split = from_arrays(X, y, val_fraction=0.2, seed=seed, n_classes=C)
    rec_split = TimedRecorder()
    m_split = train(split.train.X, split.train.y, C, epochs, seed, rec_split)
    t_split = rec_split.times[-1]
    t0 = time.perf_counter()
    acc_noisy, loss_noisy = curves(m_split, rec_split, split.val.X, split.val.y)
    t_split += time.perf_counter() - t0

    # one seeded run on all rows: the retrained run (first e epochs) and the clean path
    rec = TimedRecorder()
    model = train(X, y, C, epochs, seed, rec)
    acc_clean, _ = curves(model, rec, Xv, yv)
    l2, t_grad = l2_per_epoch(model, rec, X, y)
    t0 = time.perf_counter()
    margins = checkpoint_margins(model, ClassificationTask(), (X, y), epoch_checkpoints(rec))
    t_margin = (time.perf_counter() - t0) / epochs

    out: dict[str, Any] = {"_epochs": {}, "_reasons": {}}

    def add(name: str, scores: np.ndarray, seconds: float, epoch: Any = None) -> None:
        met = detection_metrics(scores, flipped)
        out[name] = (met["auroc"], met["average_precision"], seconds)
        if epoch is not None:
            out["_epochs"][name] = epoch

    e_clean = int(np.argmax(acc_clean)) + 1
    add("clean-val path (reference)", l2[e_clean - 1], rec.times[-1] + t_grad, e_clean)
    stop: dict[str, int] = {}
    for rule in RULES:
        ch = choose_epoch(val_accuracy=acc_noisy, val_loss=loss_noisy, rule=rule)
        w = list(ch.epochs)
        secs = t_split + rec.times[max(w) - 1] + t_grad * len(w)
        add(f"user path: {rule}", l2[[e - 1 for e in w]].sum(axis=0), secs, ch.epoch)
        stop[rule] = ch.epoch
        out["_reasons"][rule] = ch.reason
    auc_by_epoch = [detection_metrics(s, flipped)["auroc"] for s in l2]
    out["_oracle"] = (max(auc_by_epoch), int(np.argmax(auc_by_epoch)) + 1)
    out["_curves"] = {
        "noisy_val_accuracy": acc_noisy.tolist(),
        "noisy_val_loss": loss_noisy.tolist(),
        "clean_val_accuracy": acc_clean.tolist(),
        "l2_auroc": auc_by_epoch,
    }

    # training dynamics: epochs 1..e (what the retrained run of the detect path holds) vs all
    t_all = rec.times[-1] + t_margin * epochs
    for rule in ("min-loss", "smoothed-accuracy"):
        e = stop[rule]
        add(
            f"aum, epochs 1..e ({rule})",
            aum_scores(margins[:e]),
            t_split + rec.times[e - 1] + t_margin * e,
            e,
        )
    add("aum, all epochs", aum_scores(margins), t_all)
    e = stop[DEFAULT_RULE]
    t_dyn = t_split + rec.times[e - 1] + t_margin * e
    for window, M, secs in (("1..e", margins[:e], t_dyn), ("all", margins, t_all)):
        add(f"forgetting, epochs {window}", forgetting_scores(M, "max"), secs)
        add(f"forgetting (never-learned = 0), epochs {window}", forgetting_scores(M, "count"), secs)
    scores, secs = cleanlab_cv(X, y, C, epochs, seed)
    add("cleanlab-CV (5 folds)", scores, secs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--json", default=None, help="also write every run (with curves) here")
    ap.add_argument("--render", default=None, help="only print the tables of a --json file")
    ap.add_argument("--quick", action="store_true", help="1 seed, 2k rows, 8 epochs")
    a = ap.parse_args()
    if a.quick:
        a.seeds, a.epochs, a.n_train = 1, 8, 2000
    if a.render:
        for setting, runs in json.loads(Path(a.render).read_text()).items():
            a.seeds = len(runs)
            report(setting, runs, a)
        return
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    everything = {}
    for setting in a.settings.split(","):
        runs = everything[setting] = []
        for seed in range(a.seeds):
            runs.append(one_run(*SETTINGS[setting], seed, a.epochs, a.n_train))
            print(f"[{setting} seed {seed}] {time.perf_counter() - t_all:.0f} s", flush=True)
        report(setting, runs, a)
        if a.json:
            Path(a.json).write_text(json.dumps(everything, indent=1))
    print(f"\nTotal wall time {time.perf_counter() - t_all:.0f} s")


def report(setting: str, runs: list[dict[str, Any]], a: argparse.Namespace) -> None:
    table = defaultdict(list)
    for run in runs:
        for k, v in run.items():
            if not k.startswith("_"):
                table[k].append(v)
    ref = np.array([v[0] for v in table["clean-val path (reference)"]])
    t_cleanlab = np.mean([v[2] for v in table["cleanlab-CV (5 folds)"]])
    print(f"\n### {setting}, 20% noise, MLP-128 {a.epochs} epochs, {a.seeds} seeds (mean ± std)\n")
    print(
        "| method | epoch per seed | AUROC | Δ AUROC vs clean-val: mean (worst seed) | AP | wall s | ÷ cleanlab time |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, vals in table.items():
        v = np.array(vals)
        epochs = [r["_epochs"].get(name, "") for r in runs]
        cells = [f"{v[:, j].mean():.3f} ± {v[:, j].std():.3f}" for j in (0, 1)]
        d = v[:, 0] - ref
        print(
            f"| {name} | {epochs if any(epochs) else ''} | {cells[0]} | "
            f"{d.mean():+.4f} ({d.min():+.4f}) | {cells[1]} | {v[:, 2].mean():.1f} | "
            f"{v[:, 2].mean() / t_cleanlab:.2f} |"
        )
    oracle = [r["_oracle"] for r in runs]
    print(
        f"\nbest single-epoch l2 AUROC per seed (epoch): {[(round(a_, 3), e) for a_, e in oracle]}"
    )
    for rule, why in runs[0]["_reasons"].items():
        print(f"- seed 0, {rule}: {why}")


if __name__ == "__main__":
    main()
