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

Every detector gets the same :class:`~gradsift.detect.context.DetectionContext` per
checkpoint: ``G`` and the losses, the model loaded at that checkpoint, the task, the
training data, the recorder's checkpoints, ``weight_decay`` and the layout of ``G``'s
columns. So the self-influence detectors (``self-if-cg``, ``self-tracin``, …) run like
any other: ``OGAConfig(detectors=["l2", "self-if-cg"])``.
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
from gradsift.detect.context import DetectionContext
from gradsift.detect.ensemble import ensemble_scores
from gradsift.detect.result import Budget, DetectionResult
from gradsift.errors import GradsiftError
from gradsift.grads.extract import ExtractConfig, compute_gradients
from gradsift.grads.kronecker import FactoredProjector
from gradsift.grads.layout import Block, layout_of
from gradsift.grads.projection import Projector
from gradsift.task import Task

CheckpointChoice = Literal["best", "final", "ensemble"] | Sequence[int]


@dataclass
class OGAConfig:
    """Settings of one Outlier Gradient Analysis run.

    ``checkpoint``: ``"best"`` (best validation accuracy; the default), ``"final"``,
    ``"ensemble"`` (``ensemble_size`` checkpoints evenly spaced up to the final one), or a
    list of epochs. ``ensemble_mode``: ``"sum"`` (lr-weighted sum of per-checkpoint scores)
    or ``"concat"`` (one detector on the concatenated gradients). ``weight_decay``: the
    coupled L2 coefficient the model was trained with (enters the Hessian of the
    ``self-if-*`` detectors and DataInf's damping).
    """

    detectors: Sequence[str] = DEFAULT_DETECTORS
    budget: Budget = 0.1
    checkpoint: CheckpointChoice = "best"
    ensemble_size: int = 3
    ensemble_mode: Literal["sum", "concat"] = "sum"
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    seed: int = 0
    weight_decay: float = 0.0


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

    def model_at(self, checkpoint: Checkpoint | None) -> nn.Module:
        """The model in eval mode at ``checkpoint`` (a copy), or as it is for ``None``."""
        model = self.model
        if checkpoint is not None:
            model = CheckpointRecorder.load_into(copy.deepcopy(self.model), checkpoint)
        model.eval()
        return model

    def gradients(
        self, data: Dataset | tuple[Any, ...], checkpoints: Sequence[Checkpoint | None]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(G [n, D], losses [n])`` at each checkpoint (``None`` = the model as it is)."""
        return [self._gradients(self.model_at(c), data, c) for c in checkpoints]

    def _gradients(
        self, model: nn.Module, data: Dataset | tuple[Any, ...], ckpt: Checkpoint | None
    ) -> tuple[np.ndarray, np.ndarray]:
        label = "current weights" if ckpt is None else f"epoch {ckpt.epoch}"
        return compute_gradients(
            model, self.task, data, self.config.extract, description=f"gradients @ {label}"
        )

    def contexts(
        self,
        data: Dataset | tuple[Any, ...],
        checkpoints: Sequence[Checkpoint | None],
        recorder: CheckpointRecorder | None = None,
    ) -> list[DetectionContext]:
        """The detection context at each checkpoint: its gradients and losses, the model
        at that checkpoint, the task, ``data``, the recorder, ``weight_decay`` and the
        layout of ``G``'s columns."""
        out = []
        for ckpt in checkpoints:
            model = self.model_at(ckpt)
            G, losses = self._gradients(model, data, ckpt)
            out.append(
                DetectionContext(
                    gradients=G,
                    losses=losses,
                    model=model,
                    task=self.task,
                    data=data,
                    checkpoints=recorder,
                    weight_decay=self.config.weight_decay,
                    layout=_column_layout(model, self.task, self.config.extract),
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
        contexts = self.contexts(data, checkpoints, recorder)
        timings = {"gradients": time.perf_counter() - t0}
        used = [
            {"epoch": None, "lr": 1.0} if c is None else {"epoch": c.epoch, "lr": c.lr, **c.metrics}
            for c in checkpoints
        ]
        results = {}
        for name in cfg.detectors:
            t0 = time.perf_counter()
            results[name] = self._detect(name, contexts, [u["lr"] for u in used])
            results[name].settings["checkpoints"] = [u["epoch"] for u in used]
            timings[name] = time.perf_counter() - t0
        return OGAResult(results, used, timings)

    def _detect(
        self, name: str, contexts: list[DetectionContext], lrs: list[float]
    ) -> DetectionResult:
        kwargs = _seed_kwargs(name, self.config.seed)
        if len(contexts) == 1:
            return DetectionResult.from_detector(
                get_detector(name, **kwargs), budget=self.config.budget, context=contexts[0]
            )
        scores, settings = ensemble_scores(
            name,
            [c.gradients for c in contexts],
            [c.losses for c in contexts],
            lrs,
            mode=self.config.ensemble_mode,
            contexts=contexts,
            **kwargs,
        )
        return DetectionResult(
            scores=scores, detector=name, settings=settings, budget=self.config.budget
        )


def _column_layout(model: nn.Module, task: Task, extract: ExtractConfig) -> list[Block]:
    """The blocks of ``G``'s columns: the tracked parameters, or their projections."""
    layout = layout_of(task.tracked_parameters(model))
    if extract.projection is None:
        return layout
    if extract.projection.kind == "kronecker":
        return list(FactoredProjector(model, task, extract.projection).out_blocks)
    return list(Projector(layout, extract.projection).out_blocks)


def _seed_kwargs(name: str, seed: int) -> dict[str, Any]:
    """Seed every detector that takes a seed (iforest, random, seeded pyod models)."""
    import inspect

    detector = get_detector(name)
    params = inspect.signature(type(detector).__init__).parameters
    return {"seed": seed} if "seed" in params else {}
