"""Seeded, deterministic training of classifiers on numpy arrays.

Same seed + same data + same initial weights ⇒ bit-identical trained weights: the
mini-batch order comes from a seeded ``torch.Generator`` and dropout draws from a
forked, seeded torch RNG (the caller's global RNG state is left untouched).

The training objective is the mean loss over each mini-batch, plus classic (coupled)
L2 ``weight_decay`` as implemented by ``torch.optim.Adam`` / ``SGD``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradsift.checkpoints import CheckpointRecorder
from gradsift.experiments.labels import as_integer_labels
from gradsift.progress import track

__all__ = [
    "TrainConfig",
    "History",
    "seed_everything",
    "train_classifier",
    "predict_proba",
    "predict_logits",
    "accuracy",
]


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_classifier`."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (0 <= self.momentum < 1):
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")


@dataclass
class History:
    """Per-epoch training record.

    Attributes:
        train_loss: mean training loss of each epoch (sample-weighted over batches).
        val_accuracy: validation accuracy after each epoch (empty when no ``val``).
        val_loss: mean validation cross-entropy after each epoch (empty when no ``val``);
            :func:`gradsift.detect.checkpoint_choice.choose_epoch` reads it.
        epochs: number of epochs run.
    """

    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    epochs: int = 0


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and CUDA).

    Also makes cuDNN deterministic (``deterministic=True``, ``benchmark=False``).
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _check_X(X: np.ndarray, name: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim < 1 or X.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {X.shape})")
    try:
        X = X.astype(np.float32, copy=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}") from err
    if not np.all(np.isfinite(X)):
        bad = int(np.sum(~np.isfinite(X).reshape(X.shape[0], -1).all(axis=1)))
        raise ValueError(f"{name} contains NaN or infinite values ({bad} rows affected)")
    return X


def _check_y(y: np.ndarray, n: int, n_out: int, binary: bool, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the features, got {y.shape}")
    y = as_integer_labels(y, name)
    n_cls = 2 if binary else n_out
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_cls:
        raise ValueError(
            f"{name}: labels must lie in [0, {n_cls}) for a model with {n_out} output(s), "
            f"found values in [{lo}, {hi}]"
        )
    return y.astype(np.int64, copy=False)


@torch.no_grad()
def predict_logits(model: nn.Module, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Raw model outputs float32 ``[n, n_outputs]`` in eval mode without gradients.

    The model's train/eval mode is restored afterwards.
    """
    X = _check_X(X)
    dev = _device(model)
    was_training = model.training
    model.eval()
    try:
        outs = []
        for s in range(0, X.shape[0], batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(X[s : s + batch_size])).to(dev)
            out = model(xb)
            outs.append(out.reshape(out.shape[0], -1).float().cpu())
        return torch.cat(outs).numpy()
    finally:
        model.train(was_training)


def predict_proba(model: nn.Module, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities float32 ``[n, C]`` (softmax of the logits), eval mode, no grad.

    A model with a single output logit is treated as a sigmoid/BCE binary classifier and
    returns ``[1 - σ, σ]`` (``C = 2``).
    """
    logits = torch.from_numpy(predict_logits(model, X, batch_size))
    if logits.shape[1] == 1:
        p1 = torch.sigmoid(logits)
        return torch.cat([1 - p1, p1], dim=1).numpy()
    return torch.softmax(logits, dim=1).numpy()


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows with ``argmax predict_proba == y`` (``y`` int ``[n]``)."""
    return accuracy_and_loss(model, X, y)[0]


def accuracy_and_loss(model: nn.Module, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``predict_proba`` against ``y`` (int ``[n]``);
    probabilities are clipped at 1e-12 so a confident mistake costs at most ~27.6 nats."""
    p = predict_proba(model, X)
    y = np.asarray(y)
    if y.shape != (p.shape[0],):
        raise ValueError(f"y must have shape ({p.shape[0]},), got {y.shape}")
    nll = -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))
    return float(np.mean(p.argmax(axis=1) == y)), float(nll.mean())


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _batch_loss(out: torch.Tensor, yb: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(out, yb)
    if out.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(out[:, 0], yb.to(out.dtype))
    target = F.one_hot(yb, out.shape[1]).to(out.dtype)
    return F.binary_cross_entropy_with_logits(out, target, reduction="sum") / out.shape[0]


def train_classifier(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    recorder: CheckpointRecorder | None = None,
    progress: bool = True,
    loss: Literal["ce", "bce"] = "ce",
    scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
    | None = None,
) -> History:
    """Train ``model`` in place with mini-batch Adam / SGD.

    Args:
        model: maps float32 ``[B, *feature_shape]`` to logits ``[B, C]`` (or ``[B, 1]``
            for binary BCE). Kept on its current device.
        X: float ``[n, *feature_shape]`` training features (finite).
        y: int ``[n]`` training labels in ``[0, C)``.
        config: hyper-parameters and the seed (shuffling and dropout).
        val: optional ``(X_val, y_val)``; accuracy is evaluated after every epoch.
        recorder: optional :class:`CheckpointRecorder`; gets ``on_step_end`` after every
            optimizer step and ``on_epoch_end`` with
            ``metrics={"val_accuracy", "val_loss", "train_loss"}`` (``val_*`` only with ``val``).
        progress: show a progress bar over epochs.
        loss: ``"ce"`` softmax cross-entropy; ``"bce"`` sigmoid binary cross-entropy
            (one output logit with labels in {0, 1}, or one-vs-rest over ``C`` outputs).
        scheduler: optional factory ``optimizer -> LRScheduler``; stepped once per epoch,
            after the epoch's checkpoint (so a checkpoint records the lr its epoch used).

    Returns:
        History with per-epoch train loss and validation accuracy. The model is left in
        eval mode.

    Raises:
        ValueError: empty data, mismatched shapes, non-finite features or labels out of
            range.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if loss not in ("ce", "bce"):
        raise ValueError(f"loss must be 'ce' or 'bce', got {loss!r}")
    X = _check_X(X)
    dev = _device(model)
    n_out = predict_logits(model, X[:1]).shape[1]
    if loss == "ce" and n_out < 2:
        raise ValueError("loss='ce' needs a model with >= 2 output logits; use loss='bce'")
    y = _check_y(y, X.shape[0], n_out, binary=(loss == "bce" and n_out == 1))
    if val is not None:
        Xv = _check_X(val[0], "val X")
        yv = _check_y(val[1], Xv.shape[0], n_out, binary=(n_out == 1), name="val y")

    Xt = torch.from_numpy(np.ascontiguousarray(X)).to(dev)
    yt = torch.from_numpy(np.ascontiguousarray(y)).to(dev)
    n = Xt.shape[0]
    optimizer = _make_optimizer(model, config)
    sched = scheduler(optimizer) if scheduler is not None else None
    gen = torch.Generator().manual_seed(config.seed)
    history = History()
    step = 0
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []

    epochs = range(1, config.epochs + 1)
    it = track(epochs, "Training", total=config.epochs) if progress else epochs
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        model.train()
        for epoch in it:
            perm = torch.randperm(n, generator=gen).to(dev)
            total = 0.0
            for s in range(0, n, config.batch_size):
                idx = perm[s : s + config.batch_size]
                out = model(Xt[idx])
                out = out.reshape(out.shape[0], -1)
                batch_loss = _batch_loss(out, yt[idx], loss)
                optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()
                optimizer.step()
                step += 1
                total += float(batch_loss.detach()) * idx.shape[0]
                if recorder is not None:
                    recorder.on_step_end(model, optimizer, epoch, step)
            history.train_loss.append(total / n)
            metrics = {"train_loss": history.train_loss[-1]}
            if val is not None:
                acc, val_loss = accuracy_and_loss(model, Xv, yv)  # restores train mode
                history.val_accuracy.append(acc)
                history.val_loss.append(val_loss)
                metrics["val_accuracy"], metrics["val_loss"] = acc, val_loss
            history.epochs = epoch
            if recorder is not None:
                recorder.on_epoch_end(model, optimizer, epoch, step, metrics)
            if sched is not None:
                sched.step()
    model.eval()
    return history
