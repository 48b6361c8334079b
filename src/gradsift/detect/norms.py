"""Stateless detectors: gradient norms (``l1``, ``l2``) and baselines (``loss``, ``random``).

Norms are computed in row blocks (float64 accumulation), so a memory-mapped ``X`` is
streamed and never copied whole. All scores are float64 ``[n]``, higher = more suspicious.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Detector, iter_row_blocks
from .registry import register

__all__ = ["L1Norm", "L2Norm", "LossDetector", "RandomDetector"]


class _BlockNorm(Detector):
    """Row-wise reduction of ``X`` computed block by block."""

    additive = True

    def __init__(self, block_rows: int | None = None) -> None:
        """``block_rows``: rows per block (default: about 4M values per block)."""
        self.block_rows = block_rows

    def _row_values(self, block: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        assert X is not None
        out = np.empty(X.shape[0], dtype=np.float64)
        for start, block in iter_row_blocks(X, self.block_rows):
            out[start : start + block.shape[0]] = self._row_values(block)
        return out


@register("l1")
class L1Norm(_BlockNorm):
    """``score_i = ‖g_i‖₁`` (sum of absolute gradient entries), float64 ``[n]``.

    Additive over checkpoints. No fitting needed.
    """

    def _row_values(self, block: np.ndarray) -> np.ndarray:
        return np.abs(block, dtype=np.float64).sum(axis=1)


@register("l2")
class L2Norm(_BlockNorm):
    """``score_i = ‖g_i‖₂²``, the **squared** L2 norm, float64 ``[n]``.

    This is the self-influence ``g_iᵀ H⁻¹ g_i`` with an identity Hessian (and, summed
    over checkpoints with learning-rate weights, TracIn self-influence). The ranking is
    the same as for the plain norm ``‖g_i‖₂``. Additive over checkpoints.
    """

    def _row_values(self, block: np.ndarray) -> np.ndarray:
        b = np.asarray(block, dtype=np.float64)
        return np.einsum("ij,ij->i", b, b)


@register("loss")
class LossDetector(Detector):
    """Baseline: ``score_i = loss_i`` (the per-sample training loss). Needs no gradients.

    ``X`` may be None; when given, only its row count is used.
    """

    additive = True
    needs_gradients = False
    needs_losses = True

    def _score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        assert losses is not None
        return losses.copy()


@register("random")
class RandomDetector(Detector):
    """Baseline: seeded i.i.d. uniform ``[0, 1)`` scores (a random-removal control).

    The scores depend only on ``seed`` and ``n`` (the rows of ``X`` or the length of
    ``losses``), so repeated calls give identical scores.
    """

    needs_gradients = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def _score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        n = X.shape[0] if X is not None else len(losses)  # type: ignore[arg-type]
        return np.random.default_rng(self.seed).random(n)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "seed": self.seed}
