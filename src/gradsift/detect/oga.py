"""Outlier Gradient Analysis: per-sample gradients → outlier detectors → flagged samples.

Steps (METHODS.md): compute ``G = [g_1 … g_n]`` for the tracked parameters with the model
in eval mode, at one or more saved checkpoints; fit each detector on G and score every row
(higher = more suspicious); flag the top ``budget``.

Which checkpoint matters. A model that has memorised its noisy labels has *small*
final-checkpoint gradients on the flipped samples, so by default gradients are taken at
the checkpoint with the best validation accuracy (the early-stopping point, where
memorisation has not begun). ``checkpoint="final"``, an explicit list of epochs, or
``"ensemble"`` (a learning-rate-weighted combination over several checkpoints; for
``l2`` this is TracIn self-influence) are the alternatives.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from gradsift.checkpoints import Checkpoint, CheckpointRecorder
from gradsift.config import DEFAULT_DETECTORS
from gradsift.detect import get_detector
from gradsift.detect.ensemble import ensemble_scores
from gradsift.detect.result import Budget, DetectionResult
from gradsift.errors import GradsiftError
from gradsift.grads.extract import ExtractConfig, compute_gradients
from gradsift.task import Task

CheckpointChoice = Literal["best", "final", "ensemble"] | Sequence[int]


@dataclass
class OGAConfig:
    """Settings of one Outlier Gradient Analysis run.

    ``checkpoint``: ``"best"`` (best validation accuracy; the default), ``"final"``,
    ``"ensemble"`` (``ensemble_size`` checkpoints evenly spaced up to the final one), or a
    list of epochs. ``ensemble_mode``: ``"sum"`` (lr-weighted sum of per-checkpoint scores)
    or ``"concat"`` (one detector on the concatenated gradients).
    """

    detectors: Sequence[str] = DEFAULT_DETECTORS
    budget: Budget = 0.1
    checkpoint: CheckpointChoice = "best"
    ensemble_size: int = 3
    ensemble_mode: Literal["sum", "concat"] = "sum"
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    seed: int = 0


@dataclass
class OGAResult:
    """Per-detector results plus what was used and how long each step took (seconds)."""

    results: dict[str, DetectionResult]
    checkpoints: list[dict[str, Any]]
    timings: dict[str, float]

    def scores_frame(self):  # -> pandas.DataFrame
        """One row per sample: each detector's score, rank and flag."""
        import pandas as pd

        cols = {}
        for name, res in self.results.items():
            cols[f"{name}_score"] = res.scores
            cols[f"{name}_rank"] = res.rank
            cols[f"{name}_is_issue"] = res.is_issue
        frame = pd.DataFrame(cols)
        frame.index.name = "index"
        return frame


def select_checkpoints(
    recorder: CheckpointRecorder, choice: CheckpointChoice, ensemble_size: int = 3
) -> list[Checkpoint]:
    """Resolve a checkpoint choice to saved checkpoints (epoch-end ones, in order)."""
    saved = [c for c in recorder.checkpoints if c.metrics]
    if not saved:
        raise GradsiftError(
            "the recorder holds no epoch-end checkpoints; record with every=1 or epochs=[...]"
        )
    if choice == "best":
        if "val_accuracy" not in saved[0].metrics:
            raise GradsiftError(
                "checkpoint='best' needs validation accuracy: train with a validation split"
            )
        return [recorder.best("val_accuracy")]
    if choice == "final":
        return [saved[-1]]
    if choice == "ensemble":
        picks = np.unique(
            np.linspace(0, len(saved) - 1, min(ensemble_size, len(saved)) + 1)[1:]
            .round()
            .astype(int)
        )
        return [saved[i] for i in picks]
    by_epoch = {c.epoch: c for c in saved}
    missing = [e for e in choice if e not in by_epoch]
    if missing:
        raise GradsiftError(f"no checkpoint saved at epochs {missing}; saved: {sorted(by_epoch)}")
    return [by_epoch[e] for e in choice]


class OutlierGradientAnalysis:
    """Run detectors on per-sample gradients, at one or several checkpoints.

    Example::

        oga = OutlierGradientAnalysis(model, ClassificationTask(), OGAConfig(budget=0.2))
        out = oga.run((X_train, y_train), recorder)
        out.results["l2"].is_issue
    """

    def __init__(self, model: nn.Module, task: Task, config: OGAConfig | None = None) -> None:
        self.model, self.task = model, task
        self.config = config or OGAConfig()
        for name in self.config.detectors:  # fail early on unknown names
            get_detector(name)

    def gradients(
        self, data: Dataset | tuple[Any, ...], checkpoints: Sequence[Checkpoint | None]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(G [n, D], losses [n])`` at each checkpoint (``None`` = the model as it is)."""
        out = []
        for ckpt in checkpoints:
            model = self.model
            if ckpt is not None:
                model = CheckpointRecorder.load_into(copy.deepcopy(self.model), ckpt)
            model.eval()
            label = "current weights" if ckpt is None else f"epoch {ckpt.epoch}"
            out.append(
                compute_gradients(
                    model, self.task, data, self.config.extract, description=f"gradients @ {label}"
                )
            )
        return out

    def run(
        self, data: Dataset | tuple[Any, ...], recorder: CheckpointRecorder | None = None
    ) -> OGAResult:
        """Score every sample of ``data`` with every configured detector."""
        cfg = self.config
        checkpoints: list[Checkpoint | None] = (
            [None]
            if recorder is None
            else list(select_checkpoints(recorder, cfg.checkpoint, cfg.ensemble_size))
        )
        t0 = time.perf_counter()
        per_ckpt = self.gradients(data, checkpoints)
        timings = {"gradients": time.perf_counter() - t0}
        used = [
            {"epoch": None, "lr": 1.0} if c is None else {"epoch": c.epoch, "lr": c.lr, **c.metrics}
            for c in checkpoints
        ]
        results = {}
        for name in cfg.detectors:
            t0 = time.perf_counter()
            results[name] = self._detect(name, per_ckpt, [u["lr"] for u in used])
            results[name].settings["checkpoints"] = [u["epoch"] for u in used]
            timings[name] = time.perf_counter() - t0
        return OGAResult(results, used, timings)

    def _detect(
        self, name: str, per_ckpt: list[tuple[np.ndarray, np.ndarray]], lrs: list[float]
    ) -> DetectionResult:
        kwargs = _seed_kwargs(name, self.config.seed)
        if len(per_ckpt) == 1:
            G, losses = per_ckpt[0]
            return DetectionResult.from_detector(
                get_detector(name, **kwargs), G, losses, self.config.budget
            )
        scores, settings = ensemble_scores(
            name,
            [g for g, _ in per_ckpt],
            [loss for _, loss in per_ckpt],
            lrs,
            mode=self.config.ensemble_mode,
            **kwargs,
        )
        return DetectionResult(
            scores=scores, detector=name, settings=settings, budget=self.config.budget
        )


def _seed_kwargs(name: str, seed: int) -> dict[str, Any]:
    """Seed every detector that takes a seed (iforest, random, seeded pyod models)."""
    import inspect

    detector = get_detector(name)
    params = inspect.signature(type(detector).__init__).parameters
    return {"seed": seed} if "seed" in params else {}
