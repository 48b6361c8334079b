"""Per-sample gradients of ``nn.Linear`` parameters from forward/backward hooks.

For a linear map ``y = x Wᵀ + b`` applied at positions ``t`` of sample ``i``, the
gradient of sample *i*'s own loss is

    ``∂ℓ_i/∂W = Σ_t δ_{i,t} x_{i,t}ᵀ``,   ``∂ℓ_i/∂b = Σ_t δ_{i,t}``,   ``δ_{i,t} = ∂ℓ_i/∂y_{i,t}``.

One forward pass records every ``x`` of the tracked linear modules; one backward pass of
``Σ_i ℓ_i`` records every ``δ`` (row *i* of it is ``∂ℓ_i/∂y_i`` because rows do not
interact in eval mode); the capture is :mod:`gradsift.grads.capture`. The cost is about
one training step, against B separate passes for a per-sample loop; it also runs where
``torch.func.vmap`` cannot. LoRA adapters (peft's ``lora_A``/``lora_B`` are
``nn.Linear``), classifier heads and projection layers qualify; embeddings, norms or tied
weights do not (use ``vmap`` or the loop). To project without ever forming the
per-sample gradient, see :mod:`gradsift.grads.kronecker`.

Checks, so that a wrong answer cannot pass silently:

- each tracked parameter must be the ``weight``/``bias`` of an ``nn.Linear`` module;
- each recorded input must have the batch size as its first dimension;
- ``Σ_i g_i`` must equal the batch gradient from the same backward pass (relative
  error ≤ ``rtol``); a weight also used outside its module call (e.g. tied to an
  embedding) fails this.

The rows must be independent (true for transformers in eval mode: attention never mixes
samples); the sum check cannot detect models that mix rows of a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradsift.errors import GradientError, GradsiftError
from gradsift.grads.capture import (
    LayerCapture,
    captured_backward,
    check_chunk_size,
    check_sum,
    chunked,
    finite_rows,
    tracked_layers,
)
from gradsift.grads.kronecker import FactoredProjector
from gradsift.grads.layout import Block, batch_size_of, check_eval_mode, layout_of
from gradsift.grads.projection import ProjectionConfig, Projector
from gradsift.progress import track
from gradsift.task import Task

__all__ = ["LinearHookGradients", "hook_gradients"]

_WHAT = "the hooks path"


class LinearHookGradients:
    """Per-sample gradients ``G [B, D]`` of tracked ``nn.Linear`` parameters via hooks.

    Same contract and layout as :class:`gradsift.grads.computer.GradientComputer`: row *i* is
    ``∇_θ ℓ(z_i; θ)`` (not divided by B), blocks in ``task.tracked_parameters`` order.

    Args:
        model: the model, in eval mode (Dropout/BatchNorm in train mode are refused).
        task: gives the per-sample losses and the tracked parameters.
        measurement: differentiate ``task.measurement`` (test side of influence).
        chunk_size: samples per forward/backward pass (memory ∝ chunk_size × activations).
        rtol: tolerance of the ``Σ_i g_i`` = batch-gradient check (``None`` skips it).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        measurement: bool = False,
        chunk_size: int = 32,
        rtol: float | None = 1e-3,
    ) -> None:
        self.model, self.task = model, task
        self.measurement, self.chunk_size = measurement, check_chunk_size(chunk_size)
        self.rtol = rtol
        self.params = task.tracked_parameters(model)
        self.layers = tracked_layers(model, self.params, (nn.Linear,), _WHAT)
        self.layout: list[Block] = layout_of(self.params)
        self.dim = self.layout[-1].stop

    @staticmethod
    def supports(model: nn.Module, task: Task) -> bool:
        """Whether every tracked parameter is a linear weight/bias (the path applies)."""
        try:
            tracked_layers(model, task.tracked_parameters(model), (nn.Linear,), _WHAT)
        except GradientError:
            return False
        return True

    def compute(self, batch: Any, first_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G [B, D] in the parameters' dtype, losses [B])`` for ``batch``."""
        check_eval_mode(self.model)
        return chunked(self._chunk, batch, self.chunk_size, first_index)

    # ------------------------------------------------------------------ internals
    def _chunk(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch_size_of(batch)
        capture = LayerCapture(self.model, self.layers, n)
        losses, batch_grads = captured_backward(
            self.model, self.task, self.params, batch, self.measurement, capture
        )
        parts = self._per_sample(capture, n)
        G = torch.cat([parts[name].reshape(n, -1) for name in self.params], dim=1)
        if self.rtol is not None:
            for name, ref in zip(self.params, batch_grads, strict=True):
                check_sum(name, parts[name].sum(dim=0), ref, self.rtol)
        return finite_rows(G).detach(), losses

    def _per_sample(self, capture: LayerCapture, n: int) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            pairs = capture.pairs(layer.module_name)
            for kind, name in (("weight", layer.weight), ("bias", layer.bias)):
                if name is None:
                    continue
                p = self.params[name]
                acc = torch.zeros((n, *p.shape), dtype=p.dtype, device=p.device)
                for a, delta in pairs:
                    d = delta.to(p.dtype)
                    if kind == "weight":
                        acc += torch.einsum("nlo,nli->noi", d, a.to(p.dtype))
                    else:
                        acc += d.sum(dim=1)
                parts[name] = acc
        return parts


def hook_gradients(
    model: nn.Module,
    task: Task,
    data: Dataset,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    batch_size: int = 32,
    projection: ProjectionConfig | None = None,
    measurement: bool = False,
    description: str = "per-sample gradients (hooks)",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample gradients of every row of ``data`` via hooks, in memory.

    Returns ``(G [n, D'] float32, losses [n] float64)`` where ``D'`` is the projected
    dimension when ``projection`` is given (per-block projection as in
    :class:`gradsift.grads.projection.Projector`, or, for ``kind="kronecker"``, the
    factored projection of :class:`gradsift.grads.kronecker.FactoredProjector`, which also
    takes ``nn.Conv2d`` layers and never forms ``G``), else ``D``.
    """
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise GradsiftError("the data set is empty: nothing to compute")
    computer: LinearHookGradients | FactoredProjector
    projector = None
    if projection is not None and projection.kind == "kronecker":
        computer = FactoredProjector(model, task, projection, measurement, chunk_size=batch_size)
    else:
        computer = LinearHookGradients(model, task, measurement, chunk_size=batch_size)
        projector = Projector(computer.layout, projection) if projection else None
    rows, losses = [], []
    starts = range(0, n, batch_size)
    for b in track(starts, description, total=len(starts)):
        batch = collate_fn([data[i] for i in range(b, min(b + batch_size, n))])
        G, loss = computer.compute(batch, first_index=b)
        if projector is not None:
            G = projector.project(G)
        rows.append(G.detach().float().cpu().numpy())
        losses.append(loss.detach().double().cpu().numpy())
    return np.concatenate(rows), np.concatenate(losses)
