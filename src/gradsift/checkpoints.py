"""A small checkpoint recorder for plain training loops.

Used for checkpoint ensembles and TracIn-CP (``Σ_k η_k g_t(θ_k)ᵀ g_i(θ_k)``), which need
the weights *and* the learning rate ``η_k`` in effect at each saved checkpoint.

Typical use::

    rec = CheckpointRecorder(every=5, directory="runs/ckpt")
    for epoch in range(1, epochs + 1):
        for batch in loader:
            ...; optimizer.step(); step += 1
            rec.on_step_end(model, optimizer, epoch, step)
        rec.on_epoch_end(model, optimizer, epoch, step, {"val_accuracy": acc})
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["Checkpoint", "CheckpointRecorder"]

_FILE_RE = re.compile(r"^ckpt-epoch(\d+)-step(\d+)\.pt$")


@dataclass
class Checkpoint:
    """One saved training state.

    Attributes:
        epoch: 1-based epoch (for epoch-end checkpoints: the epoch just finished; for
            step checkpoints: the epoch in progress).
        step: number of optimizer steps taken so far.
        lr: ``optimizer.param_groups[0]["lr"]`` at save time (``nan`` without optimizer).
        state: ``{state_dict key: cpu tensor clone}`` (the full state_dict unless the
            recorder was given ``params``).
        metrics: e.g. ``{"val_accuracy": ..., "train_loss": ...}``; empty for step
            checkpoints.
    """

    epoch: int
    step: int
    lr: float
    state: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)

    def filename(self) -> str:
        """``ckpt-epochXXXX-stepXXXXXXX.pt``."""
        return f"ckpt-epoch{self.epoch:04d}-step{self.step:07d}.pt"


class CheckpointRecorder:
    """Record model checkpoints at chosen epochs and / or optimizer steps.

    Args:
        epochs: explicit 1-based epoch numbers to save after. When given, ``every`` is
            ignored.
        every: save after every ``every``-th epoch (used only when ``epochs`` is None;
            ``None`` disables epoch checkpoints unless ``epochs`` is given).
        steps: optimizer step counts to save at (via :meth:`on_step_end`).
        params: save only these ``state_dict`` keys. ``None`` (default) saves the full
            state_dict, which is what gradients at a checkpoint need (they depend on all
            layers, not only the tracked ones).
        directory: if given, each checkpoint is also written there with ``torch.save`` as
            ``ckpt-epochXXXX-stepXXXXXXX.pt``.
    """

    def __init__(
        self,
        epochs: Iterable[int] | None = None,
        every: int | None = 1,
        steps: Iterable[int] | None = None,
        params: Sequence[str] | None = None,
        directory: str | Path | None = None,
    ) -> None:
        self.epochs: set[int] | None = None if epochs is None else {int(e) for e in epochs}
        if self.epochs is not None and any(e < 1 for e in self.epochs):
            raise ValueError(f"epochs are 1-based; got {sorted(self.epochs)}")
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be a positive integer or None, got {every!r}")
        self.every = every
        self.steps: set[int] = set() if steps is None else {int(s) for s in steps}
        if any(s < 1 for s in self.steps):
            raise ValueError(f"steps count optimizer steps from 1; got {sorted(self.steps)}")
        self.params: list[str] | None = None if params is None else list(params)
        if self.params is not None and not self.params:
            raise ValueError("params must name at least one state_dict key (or be None)")
        self.directory: Path | None = None if directory is None else Path(directory)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.checkpoints: list[Checkpoint] = []

    # ------------------------------------------------------------------ schedule
    def wants_epoch(self, epoch: int) -> bool:
        """Whether a checkpoint is due after ``epoch``."""
        if self.epochs is not None:
            return epoch in self.epochs
        return self.every is not None and epoch % self.every == 0

    def wants_step(self, step: int) -> bool:
        """Whether a checkpoint is due after optimizer step ``step``."""
        return step in self.steps

    # ------------------------------------------------------------------ hooks
    def on_epoch_end(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        epoch: int,
        step: int,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Call after each epoch (1-based) with the total optimizer step count so far."""
        if not self.wants_epoch(epoch):
            return
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        last = self.checkpoints[-1] if self.checkpoints else None
        if last is not None and last.epoch == epoch and last.step == step:
            # A step checkpoint of the same weights was just taken: attach the metrics.
            last.metrics.update(metrics)
            self._write(last)
            return
        self._save(model, optimizer, epoch, step, metrics)

    def on_step_end(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        epoch: int,
        step: int,
    ) -> None:
        """Call after each optimizer step; ``step`` counts steps from 1."""
        if self.wants_step(step):
            self._save(model, optimizer, epoch, step, {})

    # ------------------------------------------------------------------ saving
    def _state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        full = model.state_dict()
        keys = list(full) if self.params is None else self.params
        missing = [k for k in keys if k not in full]
        if missing:
            raise KeyError(f"params not in the model's state_dict: {missing}; have {list(full)}")
        return {k: full[k].detach().to("cpu", copy=True).clone() for k in keys}

    def _save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        epoch: int,
        step: int,
        metrics: dict[str, float],
    ) -> None:
        lr = float("nan") if optimizer is None else float(optimizer.param_groups[0]["lr"])
        ckpt = Checkpoint(
            epoch=int(epoch), step=int(step), lr=lr, state=self._state(model), metrics=metrics
        )
        self.checkpoints.append(ckpt)
        self._write(ckpt)

    def _write(self, ckpt: Checkpoint) -> None:
        if self.directory is None:
            return
        path = self.directory / ckpt.filename()
        tmp = path.with_suffix(".pt.tmp")
        payload = {
            "epoch": ckpt.epoch,
            "step": ckpt.step,
            "lr": ckpt.lr,
            "state": ckpt.state,
            "metrics": dict(ckpt.metrics),
        }
        torch.save(payload, tmp)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.checkpoints)

    def best(self, metric: str = "val_accuracy", mode: str = "max") -> Checkpoint:
        """The checkpoint with the best ``metric`` (earliest on ties; NaN values ignored)."""
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        cands = [
            c for c in self.checkpoints if metric in c.metrics and not math.isnan(c.metrics[metric])
        ]
        if not cands:
            have = sorted({k for c in self.checkpoints for k in c.metrics})
            raise ValueError(
                f"no checkpoint has metric {metric!r} "
                f"({len(self.checkpoints)} checkpoints; metrics recorded: {have})"
            )
        sign = 1.0 if mode == "max" else -1.0
        return max(cands, key=lambda c: sign * c.metrics[metric])

    def final(self) -> Checkpoint:
        """The most recently saved checkpoint."""
        if not self.checkpoints:
            raise ValueError("no checkpoints recorded")
        return self.checkpoints[-1]

    @staticmethod
    def load_into(model: nn.Module, checkpoint: Checkpoint) -> nn.Module:
        """Copy ``checkpoint.state`` into ``model`` in place and return ``model``.

        Strict when the checkpoint holds the full state_dict; non-strict (only the saved
        keys are overwritten) when it holds a ``params`` subset.
        """
        own = model.state_dict()
        unknown = [k for k in checkpoint.state if k not in own]
        if unknown:
            raise KeyError(f"checkpoint keys not in the model's state_dict: {unknown}")
        strict = set(checkpoint.state) == set(own)
        model.load_state_dict(checkpoint.state, strict=strict)
        return model

    @classmethod
    def from_directory(cls, directory: str | Path) -> CheckpointRecorder:
        """Reload the checkpoints written to ``directory``, ordered by (epoch, step).

        The returned recorder has no schedule (its hooks save nothing).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {directory}")
        files = []
        for p in directory.iterdir():
            m = _FILE_RE.match(p.name)
            if m:
                files.append((int(m.group(1)), int(m.group(2)), p))
        rec = cls(every=None, directory=None)
        rec.directory = directory
        for _, _, p in sorted(files):
            d = torch.load(p, map_location="cpu", weights_only=True)
            rec.checkpoints.append(
                Checkpoint(
                    epoch=int(d["epoch"]),
                    step=int(d["step"]),
                    lr=float(d["lr"]),
                    state=dict(d["state"]),
                    metrics={k: float(v) for k, v in d.get("metrics", {}).items()},
                )
            )
        return rec
