"""Layer inputs ``a`` and output gradients ``δ`` of tracked layers, from one batched
forward/backward; shared by the per-sample hooks path (:mod:`gradsift.grads.hooks`) and the
factored projection (:mod:`gradsift.grads.kronecker`).

A tracked layer applied at positions ``t`` of sample *i* is seen in *sequence form*:
``a_{i,t}`` (its input features) and ``δ_{i,t} = ∂ℓ_i/∂y_{i,t}`` (the gradient of sample
*i*'s own loss w.r.t. its output there), so that

    ``∂ℓ_i/∂W = Σ_t δ_{i,t} a_{i,t}ᵀ``   (``W`` as a ``[d_out, d_in]`` matrix),
    ``∂ℓ_i/∂b = Σ_t δ_{i,t}``.

- ``nn.Linear``: ``x [B, ..., d_in]`` → ``a [B, T, d_in]`` (``T`` = all middle positions
  flattened), ``δ [B, T, d_out]``; ``W`` is the weight as stored.
- ``nn.Conv2d`` (``groups=1``, zero padding): ``a = unfold(x)ᵀ [B, L, C_in·kh·kw]`` (one
  patch per output position), ``δ [B, L, C_out]``; ``W`` is the weight
  ``[C_out, C_in, kh, kw]`` reshaped row-major to ``[C_out, C_in·kh·kw]``.

One backward pass of ``Σ_i ℓ_i`` gives every ``δ``: row *i* of it is ``∂ℓ_i/∂y_i`` as long
as the rows of a batch do not interact (eval mode, no batch statistics).

``δ`` is captured in one of two ways (:class:`LayerCapture`): a tensor hook on each output
(the backward also forms the parameters' batch gradients, which the hooks path checks
against), or, with ``edges=True``, as the gradient w.r.t. each output's autograd edge
(``torch.autograd.graph.get_gradient_edge``, recorded in the forward hook, so an in-place
op applied to the output later does not change it): the backward then stops at the
tracked layers' outputs and skips every weight-gradient product unless parameter
gradients are asked for too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from gradsift.errors import GradientError, GradsiftError
from gradsift.grads.layout import batch_size_of, slice_batch
from gradsift.task import Task

__all__ = ["Layer", "LayerCapture", "captured_backward", "check_sum", "chunked", "tracked_layers"]

#: ``(name, tensor [B, T, features]) -> stored tensor``: applied to ``a`` and ``δ`` as they
#: are recorded (the factored projection projects them at once).
Transform = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Layer:
    """A tracked ``nn.Linear``/``nn.Conv2d`` and the names of its tracked parameters."""

    module_name: str
    module: nn.Module
    weight: str | None  # tracked parameter name of its weight, None if untracked
    bias: str | None

    @property
    def d_out(self) -> int:
        return int(self.module.weight.shape[0])

    @property
    def d_in(self) -> int:
        """Input features per position (``C_in·kh·kw`` for a convolution)."""
        return int(self.module.weight[0].numel())


def tracked_layers(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    allowed: tuple[type[nn.Module], ...],
    what: str,
) -> list[Layer]:
    """Group tracked parameters by their layer (order of first appearance in ``params``).

    ``GradientError`` if a parameter is not the ``weight``/``bias`` of an ``allowed``
    module; ``what`` names the path in that message (e.g. ``"the hooks path"``).
    """
    found: dict[str, dict[str, Any]] = {}
    kinds = " or ".join(f"an nn.{cls.__name__}" for cls in allowed)
    for name, p in params.items():
        module_name, _, kind = name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        if not isinstance(module, allowed) or kind not in ("weight", "bias"):
            raise GradientError(
                f"tracked parameter {name!r} is not the weight or bias of {kinds}, so "
                f"{what} cannot compute it; use GradientComputer (vmap or loop)"
            )
        if getattr(module, kind) is not p:
            raise GradientError(f"{name!r} is not the {kind} of module {module_name!r}")
        if isinstance(module, nn.Conv2d):
            conv_padding(module)  # refuse what the capture cannot reproduce, early
        entry = found.setdefault(module_name, {"module": module, "weight": None, "bias": None})
        entry[kind] = name
    return [Layer(m, e["module"], e["weight"], e["bias"]) for m, e in found.items()]


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The explicit zero padding ``(ph, pw)`` of ``conv``; ``GradientError`` for what the
    capture cannot reproduce (``groups != 1``, non-zero padding modes, asymmetric
    ``'same'``)."""
    if conv.groups != 1 or conv.padding_mode != "zeros":
        raise GradientError(
            f"Conv2d with groups={conv.groups}, padding_mode={conv.padding_mode!r} is not "
            "supported by the factored path (needs groups=1, zero padding)"
        )
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            raise GradientError("Conv2d padding='same' with asymmetric padding is not supported")
        return (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)  # type: ignore[return-value]


def sequence_input(module: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
    """The layer input ``x`` in sequence form ``a [n, T, d_in]`` (see module docs)."""
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(
            x, module.kernel_size, module.dilation, conv_padding(module), module.stride
        )
        return patches.transpose(1, 2)
    return x.reshape(n, -1, x.shape[-1])


def sequence_grad(module: nn.Module, g: torch.Tensor, n: int) -> torch.Tensor:
    """The output gradient in sequence form ``δ [n, T, d_out]``."""
    if isinstance(module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(n, -1, g.shape[-1])


class LayerCapture:
    """Forward hooks on the tracked layers record ``a``, and ``δ`` is recorded during the
    backward pass. Use as a context manager (hooks removed on exit).

    ``calls[module_name]`` lists one ``[a, δ]`` pair per call of the module whose output
    requires grad (``δ`` stays ``None`` when that call did not influence the loss), after
    ``on_input`` / ``on_grad``. They receive the tensors in sequence form (see the module
    docs), or, with ``raw=True``, as the module saw them: its input ``x`` (first
    argument, detached) and the gradient w.r.t. its output, shaped like the output.

    With ``edges=False`` a tensor hook on each output records ``δ`` during any backward
    pass that reaches it; with ``edges=True`` the output's gradient edge is kept and
    :meth:`backward` computes every ``δ`` (no weight-gradient products unless asked for).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[Layer],
        n: int,
        on_input: Transform | None = None,
        on_grad: Transform | None = None,
        *,
        raw: bool = False,
        edges: bool = False,
    ) -> None:
        self.n, self.raw, self.edges = n, raw, edges
        self.on_input = on_input or (lambda _name, a: a)
        self.on_grad = on_grad or (lambda _name, d: d)
        self.calls: dict[str, list[list[torch.Tensor | None]]] = {
            layer.module_name: [] for layer in layers
        }
        self._edges: list[tuple[str, nn.Module, list[torch.Tensor | None], GradientEdge]] = []
        self.handles = [
            layer.module.register_forward_hook(self._hook(layer.module_name)) for layer in layers
        ]

    def pairs(self, module_name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(a, δ)`` of every call of the module that influenced the loss."""
        return [(a, d) for a, d in self.calls[module_name] if d is not None]  # type: ignore[misc]

    def backward(
        self, total: torch.Tensor, tensors: list[torch.Tensor]
    ) -> tuple[torch.Tensor | None, ...]:
        """``edges=True`` only: one backward of ``total`` to the recorded outputs (filling
        each call's ``δ``) and to ``tensors``; returns the gradients of ``tensors``
        (``None`` where unused). The weight-gradient products are skipped unless the
        weights are among ``tensors``."""
        if not self.edges:
            raise GradsiftError("LayerCapture.backward needs edges=True")
        inputs = [edge for *_, edge in self._edges] + list(tensors)
        grads = torch.autograd.grad(total, inputs, allow_unused=True) if inputs else ()
        for (name, module, call, _), g in zip(self._edges, grads, strict=False):
            if g is not None:
                call[1] = self.on_grad(name, self._grad_form(module, g.detach()))
        self._edges.clear()
        return tuple(grads[len(grads) - len(tensors) :]) if tensors else ()

    def _grad_form(self, module: nn.Module, g: torch.Tensor) -> torch.Tensor:
        return g if self.raw else sequence_grad(module, g, self.n)

    def _hook(self, module_name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            x = inputs[0]
            rank_ok = x.dim() == 4 if isinstance(module, nn.Conv2d) else x.dim() >= 2
            if not rank_ok or x.shape[0] != self.n:
                raise GradientError(
                    f"module {module_name!r} got input of shape {tuple(x.shape)} whose first "
                    f"dimension is not the batch size {self.n}; this path needs batched "
                    "inputs: use GradientComputer (vmap or loop)"
                )
            if not out.requires_grad:  # no gradient will reach it (e.g. under no_grad)
                return
            a = x.detach() if self.raw else sequence_input(module, x.detach(), self.n)
            call: list[torch.Tensor | None] = [self.on_input(module_name, a), None]
            self.calls[module_name].append(call)
            if self.edges:
                self._edges.append((module_name, module, call, get_gradient_edge(out)))
                return

            def store(g: torch.Tensor) -> None:
                call[1] = self.on_grad(module_name, self._grad_form(module, g.detach()))

            out.register_hook(store)

        return hook

    def __enter__(self) -> LayerCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def captured_backward(
    model: nn.Module,
    task: Task,
    params: dict[str, nn.Parameter],
    batch: Any,
    measurement: bool,
    capture: LayerCapture,
    param_grads: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """One forward/backward of ``Σ_i ℓ_i`` with ``capture``'s hooks installed.

    Returns ``(losses [B], batch gradient of each tracked parameter)``; the tracked
    parameters require grad during the call only. ``param_grads=False`` (needs
    ``capture.edges``) skips the parameter gradients: the tuple is then empty and the
    backward only forms the ``δ`` of the tracked layers. Non-finite losses raise
    ``GradientError`` naming the rows.
    """
    if not param_grads and not capture.edges:
        raise GradsiftError("param_grads=False needs a LayerCapture with edges=True")
    n = capture.n
    tensors = list(params.values())
    flags = [p.requires_grad for p in tensors]
    try:
        for p in tensors:
            p.requires_grad_(True)
        with torch.enable_grad(), capture:
            if measurement:
                with torch.no_grad():
                    task.validate(task.forward(model, batch), batch)
                losses = task.measurement(model, batch)
            else:
                outputs = task.forward(model, batch)
                task.validate(outputs, batch)
                losses = task.loss(outputs, batch)
            if losses.shape != (n,):
                raise GradientError(
                    f"the task returned losses of shape {tuple(losses.shape)}, expected ({n},)"
                )
            bad = (~torch.isfinite(losses)).nonzero().flatten()
            if len(bad):
                raise GradientError("non-finite loss (NaN/Inf)", bad.tolist())
            wanted = tensors if param_grads else []
            if capture.edges:
                batch_grads = capture.backward(losses.sum(), wanted)
            else:
                batch_grads = torch.autograd.grad(losses.sum(), wanted, allow_unused=True)
    finally:
        for p, flag in zip(tensors, flags, strict=True):
            p.requires_grad_(flag)
    return losses.detach(), batch_grads


def chunked(
    step: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
    batch: Any,
    chunk_size: int,
    first_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``step`` on row chunks of ``batch``; concatenate ``(rows, losses)``. Errors
    naming rows are re-raised with data-set indices (``first_index`` + row)."""
    n = batch_size_of(batch)
    if n == 0:
        raise GradientError("empty batch")
    rows, losses = [], []
    for start in range(0, n, chunk_size):
        part = slice_batch(batch, start, min(start + chunk_size, n))
        try:
            g, loss = step(part)
        except GradientError as err:
            if err.positions is None:
                raise
            offset = first_index + start
            raise GradientError(err.base_message, [p + offset for p in err.positions]) from None
        rows.append(g)
        losses.append(loss)
    if len(rows) == 1:  # no copy of a possibly wide block
        return rows[0], losses[0]
    return torch.cat(rows), torch.cat(losses)


def check_chunk_size(chunk_size: object) -> int:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise GradsiftError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size


def check_sum(name: str, total: torch.Tensor, ref: torch.Tensor | None, rtol: float) -> None:
    """``GradientError`` unless ``total`` (the sum of per-sample rows) matches ``ref`` (the
    batch gradient, in the same representation) to relative error ``rtol``."""
    ref = torch.zeros_like(total) if ref is None else ref
    err = float((total - ref).norm())
    scale = float(ref.norm()) + float(total.norm()) + 1e-30
    if err > rtol * scale and err > 1e-12:
        raise GradientError(
            f"per-sample gradients of {name!r} do not add up to its batch gradient "
            f"(relative error {err / scale:.2e}): the weight is used outside its "
            "module call (tied weights, functional use). Track other parameters or "
            "use GradientComputer (vmap or loop)"
        )


def finite_rows(G: torch.Tensor) -> torch.Tensor:
    """``G``, or ``GradientError`` naming its rows with NaN/Inf."""
    bad = (~torch.isfinite(G).all(dim=1)).nonzero().flatten()
    if len(bad):
        raise GradientError("non-finite gradient (NaN/Inf)", bad.tolist())
    return G
