"""Checkpoint ensembles: combine detection scores over saved training checkpoints.

With gradients ``G_k`` (``[n, D_k]``) taken at checkpoints ``k`` with learning rates
``η_k``:

- ``mode="sum"``: a fresh detector per checkpoint, ``s = Σ_k η_k · t(s_k)`` where ``t``
  is the identity for additive detectors (``l1``, ``l2``, ``loss``) and a z-score
  ``(s_k − mean(s_k)) / std(s_k)`` for the others (``iforest``, pyod, ``random``), whose
  raw scales are not comparable across checkpoints. A checkpoint whose scores are
  constant contributes zeros. With ``l2`` the sum is exactly TracIn self-influence
  ``Σ_k η_k ‖g_k‖²``.
- ``mode="concat"``: one detector on ``[√η_1·G_1, …, √η_K·G_K]`` (column-wise). For ``l2``
  this equals ``sum``; for ``l1`` it gives ``Σ_k √η_k ‖g_k‖₁`` instead.

With ``contexts`` (one :class:`~gradsift.detect.context.DetectionContext` per checkpoint,
e.g. holding the model at that checkpoint), each checkpoint's detector is fitted with its
context, so the self-influence detectors take part like any other (``mode="sum"`` only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from .base import Detector, check_gradients, iter_row_blocks
from .context import DetectionContext
from .registry import get_detector

__all__ = ["ensemble_scores", "zscore"]


def zscore(scores: np.ndarray) -> np.ndarray:
    """``(s − mean) / std`` (population std) as float64; all zeros when ``s`` is constant."""
    s = np.asarray(scores, dtype=np.float64)
    std = s.std()
    if not np.isfinite(std) or std <= 0.0:
        return np.zeros_like(s)
    return (s - s.mean()) / std


def _factory(
    detector: str | Callable[[], Detector], kwargs: dict[str, Any]
) -> Callable[[], Detector]:
    if isinstance(detector, str):
        return lambda: get_detector(detector, **kwargs)
    if kwargs:
        raise TypeError("detector_kwargs are only used with a detector name, not a factory")
    return detector


def _check_weights(weights: Sequence[float], n_checkpoints: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n_checkpoints:
        raise ValueError(f"got {w.shape[0]} weights for {n_checkpoints} checkpoints")
    if n_checkpoints == 0:
        raise ValueError("need at least one checkpoint")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights (learning rates) must be finite and >= 0, got {w.tolist()}")
    return w


def _concat(grads: Sequence[np.ndarray], w: np.ndarray) -> np.ndarray:
    """Column-wise ``[√w_1·G_1, …]`` built in row blocks (float64 if any input is)."""
    mats = [check_gradients(g, name=f"grads[{k}]") for k, g in enumerate(grads)]
    n = mats[0].shape[0]
    if any(m.shape[0] != n for m in mats):
        raise ValueError(f"checkpoints have different row counts: {[m.shape[0] for m in mats]}")
    dtype = np.result_type(np.float32, *(m.dtype for m in mats))
    out = np.empty((n, sum(m.shape[1] for m in mats)), dtype=dtype)
    col = 0
    for m, wk in zip(mats, w, strict=True):
        scale = np.sqrt(wk)
        for start, block in iter_row_blocks(m):
            out[start : start + block.shape[0], col : col + m.shape[1]] = block * scale
        col += m.shape[1]
    return out


def ensemble_scores(
    detector: str | Callable[[], Detector],
    grads: Sequence[np.ndarray | None],
    losses: Sequence[np.ndarray | None] | None,
    weights: Sequence[float],
    mode: Literal["sum", "concat"] = "sum",
    *,
    contexts: Sequence[DetectionContext] | None = None,
    **detector_kwargs: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Learning-rate-weighted checkpoint ensemble of a detector.

    Args:
        detector: registered name (``"l2"``, ``"iforest"``, ``"pyod:copod"`` …) or a
            zero-argument factory returning a fresh :class:`Detector`.
        grads: per checkpoint, gradients ``[n, D_k]`` (None allowed only for detectors
            that do not need gradients).
        losses: per checkpoint, losses ``[n]`` (or None); required by ``loss``.
        weights: ``η_k >= 0`` per checkpoint (learning rates).
        mode: ``"sum"`` or ``"concat"`` (see module docstring).
        contexts: per checkpoint, the context its detector is fitted with (``"sum"``).
        **detector_kwargs: passed to :func:`get_detector` when ``detector`` is a name.

    Returns:
        ``(scores, settings)``: float64 ``[n]`` (higher = more suspicious) and a
        JSON-serialisable dict (mode, weights, standardised, per-checkpoint detector
        settings).
    """
    make = _factory(detector, detector_kwargs)
    w = _check_weights(weights, len(grads))
    if losses is not None and len(losses) != len(grads):
        raise ValueError(f"got {len(losses)} loss arrays for {len(grads)} checkpoints")
    loss_list = list(losses) if losses is not None else [None] * len(grads)
    if contexts is not None and len(contexts) != len(grads):
        raise ValueError(f"got {len(contexts)} contexts for {len(grads)} checkpoints")
    if mode == "sum":
        context_list = list(contexts) if contexts is not None else [None] * len(grads)
        return _sum_scores(make, grads, loss_list, w, context_list)
    if mode == "concat":
        return _concat_scores(make, grads, w)
    raise ValueError(f"mode must be 'sum' or 'concat', got {mode!r}")


def _sum_scores(
    make: Callable[[], Detector],
    grads: Sequence[np.ndarray | None],
    losses: Sequence[np.ndarray | None],
    w: np.ndarray,
    contexts: Sequence[DetectionContext | None],
) -> tuple[np.ndarray, dict[str, Any]]:
    total: np.ndarray | None = None
    per_checkpoint: list[dict[str, Any]] = []
    standardised = False
    for k, (g, loss, wk, ctx) in enumerate(zip(grads, losses, w, contexts, strict=True)):
        det = make()
        s = det.fit_score(g, loss, context=ctx)
        standardised = not det.additive
        s = zscore(s) if standardised else s
        if total is not None and s.shape != total.shape:
            raise ValueError(f"checkpoint {k} has {s.shape[0]} samples, expected {total.shape[0]}")
        total = wk * s if total is None else total + wk * s
        per_checkpoint.append(det.settings())
    assert total is not None
    settings = {
        "detector": per_checkpoint[0]["name"],
        "mode": "sum",
        "weights": w.tolist(),
        "standardised": standardised,
        "checkpoints": per_checkpoint,
    }
    return total, settings


def _concat_scores(
    make: Callable[[], Detector], grads: Sequence[np.ndarray | None], w: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    det = make()
    if det.needs_model:
        raise ValueError(
            f"mode='concat' concatenates gradients of different checkpoints; detector "
            f"{det.name!r} needs one model per gradient matrix (use mode='sum')"
        )
    if not det.needs_gradients:
        raise ValueError(
            f"mode='concat' concatenates gradients; detector {det.name!r} does not use them "
            "(use mode='sum')"
        )
    if any(g is None for g in grads):
        raise ValueError("mode='concat' needs gradients for every checkpoint")
    X = _concat(grads, w)  # type: ignore[arg-type]
    scores = det.fit_score(X)
    settings = {
        "detector": det.settings()["name"],
        "mode": "concat",
        "weights": w.tolist(),
        "standardised": False,
        "checkpoints": [det.settings()],
    }
    return scores, settings
