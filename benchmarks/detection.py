"""Detection quality of every detector against known flipped labels, per checkpoint choice.

Digits (or MNIST with --dataset mnist when its loader is installed), 20% symmetric noise,
an MLP trained until it memorises the noise, checkpoints every epoch. For each seed:
gradients at the best-validation checkpoint (early stopping), the final checkpoint, and a
three-checkpoint ensemble; every detector plus the per-sample loss and random baselines.
Prints mean ± std over seeds of AUROC, average precision and precision@m.

    .venv/bin/python benchmarks/detection.py --seeds 3           # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from gradsift.checkpoints import CheckpointRecorder
from gradsift.config import DEFAULT_DETECTORS
from gradsift.detect.metrics import detection_metrics
from gradsift.detect.oga import OGAConfig, OutlierGradientAnalysis
from gradsift.experiments.datasets import load_dataset
from gradsift.experiments.models import mlp
from gradsift.experiments.training import TrainConfig, train_classifier
from gradsift.task import ClassificationTask

MODES = ("best", "final", "ensemble")
METRICS = ("auroc", "average_precision", "precision_at_m")


def one_seed(dataset: str, noise: float, seed: int, epochs: int, n_train: int | None) -> dict:
    kwargs = {"noise": noise, "seed": seed}
    if n_train:
        kwargs["n_train"] = n_train
    data = load_dataset(dataset, **kwargs)
    model = mlp(data.n_features, data.n_classes, hidden=(256,), seed=seed)
    recorder = CheckpointRecorder(every=1)
    train_classifier(
        model,
        data.train.X,
        data.train.y,
        TrainConfig(epochs=epochs, batch_size=32, seed=seed),
        val=(data.val.X, data.val.y),
        recorder=recorder,
    )
    out = {}
    for mode in MODES:
        config = OGAConfig(detectors=DEFAULT_DETECTORS, checkpoint=mode, seed=seed)
        result = OutlierGradientAnalysis(model, ClassificationTask(), config).run(
            (data.train.X, data.train.y), recorder
        )
        for name, res in result.results.items():
            out[(mode, name)] = detection_metrics(res.scores, data.train.flipped)
        out[(mode, "_epochs")] = [c["epoch"] for c in result.checkpoints]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--n-train", type=int, default=None, help="subsample (MNIST)")
    args = parser.parse_args()
    runs = [
        one_seed(args.dataset, args.noise, s, args.epochs, args.n_train) for s in range(args.seeds)
    ]
    table = defaultdict(list)
    for run in runs:
        for key, value in run.items():
            table[key].append(value)
    print(
        f"\n{args.dataset}, {args.noise:.0%} symmetric noise, MLP {args.epochs} epochs, {args.seeds} seeds (mean ± std)\n"
    )
    for mode in MODES:
        print(f"checkpoint **{mode}** (epochs used per seed: {table[(mode, '_epochs')]})\n")
        print("| detector | AUROC | AP | precision@m |")
        print("|---|---:|---:|---:|")
        for name in DEFAULT_DETECTORS:
            cells = []
            for metric in METRICS:
                values = np.array([m[metric] for m in table[(mode, name)]])
                cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
