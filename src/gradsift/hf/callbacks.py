"""Record checkpoints and learning rates during training, for TracIn-CP.

TracIn-CP scores ``Σ_k η_k g_t(θ_k)ᵀ g_i(θ_k)`` over saved checkpoints ``θ_k``, where
``η_k`` is the learning rate *used by the optimizer steps* that led to ``θ_k``. Both
helpers below read the learning rate when the optimizer steps, before any scheduler
moves it, and store checkpoints in a :class:`gradsift.checkpoints.CheckpointRecorder`:

- :class:`TracInCallback`: a Hugging Face ``Trainer`` callback;
- :class:`LoopCheckpointer`: for a plain PyTorch loop; it hooks ``optimizer.step`` so the
  loop only calls :meth:`LoopCheckpointer.end_epoch`.

By default only the *trainable* parameters are saved (``params="trainable"``): for LoRA
fine-tuning the frozen base weights never change, so saving them at every checkpoint
would waste memory; :meth:`CheckpointRecorder.load_into` then overwrites only the saved
keys. Pass ``params=None`` to save the full ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from gradsift.checkpoints import CheckpointRecorder
from gradsift.errors import GradsiftError

try:  # the plain-loop helper works without transformers
    from transformers import TrainerCallback as _CallbackBase
except ImportError:  # pragma: no cover - exercised only without transformers
    _CallbackBase = object  # type: ignore[assignment,misc]

__all__ = ["LoopCheckpointer", "TracInCallback", "trainable_state_keys"]

ParamSpec = Literal["trainable"] | Sequence[str] | None


def trainable_state_keys(model: nn.Module) -> list[str]:
    """``state_dict`` keys of the parameters with ``requires_grad`` (in state_dict order)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    keys = [k for k in model.state_dict() if k in trainable]
    if not keys:
        raise GradsiftError(f"{type(model).__name__} has no trainable parameter to checkpoint")
    return keys


class _LearningRate:
    """Stand-in optimizer for :class:`CheckpointRecorder`, holding the lr actually used."""

    def __init__(self, lr: float) -> None:
        self.param_groups = [{"lr": lr}]


def _make_recorder(
    model: nn.Module,
    params: ParamSpec,
    epochs: Iterable[int] | None,
    every: int | None,
    steps: Iterable[int] | None,
    directory: str | Path | None,
) -> CheckpointRecorder:
    keys = trainable_state_keys(model) if params == "trainable" else params
    return CheckpointRecorder(
        epochs=epochs, every=every, steps=steps, params=keys, directory=directory
    )


class TracInCallback(_CallbackBase):  # type: ignore[misc,valid-type]
    """``transformers.TrainerCallback`` saving checkpoints with the learning rate used.

    Args:
        every: save after every ``every``-th epoch (``None``: no epoch checkpoints unless
            ``epochs``); ``epochs``: explicit 1-based epochs; ``steps``: global optimizer
            steps to save at.
        params: ``"trainable"`` (default), ``None`` (full state_dict) or state_dict keys.
        directory: also write each checkpoint there (``ckpt-epochXXXX-stepXXXXXXX.pt``).

    After training, :attr:`recorder` holds the :class:`~gradsift.checkpoints.Checkpoint`\\ s;
    each has ``lr`` = the learning rate of the last optimizer step before it, and, for
    epoch checkpoints, ``metrics`` = the numbers last logged by the Trainer (e.g.
    ``loss``, ``eval_loss``).
    """

    def __init__(
        self,
        every: int | None = 1,
        epochs: Iterable[int] | None = None,
        steps: Iterable[int] | None = None,
        params: ParamSpec = "trainable",
        directory: str | Path | None = None,
    ) -> None:
        self._settings = (params, epochs, every, steps, directory)
        self._recorder: CheckpointRecorder | None = None
        self._lr = math.nan
        self._logs: dict[str, float] = {}

    @property
    def recorder(self) -> CheckpointRecorder:
        if self._recorder is None:
            raise GradsiftError("no checkpoints yet: the callback has not seen training begin")
        return self._recorder

    def _ensure(self, model: nn.Module | None) -> CheckpointRecorder:
        if self._recorder is None:
            if model is None:
                raise GradsiftError("the Trainer passed no model to the callback")
            params, epochs, every, steps, directory = self._settings
            self._recorder = _make_recorder(model, params, epochs, every, steps, directory)
        return self._recorder

    # Trainer events -------------------------------------------------------------------
    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        self._ensure(model)

    def on_optimizer_step(
        self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any
    ) -> None:
        if optimizer is not None:  # before the scheduler steps: the lr this step used
            self._lr = float(optimizer.param_groups[0]["lr"])

    def on_step_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        epoch = max(1, math.ceil(float(state.epoch or 0.0) - 1e-9))
        self._ensure(model).on_step_end(model, _LearningRate(self._lr), epoch, state.global_step)

    def on_epoch_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        epoch = max(1, int(round(float(state.epoch or 0.0))))
        self._ensure(model).on_epoch_end(
            model, _LearningRate(self._lr), epoch, state.global_step, dict(self._logs)
        )

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        for k, v in (logs or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._logs[k] = float(v)


class LoopCheckpointer:
    """Checkpoints for a plain training loop, driven by the optimizer's step hooks.

    Every ``optimizer.step()`` counts one step and remembers the learning rate it used;
    due step checkpoints are saved right after it. Call :meth:`end_epoch` after each
    epoch. Use as a context manager (or call :meth:`close`) to remove the hooks::

        with LoopCheckpointer(model, optimizer, every=1) as ckpt:
            for epoch in range(epochs):
                for batch in loader:
                    loss = ...; loss.backward(); optimizer.step(); scheduler.step()
                ckpt.end_epoch({"val_loss": v})
        checkpoints = ckpt.recorder.checkpoints

    Args: as :class:`TracInCallback`; ``recorder`` may be given instead of the schedule.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        every: int | None = 1,
        epochs: Iterable[int] | None = None,
        steps: Iterable[int] | None = None,
        params: ParamSpec = "trainable",
        directory: str | Path | None = None,
        recorder: CheckpointRecorder | None = None,
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.recorder = (
            recorder
            if recorder is not None
            else _make_recorder(model, params, epochs, every, steps, directory)
        )
        self.epoch, self.step, self.lr = 1, 0, math.nan
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    def _before_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self.lr = float(optimizer.param_groups[0]["lr"])

    def _after_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self.step += 1
        self.recorder.on_step_end(self.model, _LearningRate(self.lr), self.epoch, self.step)

    def end_epoch(self, metrics: dict[str, float] | None = None) -> None:
        """Save the epoch checkpoint if due, then start the next epoch."""
        self.recorder.on_epoch_end(
            self.model, _LearningRate(self.lr), self.epoch, self.step, metrics
        )
        self.epoch += 1

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> LoopCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
