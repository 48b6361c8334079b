"""The layout of a flat per-sample gradient row, and batch helpers every gradient path shares.

A row of ``G [B, D]`` concatenates the tracked parameters in ``named_parameters()`` order,
each flattened row-major; each parameter is one :class:`Block`. The batch helpers work on
any pytree of tensors whose leading dimension is the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_unflatten

from gradsift.errors import GradientError

__all__ = [
    "Block",
    "FunctionalModel",
    "batch_size_of",
    "check_eval_mode",
    "layout_of",
    "slice_batch",
]

_STATEFUL_IN_TRAIN = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd,
)


@dataclass(frozen=True)
class Block:
    """One tracked parameter's slice ``[offset, offset + numel)`` of a flat gradient row."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def stop(self) -> int:
        return self.offset + self.numel


def batch_size_of(batch: Any) -> int:
    leaves = [t for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor) and t.dim() > 0]
    if not leaves:
        raise GradientError("batch has no tensor with a batch dimension")
    return leaves[0].shape[0]


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of every tensor leaf that has the batch dimension."""
    n = batch_size_of(batch)
    leaves, spec = tree_flatten(batch)
    cut = [
        t[start:stop] if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == n else t
        for t in leaves
    ]
    return tree_unflatten(cut, spec)


def check_eval_mode(model: nn.Module) -> None:
    """Refuse BatchNorm / InstanceNorm / Dropout in train mode: per-sample gradients would
    then depend on the rest of the batch (or on random masks)."""
    offenders = [
        name or type(model).__name__
        for name, m in model.named_modules()
        if m.training and isinstance(m, _STATEFUL_IN_TRAIN)
    ]
    if offenders:
        raise GradientError(
            f"modules {offenders[:5]} are in train mode (BatchNorm/Dropout): per-sample gradients "
            "would depend on the batch or on random masks. Call model.eval() first."
        )


class FunctionalModel:
    """Callable stand-in for ``model`` that runs it with substituted parameters."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]) -> None:
        self.model, self.params = model, params

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.model, self.params, args, kwargs)

    def __getattr__(self, name: str) -> Any:  # e.g. model.config for HF models
        return getattr(self.model, name)


def layout_of(params: dict[str, nn.Parameter]) -> list[Block]:
    """One :class:`Block` per parameter, in the given order, offsets accumulating."""
    blocks, offset = [], 0
    for name, p in params.items():
        blocks.append(Block(name, tuple(p.shape), offset))
        offset += p.numel()
    return blocks
