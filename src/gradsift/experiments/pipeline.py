"""The pipeline every end-to-end run shares: load → build → train with checkpoints → OGA.

``gradsift demo`` (:mod:`~gradsift.experiments.demo`), ``gradsift detect`` on a table
(:mod:`~gradsift.experiments.tabular`), ``gradsift trim``
(:func:`~gradsift.experiments.trimming.trim_dataset`) and ``gradsift extract --dataset``
(:func:`builtin_setup`) all load a data set, build a zoo model and call
:func:`train_and_rank`: seeded training with a checkpoint at every epoch, then Outlier
Gradient Analysis (:mod:`gradsift.detect.oga`) at the checkpoints each configuration asks for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gradsift.checkpoints import CheckpointRecorder
from gradsift.detect.oga import OGAConfig, OGAResult, OutlierGradientAnalysis
from gradsift.distributed import process_group as D
from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import LabeledData, load_with_noise
from gradsift.experiments.models import build_model
from gradsift.experiments.training import History, TrainConfig, train_classifier
from gradsift.factory import UserSetup
from gradsift.task import ClassificationTask, Task, TrackSpec

__all__ = [
    "BuiltinModel",
    "PipelineRun",
    "builtin_setup",
    "load_and_build",
    "train_and_rank",
]

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass
class PipelineRun:
    """What :func:`train_and_rank` produced.

    Attributes:
        model: the trained model (in place), weights after the last epoch, eval mode.
        recorder: a checkpoint after every epoch (with ``val_accuracy`` when validated).
        history: per-epoch training loss and validation accuracy.
        oga: ``{name: OGAResult}`` per OGA configuration (detection score: higher = more
            suspicious), in the order given.
        timings: seconds: ``"train"``, and ``"oga <name>"`` per configuration.
    """

    model: nn.Module
    recorder: CheckpointRecorder
    history: History
    oga: dict[str, OGAResult] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def model_at(self, epoch: int) -> nn.Module:
        """Load the epoch-end checkpoint of ``epoch`` into :attr:`model` (in place)."""
        ckpt = next(c for c in self.recorder.checkpoints if c.epoch == epoch and c.metrics)
        return CheckpointRecorder.load_into(self.model, ckpt)


def load_and_build(
    dataset: str,
    arch: str,
    seed: int = 0,
    noise: float = 0.0,
    noise_kind: Literal["symmetric", "asymmetric"] = "symmetric",
    model_kwargs: Mapping[str, Any] | None = None,
    dataset_kwargs: Mapping[str, Any] | None = None,
) -> tuple[LabeledData, nn.Module]:
    """A built-in data set with flipped training labels and a fresh zoo model for it.

    ``seed`` seeds the split, the noise and the initial weights; see
    :func:`~gradsift.experiments.datasets.load_with_noise` and
    :func:`~gradsift.experiments.models.build_model`.
    """
    data = load_with_noise(dataset, noise, noise_kind, seed, **dict(dataset_kwargs or {}))
    in_shape = tuple(data.train.X.shape[1:])
    model = build_model(arch, in_shape, data.n_classes, seed=seed, **dict(model_kwargs or {}))
    return data, model


def train_and_rank(
    model: nn.Module,
    train: Arrays,
    config: TrainConfig,
    oga: Mapping[str, OGAConfig] | None = None,
    *,
    val: Arrays | None = None,
    task: Task | None = None,
    progress: bool = True,
) -> PipelineRun:
    """Train ``model`` on ``train`` with a checkpoint every epoch, then run OGA on ``train``.

    Args:
        model: a freshly built classifier (trained in place).
        train: ``(X float [n, ...], y int [n])``, the rows that are trained on and scored.
        config: training hyper-parameters and seed.
        oga: ``{name: OGAConfig}``; each runs on the gradients of ``train`` at the
            checkpoint(s) its ``checkpoint`` field selects (``"best"`` needs ``val``).
            ``None``: train only.
        val: optional ``(X, y)`` validation rows (accuracy recorded after every epoch).
        task: the loss and tracked parameters (default: softmax cross-entropy, last linear).
        progress: show progress bars.
    """
    t0 = time.perf_counter()
    recorder = CheckpointRecorder(every=1)
    history = train_classifier(
        model, train[0], train[1], config, val=val, recorder=recorder, progress=progress
    )
    run = PipelineRun(model, recorder, history, timings={"train": time.perf_counter() - t0})
    for name, cfg in (oga or {}).items():
        t0 = time.perf_counter()
        analysis = OutlierGradientAnalysis(model, task or ClassificationTask(), cfg)
        run.oga[name] = analysis.run(train, recorder)
        run.timings[f"oga {name}"] = time.perf_counter() - t0
    return run


# --------------------------------------------------------------------------- built-in model


@dataclass(frozen=True)
class BuiltinModel:
    """A zoo model on a built-in data set; weights from ``checkpoint`` or seeded training.

    Attributes:
        dataset: built-in data set name (``"digits"``, ``"half_moons"``, ``"mnist"``).
        arch: zoo model (``"logreg"``, ``"mlp"``, ``"cnn"``).
        checkpoint: weights file; when it does not exist yet the model is trained (seeded)
            and saved there. ``None``: always train.
        epochs: training epochs when training.
        noise: flipped fraction of the training labels.
        seed: seeds the split, the noise, the weights and training.
        split: the rows the setup hands out: ``"train"``, ``"val"`` or ``"test"``.
    """

    dataset: str = "digits"
    arch: str = "mlp"
    checkpoint: str | None = None
    epochs: int = 30
    noise: float = 0.0
    seed: int = 0
    split: str = "train"


def builtin_setup(spec: BuiltinModel, tracked: TrackSpec | None = None) -> UserSetup:
    """Split ``spec.split`` of the data set and the trained zoo model (identical on every rank).

    Rank 0 loads or trains the weights and broadcasts them (outside a process group it
    simply does so itself). ``tracked``: the task's tracked parameters (default last linear).
    """
    if spec.split not in ("train", "val", "test"):
        raise GradsiftError(f"--split must be train, val or test, got {spec.split!r}")
    data, model = load_and_build(spec.dataset, spec.arch, spec.seed, noise=spec.noise)
    model.load_state_dict(D.run_on_main(lambda: _weights(model, data, spec)))
    split = getattr(data, spec.split)
    task = ClassificationTask() if tracked is None else ClassificationTask(tracked)
    return UserSetup(model.eval(), (split.X, split.y), task, split.flipped)


def _weights(model: nn.Module, data: LabeledData, spec: BuiltinModel) -> dict[str, torch.Tensor]:
    path = Path(spec.checkpoint) if spec.checkpoint else None
    if path is not None and path.exists():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return payload["state"] if "state" in payload else payload
    config = TrainConfig(epochs=spec.epochs, seed=spec.seed)
    train_and_rank(model, (data.train.X, data.train.y), config, progress=False)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
    return state
