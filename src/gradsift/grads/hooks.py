"""Per-sample gradients of ``nn.Linear`` parameters from forward/backward hooks.

For a linear map ``y = x Wᵀ + b`` applied at positions ``t`` of sample ``i``, the
gradient of sample *i*'s own loss is

    ``∂ℓ_i/∂W = Σ_t δ_{i,t} x_{i,t}ᵀ``,   ``∂ℓ_i/∂b = Σ_t δ_{i,t}``,   ``δ_{i,t} = ∂ℓ_i/∂y_{i,t}``.

One forward pass records every ``x`` of the tracked linear modules; one backward pass of
``Σ_i ℓ_i`` records every ``δ`` (row *i* of it is ``∂ℓ_i/∂y_i`` because rows do not
interact in eval mode). The cost is about one training step, against B separate passes
for a per-sample loop; it also runs where ``torch.func.vmap`` cannot. LoRA adapters
(peft's ``lora_A``/``lora_B`` are ``nn.Linear``), classifier heads and projection
layers qualify; embeddings, norms or tied weights do not (use ``vmap`` or the loop).

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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradsift.errors import GradientError, GradsiftError
from gradsift.grads.layout import Block, batch_size_of, check_eval_mode, slice_batch
from gradsift.grads.projection import ProjectionConfig, Projector
from gradsift.progress import track
from gradsift.task import Task

__all__ = ["LinearHookGradients", "hook_gradients", "linear_targets"]


@dataclass(frozen=True)
class _Target:
    name: str  # parameter name
    module_name: str
    kind: str  # "weight" | "bias"


def linear_targets(model: nn.Module, params: dict[str, nn.Parameter]) -> list[_Target]:
    """Map each tracked parameter to its ``nn.Linear`` module; ``GradientError`` if one is
    not a linear weight or bias."""
    targets = []
    for name, p in params.items():
        module_name, _, kind = name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        if not isinstance(module, nn.Linear) or kind not in ("weight", "bias"):
            raise GradientError(
                f"tracked parameter {name!r} is not the weight or bias of an nn.Linear, so "
                "the hooks path cannot compute it; use GradientComputer (vmap or loop)"
            )
        if getattr(module, kind) is not p:
            raise GradientError(f"{name!r} is not the {kind} of module {module_name!r}")
        targets.append(_Target(name, module_name, kind))
    return targets


class _Recorder:
    """Forward hooks on the tracked linears: inputs, and output gradients via tensor hooks."""

    def __init__(self, model: nn.Module, module_names: list[str], n: int) -> None:
        self.n = n
        self.inputs: dict[str, list[torch.Tensor]] = {m: [] for m in module_names}
        self.deltas: dict[str, list[torch.Tensor | None]] = {m: [] for m in module_names}
        self.handles = [
            model.get_submodule(m).register_forward_hook(self._hook(m)) for m in module_names
        ]

    def _hook(self, module_name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            x = inputs[0]
            if x.dim() < 2 or x.shape[0] != self.n:
                raise GradientError(
                    f"module {module_name!r} got input of shape {tuple(x.shape)} whose first "
                    f"dimension is not the batch size {self.n}; the hooks path needs "
                    "[B, ..., features] inputs: use GradientComputer (vmap or loop)"
                )
            slot = len(self.deltas[module_name])
            self.inputs[module_name].append(x.detach())
            self.deltas[module_name].append(None)
            if out.requires_grad:

                def store(g: torch.Tensor) -> None:
                    self.deltas[module_name][slot] = g.detach()

                out.register_hook(store)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


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
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise GradsiftError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.model, self.task = model, task
        self.measurement, self.chunk_size, self.rtol = measurement, chunk_size, rtol
        self.params = task.tracked_parameters(model)
        self.targets = linear_targets(model, self.params)
        self.layout: list[Block] = []
        offset = 0
        for name, p in self.params.items():
            self.layout.append(Block(name, tuple(p.shape), offset))
            offset += p.numel()
        self.dim = offset

    @staticmethod
    def supports(model: nn.Module, task: Task) -> bool:
        """Whether every tracked parameter is a linear weight/bias (the path applies)."""
        try:
            linear_targets(model, task.tracked_parameters(model))
        except GradientError:
            return False
        return True

    def compute(self, batch: Any, first_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G [B, D] in the parameters' dtype, losses [B])`` for ``batch``."""
        check_eval_mode(self.model)
        n = batch_size_of(batch)
        if n == 0:
            raise GradientError("empty batch")
        rows, losses = [], []
        for start in range(0, n, self.chunk_size):
            part = slice_batch(batch, start, min(start + self.chunk_size, n))
            try:
                g, loss = self._chunk(part)
            except GradientError as err:
                if err.positions is None:
                    raise
                offset = first_index + start
                raise GradientError(err.base_message, [p + offset for p in err.positions]) from None
            rows.append(g)
            losses.append(loss)
        return torch.cat(rows), torch.cat(losses)

    # ------------------------------------------------------------------ internals
    def _objective(self, batch: Any) -> torch.Tensor:
        if self.measurement:
            with torch.no_grad():
                self.task.validate(self.task.forward(self.model, batch), batch)
            return self.task.measurement(self.model, batch)
        outputs = self.task.forward(self.model, batch)
        self.task.validate(outputs, batch)
        return self.task.loss(outputs, batch)

    def _chunk(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch_size_of(batch)
        tensors = list(self.params.values())
        flags = [p.requires_grad for p in tensors]
        modules = list(dict.fromkeys(t.module_name for t in self.targets))
        recorder = _Recorder(self.model, modules, n)
        try:
            for p in tensors:
                p.requires_grad_(True)
            with torch.enable_grad():
                losses = self._objective(batch)
                if losses.shape != (n,):
                    raise GradientError(
                        f"the task returned losses of shape {tuple(losses.shape)}, expected ({n},)"
                    )
                bad = (~torch.isfinite(losses)).nonzero().flatten()
                if len(bad):
                    raise GradientError("non-finite loss (NaN/Inf)", bad.tolist())
                batch_grads = torch.autograd.grad(losses.sum(), tensors, allow_unused=True)
        finally:
            recorder.remove()
            for p, flag in zip(tensors, flags, strict=True):
                p.requires_grad_(flag)
        parts = self._per_sample(recorder, n)
        G = torch.cat([parts[t.name].reshape(n, -1) for t in self.targets], dim=1)
        self._check_sum(parts, batch_grads)
        bad_rows = (~torch.isfinite(G).all(dim=1)).nonzero().flatten()
        if len(bad_rows):
            raise GradientError("non-finite gradient (NaN/Inf)", bad_rows.tolist())
        return G.detach(), losses.detach()

    def _per_sample(self, rec: _Recorder, n: int) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = {}
        for t in self.targets:
            p = self.params[t.name]
            acc = torch.zeros((n, *p.shape), dtype=p.dtype, device=p.device)
            for x, delta in zip(rec.inputs[t.module_name], rec.deltas[t.module_name], strict=True):
                if delta is None:  # this call did not influence the loss
                    continue
                d = delta.reshape(n, -1, delta.shape[-1]).to(p.dtype)
                if t.kind == "weight":
                    xs = x.reshape(n, -1, x.shape[-1]).to(p.dtype)
                    acc += torch.einsum("nlo,nli->noi", d, xs)
                else:
                    acc += d.sum(dim=1)
            parts[t.name] = acc
        return parts

    def _check_sum(
        self, parts: dict[str, torch.Tensor], batch_grads: tuple[torch.Tensor | None, ...]
    ) -> None:
        if self.rtol is None:
            return
        for t, ref in zip(self.targets, batch_grads, strict=True):
            total = parts[t.name].sum(dim=0)
            ref = torch.zeros_like(total) if ref is None else ref
            err = float((total - ref).norm())
            scale = float(ref.norm()) + float(total.norm()) + 1e-30
            if err > self.rtol * scale and err > 1e-12:
                raise GradientError(
                    f"per-sample gradients of {t.name!r} do not add up to its batch gradient "
                    f"(relative error {err / scale:.2e}): the weight is used outside its "
                    "module call (tied weights, functional use). Track other parameters or "
                    "use GradientComputer (vmap or loop)"
                )


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
    :class:`gradsift.grads.projection.Projector`), else ``D``.
    """
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise GradsiftError("the data set is empty: nothing to compute")
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
