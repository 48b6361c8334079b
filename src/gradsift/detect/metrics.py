"""Detection quality against known flipped labels.

Scores follow the gradsift convention: **higher = more suspicious**. All metrics are
O(n log n). Ties in the scores are handled without favouring any index order: AUROC and
average precision use scikit-learn's tie handling, and the top-k metrics count a tied
block at the cut-off by its expected share (as if ties were broken uniformly at random).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["detection_metrics", "expected_hits_at_k"]


def expected_hits_at_k(scores: np.ndarray, is_pos: np.ndarray, k: int) -> float:
    """Expected number of positives among the ``k`` highest scores, ties split evenly.

    Args:
        scores: float ``[n]``.
        is_pos: bool ``[n]``.
        k: ``0 <= k <= n``.
    """
    n = scores.shape[0]
    if not (0 <= k <= n):
        raise ValueError(f"k must lie in [0, {n}], got {k}")
    if k == 0:
        return 0.0
    if k == n:
        return float(is_pos.sum())
    order = np.argsort(-scores, kind="stable")
    thr = scores[order[k - 1]]
    above = scores > thr
    tied = scores == thr
    n_above = int(above.sum())
    n_tied = int(tied.sum())
    hits_above = float(is_pos[above].sum())
    hits_tied = float(is_pos[tied].sum())
    return hits_above + (k - n_above) * hits_tied / n_tied


def detection_metrics(scores: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """Detection quality of per-sample ``scores`` against the known ``flipped`` samples.

    Args:
        scores: float ``[n]``, higher = more suspicious. Must be finite.
        flipped: int indices into ``scores`` of the truly flipped samples (unique), or a
            boolean mask ``[n]``.

    Returns:
        ``{"auroc", "average_precision", "precision_at_m", "recall_at_10pct",
        "recall_at_20pct", "m", "n"}`` where ``m`` is the number flipped,
        ``precision_at_m`` the fraction flipped among the ``m`` highest scores, and
        ``recall_at_Xpct`` the fraction of flipped samples within the top
        ``ceil(X% · n)`` scores.

    Raises:
        ValueError: non-1-D or non-finite scores, out-of-range or duplicate indices, or
            no / all samples flipped (the metrics are undefined).
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one-dimensional [n], got shape {scores.shape}")
    n = scores.shape[0]
    if n == 0:
        raise ValueError("scores is empty")
    try:
        scores = scores.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"scores must be numeric, got dtype {scores.dtype}") from err
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores contain {int(np.sum(~np.isfinite(scores)))} NaN/inf values")

    flipped = np.asarray(flipped)
    if flipped.dtype == bool:
        if flipped.shape != (n,):
            raise ValueError(f"boolean flipped mask has shape {flipped.shape}, expected ({n},)")
        is_pos = flipped.copy()
    else:
        flipped = flipped.reshape(-1)
        if flipped.size and not np.issubdtype(flipped.dtype, np.integer):
            raise ValueError(f"flipped must hold integer indices, got dtype {flipped.dtype}")
        flipped = flipped.astype(np.int64)
        if flipped.size and (flipped.min() < 0 or flipped.max() >= n):
            raise ValueError(
                f"flipped indices must lie in [0, {n}), found [{flipped.min()}, {flipped.max()}]"
            )
        if np.unique(flipped).size != flipped.size:
            raise ValueError("flipped contains duplicate indices")
        is_pos = np.zeros(n, dtype=bool)
        is_pos[flipped] = True
    m = int(is_pos.sum())
    if m == 0:
        raise ValueError("no flipped samples: detection metrics are undefined")
    if m == n:
        raise ValueError("every sample is flipped: detection metrics are undefined")

    y_true = is_pos.astype(np.int64)
    k10 = -(-n // 10)  # ceil(n / 10) in exact integer arithmetic
    k20 = -(-n // 5)  # ceil(n / 5)
    return {
        "auroc": float(roc_auc_score(y_true, scores)),
        "average_precision": float(average_precision_score(y_true, scores)),
        "precision_at_m": expected_hits_at_k(scores, is_pos, m) / m,
        "recall_at_10pct": expected_hits_at_k(scores, is_pos, k10) / m,
        "recall_at_20pct": expected_hits_at_k(scores, is_pos, k20) / m,
        "m": m,
        "n": n,
    }
