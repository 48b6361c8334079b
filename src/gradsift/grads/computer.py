"""Per-sample gradients of the tracked parameters.

Three paths, all returning ``G`` of shape ``[B, D]`` (row *i* is ``∇_θ ℓ(z_i; θ)`` of sample
*i*'s own loss, flattened in :attr:`GradientComputer.layout` order):

- ``closed_form``: for a final linear head under softmax cross-entropy or sigmoid BCE,
  ``∂ℓ/∂W = (p − e_y) hᵀ`` and ``∂ℓ/∂b = p − e_y`` from one forward pass with a hook on
  the head's input ``h``. Exact, and as cheap as inference.
- ``vmap``: ``torch.func.vmap(grad(loss))`` over ``functional_call``, in chunks of
  ``chunk_size`` samples to bound memory. Any subset of parameters.
- ``hooks``: for tracked ``nn.Linear`` weights and biases (LoRA adapters, heads), one
  batched forward/backward with hooks, ``∂ℓ_i/∂W = Σ_t δ_{i,t} x_{i,t}ᵀ``
  (:mod:`gradsift.grads.hooks`). About the cost of a training step, and it runs where ``vmap``
  cannot. Exact only when the rows of a batch do not interact.
- ``loop``: one ``torch.autograd.grad`` per sample. Slow; the fallback for models that
  ``vmap`` cannot run (data-dependent control flow, some in-place ops).

``method="auto"`` takes the closed form when it is exact; else ``hooks`` when the task
declares ``rows_independent`` and every tracked parameter is a linear weight or bias;
else ``vmap``, falling back to ``loop`` with a warning if ``vmap`` rejects the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.func import grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from gradsift.errors import GradientError
from gradsift.grads.hooks import LinearHookGradients
from gradsift.grads.layout import (
    FunctionalModel,
    batch_size_of,
    check_eval_mode,
    layout_of,
    slice_batch,
)
from gradsift.task import Task, last_linear

Method = Literal["auto", "closed_form", "hooks", "vmap", "loop"]


class GradientComputer:
    """Per-sample gradients of ``task``'s loss w.r.t. the tracked parameters of ``model``.

    Args:
        model: the trained model. It is not modified; it must be in eval mode if it has
            BatchNorm or Dropout.
        task: loss, forward and tracked-parameter spec.
        method: ``auto`` | ``closed_form`` | ``hooks`` | ``vmap`` | ``loop`` (see the
            module docstring).
        chunk_size: samples per ``vmap`` call (memory ∝ chunk_size × D), or per
            forward/backward pass of the ``hooks`` path.
        measurement: differentiate ``task.measurement`` instead of the training loss
            (the test side of influence).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        method: Method = "auto",
        chunk_size: int = 64,
        measurement: bool = False,
    ) -> None:
        self.model = model
        self.task = task
        self.chunk_size = chunk_size
        self.measurement = measurement
        self.params = task.tracked_parameters(model)
        self.layout = layout_of(self.params)
        self.dim = self.layout[-1].stop
        self.method = self._resolve(method)

    # -- public -----------------------------------------------------------------------
    def compute(self, batch: Any, first_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(G, losses)``: G ``[B, D]`` in the parameters' dtype, losses ``[B]``.

        ``first_index`` is the data-set index of the batch's first row; errors about bad
        samples (NaN loss, label out of range) name data-set indices with it.
        """
        try:
            return self._compute(batch)
        except GradientError as err:
            if err.positions is not None and first_index:
                raise GradientError(
                    err.base_message, [p + first_index for p in err.positions]
                ) from None
            raise

    def _compute(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        check_eval_mode(self.model)
        n = batch_size_of(batch)
        if n == 0:
            raise GradientError("empty batch")
        if self.method == "hooks":
            return self._hooks.compute(batch)
        if self.method == "closed_form":
            try:
                return self._closed_form(batch)
            except _NotHeadOutput as err:
                if self._requested == "closed_form":
                    raise GradientError(str(err)) from None
                self.method = "vmap"  # auto: the model post-processes the head output
        losses = self._checked_losses(batch)
        if self.method == "loop":
            return self._loop(batch), losses
        try:
            return self._vmap(batch), losses
        except GradientError:
            raise
        except RuntimeError as err:
            if self._requested == "vmap":
                raise GradientError(
                    f"torch.func.vmap cannot run this model ({type(err).__name__}: {str(err).splitlines()[0]}). "
                    "Common causes: in-place ops on inputs, .item()/data-dependent control flow, "
                    "BatchNorm in train mode. Use method='loop' (slower) or method='auto'."
                ) from err
            warnings.warn(
                f"vmap failed ({str(err).splitlines()[0]}); falling back to a per-sample loop",
                stacklevel=2,
            )
            self.method = "loop"
            return self._loop(batch), losses

    # -- method selection ---------------------------------------------------------------
    def _resolve(self, method: Method) -> str:
        self._requested = method
        ok, why = self._closed_form_possible()
        if method == "closed_form" and not ok:
            raise GradientError(f"closed-form gradients are not exact here: {why}")
        if method == "auto" and ok:
            return "closed_form"
        if method == "hooks" or (method == "auto" and self._hooks_fit()):
            self._hooks = LinearHookGradients(
                self.model, self.task, self.measurement, self.chunk_size
            )
            return "hooks"
        return "vmap" if method == "auto" else method

    def _hooks_fit(self) -> bool:
        """auto: the hooks path is exact (rows independent, only linear parameters)."""
        return self.task.rows_independent and (LinearHookGradients.supports(self.model, self.task))

    def _closed_form_possible(self) -> tuple[bool, str]:
        if self.measurement and type(self.task).measurement is not Task.measurement:
            return False, "the task overrides measurement()"
        if not self.task.closed_form_exact():
            return False, "the task's loss is not the built-in softmax-CE/BCE loss"
        self._head = head_name, head = last_linear(self.model)
        head_params = [f"{head_name}.{n}" for n, _ in head.named_parameters()]
        if not set(self.params) <= set(head_params) or f"{head_name}.weight" not in self.params:
            return False, f"tracked parameters {list(self.params)} are not the head {head_name!r}"
        return True, ""

    # -- paths -----------------------------------------------------------------------------
    def _objective(self, model: Callable[..., Any], batch: Any) -> torch.Tensor:
        if self.measurement:
            return self.task.measurement(model, batch)
        return self.task.per_sample_loss(model, batch)

    def _checked_losses(self, batch: Any) -> torch.Tensor:
        with torch.no_grad():
            outputs = self.task.forward(self.model, batch)
            self.task.validate(outputs, batch)
            losses = (
                self.task.measurement(self.model, batch)
                if self.measurement
                else self.task.loss(outputs, batch)
            )
        _check_finite(losses, "loss")
        return losses.detach()

    def _closed_form(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        head_name, head = self._head
        seen: dict[str, torch.Tensor] = {}

        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen["h"], seen["out"] = inputs[0], out

        handle = head.register_forward_hook(hook)
        try:
            with torch.no_grad():
                outputs = self.task.forward(self.model, batch)
        finally:
            handle.remove()
        if outputs is not seen.get("out") or seen["h"].dim() != 2:
            raise _NotHeadOutput(
                f"closed form needs the model output to be the head {head_name!r} output on 2-D "
                "features; use method='vmap'"
            )
        self.task.validate(outputs, batch)
        losses = self.task.loss(outputs, batch)
        _check_finite(losses, "loss")
        h, y = seen["h"], self.task.targets(batch)
        if self.task.head_loss == "softmax_ce":
            residual = torch.softmax(outputs, dim=-1)
            residual[torch.arange(len(y)), y] -= 1.0
        else:
            residual = torch.sigmoid(outputs).reshape(len(y), 1) - y.to(outputs.dtype).reshape(
                -1, 1
            )
        parts = {
            f"{head_name}.weight": (residual[:, :, None] * h[:, None, :]).flatten(1),
            f"{head_name}.bias": residual,
        }
        G = torch.cat([parts[name] for name in self.params], dim=1)
        return G, losses

    def _vmap(self, batch: Any) -> torch.Tensor:
        params = {k: v.detach() for k, v in self.params.items()}
        leaves, spec = tree_flatten(batch)
        n = batch_size_of(batch)
        mapped = [isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == n for t in leaves]

        def one_sample_loss(
            p: dict[str, torch.Tensor], *sample_leaves: torch.Tensor
        ) -> torch.Tensor:
            it = iter(sample_leaves)
            full = [
                next(it).unsqueeze(0) if m else leaf for m, leaf in zip(mapped, leaves, strict=True)
            ]
            sample = tree_unflatten(full, spec)
            proxy = FunctionalModel(self.model, p)
            return self._objective(proxy, sample).sum()

        per_sample = vmap(grad(one_sample_loss), in_dims=(None, *([0] * sum(mapped))))
        chunks = []
        for start in range(0, n, self.chunk_size):
            stop = min(start + self.chunk_size, n)
            sample_leaves = [t[start:stop] for t, m in zip(leaves, mapped, strict=True) if m]
            with torch.no_grad():  # torch.func.grad ignores it; keeps outer autograd out
                g = per_sample(params, *sample_leaves)
            chunks.append(
                torch.cat([g[name].reshape(stop - start, -1) for name in self.params], dim=1)
            )
        G = torch.cat(chunks)
        _check_finite_rows(G)
        return G

    def _loop(self, batch: Any) -> torch.Tensor:
        n = batch_size_of(batch)
        tensors = list(self.params.values())
        rows = []
        for i in range(n):
            loss = self._objective(self.model, slice_batch(batch, i, i + 1)).sum()
            gs = torch.autograd.grad(loss, tensors, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(t) if g is None else g).reshape(-1)
                        for g, t in zip(gs, tensors, strict=True)
                    ]
                )
            )
        G = torch.stack(rows)
        _check_finite_rows(G)
        return G


class _NotHeadOutput(Exception):
    pass


def _check_finite(values: torch.Tensor, what: str) -> None:
    bad = (~torch.isfinite(values)).nonzero().flatten()
    if len(bad):
        raise GradientError(f"non-finite {what} (NaN/Inf)", bad.tolist())


def _check_finite_rows(G: torch.Tensor) -> None:
    bad = (~torch.isfinite(G).all(dim=1)).nonzero().flatten()
    if len(bad):
        raise GradientError("non-finite gradient (NaN/Inf)", bad.tolist())
