"""The built-in demonstration: digits with 20% flipped training labels.

Train an MLP until it memorises the noise (saving a checkpoint every epoch), run Outlier
Gradient Analysis with every built-in detector at the best-validation checkpoint, the
final one and a three-checkpoint ensemble, and measure detection quality against the
known flips.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gradsift.config import DEFAULT_DETECTORS
from gradsift.detect.metrics import detection_metrics
from gradsift.detect.oga import OGAConfig, OGAResult
from gradsift.experiments.datasets import LabeledData
from gradsift.experiments.pipeline import load_and_build, train_and_rank
from gradsift.experiments.training import TrainConfig, accuracy

CHECKPOINT_MODES = ("best", "final", "ensemble")


@dataclass
class DemoResult:
    """Rows of (checkpoint mode, detector, metrics, seconds) and per-step timings.

    Attributes:
        rows: one per (checkpoint mode, detector): ``checkpoint``, ``epochs`` (the
            checkpoints used), ``detector``, the :func:`~gradsift.detect.metrics.detection_metrics`
            against the known flips, and ``seconds``.
        timings: seconds per step (``load + train``, ``gradients (<mode>)``, ``total``).
        info: sizes, epochs, best epoch and accuracies of the trained model.
        data: the data set (digits with the flipped training labels).
        runs: ``{mode: OGAResult}``.
    """

    rows: list[dict[str, Any]]
    timings: dict[str, float]
    info: dict[str, Any]
    data: LabeledData
    runs: dict[str, OGAResult] = field(default_factory=dict)


def run_demo(
    noise: float = 0.2,
    seed: int = 0,
    epochs: int = 100,
    detectors: Sequence[str] = DEFAULT_DETECTORS,
    modes: Sequence[str] = CHECKPOINT_MODES,
    budget: float = 0.2,
) -> DemoResult:
    """Run the demo end to end; every step is seeded, so reruns give the same table."""
    start = time.perf_counter()
    data, model = load_and_build(
        "digits", "mlp", seed, noise=noise, model_kwargs={"hidden": (256,)}
    )
    loaded = time.perf_counter() - start
    config = TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, seed=seed)
    oga = {
        mode: OGAConfig(detectors=detectors, checkpoint=mode, budget=budget, seed=seed)
        for mode in modes
    }
    train = (data.train.X, data.train.y)
    run = train_and_rank(model, train, config, oga, val=(data.val.X, data.val.y))
    timings = {"load + train": loaded + run.timings["train"]}
    info = {
        "n_train": len(data.train),
        "n_flipped": len(data.train.flipped),
        "epochs": epochs,
        "best_epoch": run.recorder.best().epoch,
        "train_accuracy_on_noisy_labels": accuracy(model, *train),
        "test_accuracy": accuracy(model, data.test.X, data.test.y),
    }
    rows = []
    for mode, out in run.oga.items():
        timings[f"gradients ({mode})"] = out.timings["gradients"]
        epochs_used = [c["epoch"] for c in out.checkpoints]
        for name, result in out.results.items():
            metrics = detection_metrics(result.scores, data.train.flipped)
            rows.append(
                {
                    "checkpoint": mode,
                    "epochs": epochs_used,
                    "detector": name,
                    **metrics,
                    "seconds": out.timings[name],
                }
            )
    timings["total"] = time.perf_counter() - start
    return DemoResult(rows, timings, info, data, run.oga)
