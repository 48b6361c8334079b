"""Hidden-state features of a transformer: the representation-similarity baseline.

:func:`mean_hidden_states` averages a layer's hidden states over each sample's real
(unmasked) tokens. The cosine similarity of these means between a test and a training
sample is the representation baseline of the influential-data benchmark (it uses no
gradients and no labels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gradsift.errors import GradsiftError
from gradsift.hf.tasks import model_inputs
from gradsift.progress import track

__all__ = ["cosine_scores", "mean_hidden_states"]


@torch.no_grad()
def mean_hidden_states(
    model: nn.Module,
    data: Dataset,
    collate_fn: Callable[[list[Any]], Any],
    batch_size: int = 16,
    layer: int = -1,
    causal: bool = True,
) -> np.ndarray:
    """Masked mean of ``hidden_states[layer]`` per sample: float32 ``[n, hidden]``.

    Batches are dicts with ``input_ids`` and ``attention_mask`` (other keys except
    ``labels`` are passed to the model). ``causal`` picks the attention mask type.
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    loader = DataLoader(data, batch_size=batch_size, collate_fn=collate_fn)
    try:
        for batch in track(loader, "hidden states", total=len(loader)):
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            mask = inputs.get("attention_mask")
            if mask is None:
                raise GradsiftError("mean_hidden_states needs an attention_mask in each batch")
            res = model(**model_inputs(model, inputs, causal=causal), output_hidden_states=True)
            hidden = res.hidden_states[layer].float()
            m = mask.to(hidden.dtype).unsqueeze(-1)
            out.append(((hidden * m).sum(1) / m.sum(1).clamp_min(1.0)).cpu().numpy())
    finally:
        model.train(was)
    return np.concatenate(out).astype(np.float32)


def cosine_scores(test: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Cosine similarity ``[n_test, n_train]`` of row vectors (float64)."""
    a = np.asarray(test, dtype=np.float64)
    b = np.asarray(train, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    return a @ b.T
