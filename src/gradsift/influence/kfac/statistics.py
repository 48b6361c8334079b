"""Per-batch layer statistics for K-FAC: augmented inputs ``ã`` and output gradients ``δ``.

For every tracked ``nn.Linear`` / ``nn.Conv2d`` layer (:func:`gradsift.grads.capture.tracked_layers`)
one batched forward records the inputs ``a [B, T, d_in]`` in sequence form (``T`` = 1 for
a plain linear layer, the unfolded patch positions of a convolution, the tokens of a
sequence; several calls of one module are concatenated along ``T``) and one backward per
output-gradient column records ``δ [B, T, d_out]``
(:class:`gradsift.grads.capture.LayerCapture`). The input is *augmented* to the tracked
part of ``[W | b]``: ``ã = [a, 1]`` with both tracked, ``a`` with the weight only, ``1``
with the bias only, so that the layer's tracked gradient is ``Σ_t δ_t ãᵀ_t`` as one
``[d_out, cols]`` matrix.

What is back-propagated from the outputs ``f`` (``fisher``):

- ``"sampled"``: ``∂ℓ(ŷ)/∂f`` with one label ``ŷ ~ p(· | f)`` per sample drawn from the
  model's predictive distribution — a one-sample Monte-Carlo estimate of the **true
  Fisher**, which is the GGN for the likelihoods here (``E_ŷ[δδᵀ] = Jᵀ H_out J``, the
  curvature K-FAC is derived for); one backward pass (what kronfluence does).
- ``"exact"``: the ``K`` columns of ``H_out^{1/2}`` (``K = C`` classes for softmax, 1 for
  BCE, ``C`` outputs for ``mse``): the same expectation in closed form, no sampling noise,
  ``K`` backward passes.
- ``"auto"`` (default): ``"exact"`` when ``K ≤`` :data:`AUTO_EXACT_MAX_COLUMNS` (a cost
  cap: at most that many backward passes per batch in the fitting passes), otherwise
  ``"sampled"`` — e.g. exact for 10-class classifiers and any BCE head, sampled for a
  language model's vocabulary. The one-label noise is not small: on the digits MLP
  (``benchmarks/kfac_gap.py``) it costs EK-FAC 0.037 LDS and K-FAC 0.057.
- ``"empirical"``: ``∂ℓ(y)/∂f`` with the given labels (the empirical Fisher; any task
  loss, masks included). Biased towards the training gradients; zero at interpolation.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from gradsift.errors import GradsiftError
from gradsift.grads.capture import Layer, LayerCapture
from gradsift.grads.layout import batch_size_of
from gradsift.influence.kfac.likelihood import hessian_sqrt_columns, sample_output_gradient
from gradsift.task import Task

__all__ = [
    "AUTO_EXACT_MAX_COLUMNS",
    "FISHER_KINDS",
    "FisherKind",
    "LayerStats",
    "layer_statistics",
    "resolve_fisher",
]

FisherKind = Literal["auto", "sampled", "exact", "empirical"]
FISHER_KINDS: tuple[str, ...] = ("auto", "sampled", "exact", "empirical")
#: ``fisher="auto"``: the largest number of output-Hessian square-root columns (backward
#: passes per batch) for which the exact Fisher is used instead of one sampled label.
AUTO_EXACT_MAX_COLUMNS: int = 16

#: ``{module name: (ã [B, T, cols], [δ_k [B, T, d_out] for each output-gradient column])}``
LayerStats = dict[str, tuple[torch.Tensor, list[torch.Tensor]]]


def layer_statistics(
    model: nn.Module,
    task: Task,
    layers: list[Layer],
    params: dict[str, nn.Parameter],
    batch: Any,
    fisher: str,
    likelihood: str,
    generator: torch.Generator,
) -> LayerStats:
    """``ã`` and ``δ`` of every tracked layer for ``batch`` (float64, detached).

    ``generator`` (CPU) draws the labels of ``fisher="sampled"``. A layer whose output
    does not reach the loss is left out.
    """
    n = batch_size_of(batch)
    tensors = list(params.values())
    flags = [p.requires_grad for p in tensors]
    found: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}
    try:
        for p in tensors:
            p.requires_grad_(True)
        with torch.enable_grad(), LayerCapture(model, layers, n) as capture:
            outputs = task.forward(model, batch)
            columns = _output_gradients(task, outputs, batch, fisher, likelihood, generator)
            for k, column in enumerate(columns):
                torch.autograd.grad(
                    outputs,
                    tensors,
                    grad_outputs=column,
                    retain_graph=k < len(columns) - 1,
                    allow_unused=True,
                )
                for layer in layers:
                    pairs = capture.pairs(layer.module_name)
                    if not pairs:
                        continue
                    delta = torch.cat([d for _, d in pairs], dim=1).double()
                    if layer.module_name not in found:
                        a = torch.cat([a for a, _ in pairs], dim=1).double()
                        found[layer.module_name] = (_augment(layer, a), [])
                    found[layer.module_name][1].append(delta)
    finally:
        for p, flag in zip(tensors, flags, strict=True):
            p.requires_grad_(flag)
    return found


def resolve_fisher(fisher: str, likelihood: str, outputs: torch.Tensor) -> str:
    """The Fisher kind to fit: ``fisher`` itself, or for ``"auto"`` ``"exact"`` when the
    likelihood's ``H_out^{1/2}`` of ``outputs [..., C]`` has at most
    :data:`AUTO_EXACT_MAX_COLUMNS` columns (``bce``: 1; ``softmax_ce``, ``mse``: ``C``) and
    ``"sampled"`` otherwise (outputs ``[B]`` of one output: 1 column)."""
    if fisher not in FISHER_KINDS:
        raise GradsiftError(f"fisher must be one of {FISHER_KINDS}, got {fisher!r}")
    if fisher != "auto":
        return fisher
    columns = 1 if likelihood == "bce" or outputs.dim() < 2 else int(outputs.shape[-1])
    return "exact" if columns <= AUTO_EXACT_MAX_COLUMNS else "sampled"


def _output_gradients(
    task: Task,
    outputs: torch.Tensor,
    batch: Any,
    fisher: str,
    likelihood: str,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """The vectors back-propagated from ``outputs`` (one backward pass each)."""
    if not isinstance(outputs, torch.Tensor):
        raise GradsiftError("K-FAC needs task.forward to return one tensor of outputs")
    task.validate(outputs.detach(), batch)
    fisher = resolve_fisher(fisher, likelihood, outputs)
    if fisher == "sampled":
        return [sample_output_gradient(likelihood, outputs.detach(), generator)]
    if fisher == "exact":
        return hessian_sqrt_columns(likelihood, outputs.detach())
    if fisher == "empirical":
        losses = task.loss(outputs, batch)
        return [torch.autograd.grad(losses.sum(), outputs, retain_graph=True)[0].detach()]
    raise GradsiftError(f"fisher must be one of {FISHER_KINDS}, got {fisher!r}")


def _augment(layer: Layer, a: torch.Tensor) -> torch.Tensor:
    """``ã``: the weight's input columns (if tracked) and a column of ones (if the bias is)."""
    parts = [a] if layer.weight is not None else []
    if layer.bias is not None:
        parts.append(torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device))
    return torch.cat(parts, dim=-1)
