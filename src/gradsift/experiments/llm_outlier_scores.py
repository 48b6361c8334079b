"""Label-free OGA-style outlier scores as per-test-prompt helpfulness rankings.

OGA (Outlier Gradient Analysis, arXiv 2405.03869) scores each training sample by how much of
an outlier its gradient is; outliers are detrimental, inliers helpful. These functions turn
such scores into ``[n_test, n_train]`` helpfulness matrices (**positive = helpful**, the top
of each row is the most helpful) for the influential-data benchmark. No class labels are used
anywhere: nothing is fitted per class.

Unconditioned (the same ranking for every test prompt):

* ``oga-l2`` / ``oga-l1``: ``−‖g_i‖₂²`` / ``−‖g_i‖₁`` (gradsift's ``l2`` / ``l1`` detectors;
  the squared norm ranks exactly as ``−‖g_i‖₂``);
* ``oga-iforest``: ``−s_i`` with ``s_i`` the Isolation Forest anomaly score (higher = more
  isolated) of ``g_i`` among the training gradients, after gradsift's seeded sparse JL
  projection (:class:`~gradsift.detect.fitted.IsolationForestDetector`).

Test-conditioned (an outlier distance from the test prompt's own gradient ``g_t``):

* ``oga-l2-dist``: ``−‖g_i − g_t‖₂``;
* ``oga-l2-dist-unit``: ``−‖g_i/‖g_i‖ − g_t/‖g_t‖‖₂ = −√(2 − 2 cos(g_i, g_t))``, a
  decreasing function of the cosine, so its ranking equals the gradient-cosine ranking.

With equal training class sizes and class-balanced test prompts, an unconditioned ranking has
mean same-class AUC exactly 0.5 (each cross-class pair of training samples is ordered correctly for exactly one of its
two classes) and mean recall@k exactly ``1 / n_classes`` when ``k`` is the class size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradsift.detect.fitted import IsolationForestDetector
from gradsift.detect.norms import L1Norm, L2Norm
from gradsift.errors import GradsiftError

__all__ = ["broadcast_ranking", "l2_distance_scores", "oga_helpfulness"]


def _check_2d(name: str, X: np.ndarray) -> None:
    if X.ndim != 2 or X.shape[0] == 0:
        raise GradsiftError(f"{name} must be a non-empty 2-D array [n, D], got shape {X.shape}")


def broadcast_ranking(helpfulness: np.ndarray, n_test: int) -> np.ndarray:
    """The same helpfulness vector ``[n_train]`` for every test prompt: ``[n_test, n_train]``."""
    h = np.asarray(helpfulness, dtype=np.float64)
    return np.broadcast_to(h, (n_test, h.shape[0])).copy()


def oga_helpfulness(
    G_train: np.ndarray, *, seed: int = 0, n_estimators: int = 100
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """OGA's unconditioned per-sample scores as helpfulness (float64 ``[n_train]`` each).

    Args:
        G_train: ``[n_train, D]`` per-sample training gradients (float32 or float64).
        seed: seeds the JL projection and the Isolation Forest.
        n_estimators: trees of the Isolation Forest.

    Returns:
        ``({"oga-l2": −‖g‖₂², "oga-l1": −‖g‖₁, "oga-iforest": −anomaly}, info)`` where
        ``info["iforest"]`` holds the detector settings (projection kind and dimension).
    """
    _check_2d("G_train", G_train)
    iforest = IsolationForestDetector(n_estimators=n_estimators, seed=seed)
    scores = {
        "oga-l2": -L2Norm().fit_score(G_train),
        "oga-l1": -L1Norm().fit_score(G_train),
        "oga-iforest": -np.asarray(iforest.fit_score(G_train), dtype=np.float64),
    }
    return scores, {"iforest": iforest.settings()}


def l2_distance_scores(
    G_test: np.ndarray, G_train: np.ndarray, *, unit: bool = False, block_rows: int = 64
) -> np.ndarray:
    """Helpfulness ``−‖g_i − g_t‖₂`` (float64 ``[n_test, n_train]``), larger = closer.

    Computed as ``‖g_i‖² + ‖g_t‖² − 2 g_tᵀg_i`` in float64, training rows in blocks of
    ``block_rows`` (no ``[n_test, n_train, D]`` difference is formed). ``unit=True`` first
    scales every row to unit L2 norm (zero rows stay zero).
    """
    _check_2d("G_test", G_test)
    _check_2d("G_train", G_train)
    if G_test.shape[1] != G_train.shape[1]:
        raise GradsiftError(
            f"G_test has D = {G_test.shape[1]} but G_train has D = {G_train.shape[1]}"
        )

    def rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        sq = np.einsum("ij,ij->i", X, X)
        if unit:
            X = X / np.where(sq > 0, np.sqrt(sq), 1.0)[:, None]
            sq = (sq > 0).astype(np.float64)
        return X, sq

    T, t_sq = rows(G_test)
    out = np.empty((T.shape[0], G_train.shape[0]), dtype=np.float64)
    for start in range(0, G_train.shape[0], block_rows):
        B, b_sq = rows(G_train[start : start + block_rows])
        d2 = t_sq[:, None] + b_sq[None, :] - 2.0 * (T @ B.T)
        out[:, start : start + B.shape[0]] = -np.sqrt(np.maximum(d2, 0.0))
    return out
