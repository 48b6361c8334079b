"""FastIF candidate selection helpers: penultimate features and merged candidate lists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradsift.errors import GradsiftError
from gradsift.influence.hessian import BatchSource
from gradsift.task import Task, last_linear

__all__ = ["batch_source", "merge_candidates", "penultimate_features"]


def penultimate_features(
    model: nn.Module,
    task: Task,
    data: Dataset | tuple[Any, ...] | BatchSource,
    batch_size: int = 1024,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
) -> np.ndarray:
    """Inputs of the model's last ``nn.Linear`` (its head): float32 ``[n, h]``.

    Runs ``task.forward`` in batches under ``no_grad`` with a forward hook; the model
    must be in eval mode if it has BatchNorm or Dropout.
    """
    source = data if isinstance(data, BatchSource) else batch_source(model, data, collate_fn)
    name, head = last_linear(model)
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach()))
    rows = []
    try:
        with torch.no_grad():
            for _, batch in source.batches(batch_size):
                seen.clear()
                task.forward(model, batch)
                if len(seen) != 1:
                    raise GradsiftError(
                        f"the head {name!r} ran {len(seen)} times in one forward pass; "
                        "penultimate features need exactly one call (use space='gradients')"
                    )
                rows.append(seen[0].reshape(seen[0].shape[0], -1).float().cpu())
    finally:
        handle.remove()
    return torch.cat(rows).numpy()


def batch_source(
    model: nn.Module, data: Dataset | tuple[Any, ...], collate_fn: Callable[[list[Any]], Any]
) -> BatchSource:
    """``data`` as a :class:`BatchSource` on the model's device, in its parameters' dtype."""
    first = next(iter(model.parameters()))
    return BatchSource(data, first.device, first.dtype, collate_fn)


def merge_candidates(up: np.ndarray, down: np.ndarray, k: int) -> np.ndarray:
    """Per row: ``up`` then ``down`` without duplicates, padded with ``-1`` to ``k``."""
    out = np.full((len(up), k), -1, dtype=np.int64)
    for t in range(len(up)):
        row = np.concatenate([up[t], down[t]])
        row = row[row >= 0]
        _, first = np.unique(row, return_index=True)
        keep = row[np.sort(first)][:k]
        out[t, : len(keep)] = keep
    return out
