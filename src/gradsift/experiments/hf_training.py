"""Seeded fine-tuning of transformer tasks (classification or causal LM, LoRA or not).

The objective is the mean per-sample loss of the task over each mini-batch,
``(1/B) Σ_i ℓ_i`` (for a causal LM, ``ℓ_i`` is sample *i*'s mean answer-token loss), which
is the ``θ`` that gradsift's influence formulas assume. Only parameters with
``requires_grad`` are trained (for a peft model: the adapters and ``modules_to_save``).
AdamW with optional linear warm-up/decay and gradient clipping. Same seed, data and
initial weights give the same trained weights on the same machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from gradsift.checkpoints import CheckpointRecorder
from gradsift.errors import GradsiftError
from gradsift.hf.callbacks import LoopCheckpointer
from gradsift.progress import track
from gradsift.task import Task

__all__ = ["FineTuneConfig", "FineTuneHistory", "evaluate_loss", "fine_tune", "predict"]


@dataclass(frozen=True)
class FineTuneConfig:
    """Fine-tuning hyper-parameters.

    ``schedule="linear"``: the lr rises linearly over the first ``warmup`` fraction of the
    steps, then falls linearly to 0; ``"constant"`` keeps ``lr``.
    """

    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: Literal["constant", "linear"] = "linear"
    warmup: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise GradsiftError(f"epochs must be a non-negative integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise GradsiftError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise GradsiftError(f"lr must be positive and finite, got {self.lr!r}")
        if self.schedule not in ("constant", "linear"):
            raise GradsiftError(f"schedule must be 'constant' or 'linear', got {self.schedule!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise GradsiftError(f"warmup must lie in [0, 1), got {self.warmup}")


@dataclass
class FineTuneHistory:
    """Per-epoch mean training loss, the metrics of ``evaluate`` and the wall time."""

    train_loss: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _schedule(config: FineTuneConfig, total: int) -> Callable[[int], float]:
    warm = int(round(config.warmup * total))

    def factor(step: int) -> float:
        if config.schedule == "constant":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def fine_tune(
    model: nn.Module,
    task: Task,
    data: Dataset,
    config: FineTuneConfig = FineTuneConfig(),
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    recorder: CheckpointRecorder | None = None,
    progress: bool = True,
) -> FineTuneHistory:
    """Train ``model`` in place on ``data`` under ``task``; returns the history.

    Args:
        model: any module ``task`` can run (moved nowhere: batches go to its device).
        task: gives ``per_sample_loss``; the mini-batch objective is its mean.
        data: a torch Dataset whose items ``collate_fn`` turns into task batches.
        evaluate: called after each epoch with the model in eval mode; its numbers go to
            ``history.metrics`` and to epoch checkpoints.
        recorder: optional :class:`CheckpointRecorder`; steps and learning rates are
            recorded through :class:`~gradsift.hf.callbacks.LoopCheckpointer`.

    The model is left in eval mode.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise GradsiftError("the model has no trainable parameters")
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise GradsiftError("no training data")
    device = _device(model)
    gen = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        data, batch_size=config.batch_size, shuffle=True, generator=gen, collate_fn=collate_fn
    )
    total = config.epochs * len(loader)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total))
    history = FineTuneHistory()
    ckpt = LoopCheckpointer(model, optimizer, recorder=recorder) if recorder is not None else None
    start = time.perf_counter()
    fork = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(config.seed)
            epochs = range(1, config.epochs + 1)
            for _ in track(epochs, "fine-tuning", total=config.epochs) if progress else epochs:
                model.train()
                seen, running = 0, 0.0
                for batch in loader:
                    batch = _to(batch, device)
                    losses = task.per_sample_loss(model, batch)
                    loss = losses.mean()
                    if not torch.isfinite(loss):
                        raise GradsiftError(f"non-finite training loss at step {history.steps + 1}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    history.steps += 1
                    seen += losses.shape[0]
                    running += float(losses.detach().sum())
                history.train_loss.append(running / seen)
                model.eval()
                metrics = {"train_loss": history.train_loss[-1]}
                if evaluate is not None:
                    with torch.no_grad():
                        metrics.update({k: float(v) for k, v in evaluate(model).items()})
                history.metrics.append(metrics)
                if ckpt is not None:
                    ckpt.end_epoch(metrics)
    finally:
        if ckpt is not None:
            ckpt.close()
        model.eval()
    history.seconds = time.perf_counter() - start
    return history


@torch.no_grad()
def predict(
    model: nn.Module,
    task: Task,
    data: Dataset,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """``(outputs, losses)`` over ``data`` in eval mode: outputs float32 ``[n, ...]`` are
    the task's forward outputs for classification (``[n, C]`` logits); for outputs with a
    sequence axis only the losses are meaningful and ``outputs`` is empty. Losses are
    float64 ``[n]``."""
    was = model.training
    model.eval()
    device = _device(model)
    outs, losses = [], []
    try:
        for batch in DataLoader(data, batch_size=batch_size, collate_fn=collate_fn):
            batch = _to(batch, device)
            out = task.forward(model, batch)
            losses.append(task.loss(out, batch).double().cpu().numpy())
            if out.dim() == 2:
                outs.append(out.float().cpu().numpy())
    finally:
        model.train(was)
    return (np.concatenate(outs) if outs else np.empty(0, np.float32)), np.concatenate(losses)


def evaluate_loss(
    model: nn.Module,
    task: Task,
    data: Dataset,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    batch_size: int = 64,
) -> float:
    """Mean per-sample loss of ``task`` over ``data`` (eval mode, no gradients)."""
    return float(predict(model, task, data, collate_fn, batch_size)[1].mean())
