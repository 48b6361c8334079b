"""Simulatability: do the training samples shown for a prediction let you predict it?

FastIF (arXiv 2012.15781, its "explainability" application) asks whether the top-k
influential training samples *explain* a prediction: a simulator that sees only those
samples should be able to reproduce the model's output. Here the simulator is a rule, not
a person:

- ``"vote"``: the majority label among the shown samples; a tie goes to the tied label
  shown first (the most influential one, since lists are ordered strongest first).
- ``"knn"``: the same vote over only the ``n_neighbors`` shown samples nearest to the test
  point (Euclidean, in a feature space you give); a tie goes to the tied label whose
  nearest member is closest.

The simulator *accuracy* is the fraction of test points where the simulator's label
equals the model's prediction, with a Wilson score interval (exact enough for a
proportion, never outside ``[0, 1]``, and well-behaved at 0 and 1).

Inputs share one layout: ``shown`` is int ``[m, k]``, row *j* the training indices shown
for test point *j*, strongest first, ``-1`` padding allowed (as in
:class:`~gradsift.influence.explain.Explanations`); a row with nothing shown counts as a
simulator miss. ``train_labels`` are the labels the model was trained on (the *given*,
possibly noisy, labels: that is what a reader of the explanation sees).

:func:`compare_selections` scores several selections (helpful, harmful, nearest
neighbours, random) on the same test points; :func:`explanation_simulatability` is the
quality number of an :class:`~gradsift.influence.explain.Explanations`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy.stats import norm

from gradsift.errors import GradsiftError

if TYPE_CHECKING:
    from gradsift.influence.explain import Explanations

__all__ = [
    "SimulatorAccuracy",
    "compare_selections",
    "explanation_simulatability",
    "knn_vote",
    "label_vote",
    "nearest_selection",
    "random_selection",
    "simulator_accuracy",
    "wilson_interval",
]

Simulator = Literal["vote", "knn"]


@dataclass(frozen=True)
class SimulatorAccuracy:
    """Simulator accuracy with a Wilson confidence interval.

    Attributes:
        accuracy: fraction of test points where the simulator reproduces the model.
        low, high: the Wilson score interval at ``confidence``.
        n: number of test points; correct: how many were reproduced.
        confidence: e.g. 0.95.
        simulator: ``"vote"`` or ``"knn"``; k: samples shown per test point.
    """

    accuracy: float
    low: float
    high: float
    n: int
    correct: int
    confidence: float
    simulator: str
    k: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.accuracy:.3f} [{self.low:.3f}, {self.high:.3f}]"


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``correct / n``.

    ``(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)`` with ``z`` the two-sided
    normal quantile of ``confidence``. ``n = 0`` gives ``(0, 1)``.
    """
    if not 0 < confidence < 1:
        raise GradsiftError(f"confidence must lie in (0, 1), got {confidence}")
    if n < 0 or not 0 <= correct <= n:
        raise GradsiftError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = float(norm.ppf(0.5 + confidence / 2))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _as_shown(shown: np.ndarray | list[list[int]], n_train: int) -> np.ndarray:
    arr = np.asarray(shown, dtype=np.int64)
    if arr.ndim != 2:
        raise GradsiftError(f"shown must be [m, k] training indices, got shape {arr.shape}")
    if np.any(arr >= n_train) or np.any(arr < -1):
        raise GradsiftError(f"shown indices must lie in [0, {n_train}) or be -1 (padding)")
    return arr


def _vote(labels: np.ndarray) -> int:
    """Majority of ``labels`` (in shown order); a tie goes to the label shown first."""
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    best = counts == counts.max()
    return int(values[best][np.argmin(first[best])])


def label_vote(shown: np.ndarray, train_labels: np.ndarray) -> np.ndarray:
    """The vote simulator's labels, int64 ``[m]`` (``-1`` where nothing was shown)."""
    labels = np.asarray(train_labels, dtype=np.int64)
    arr = _as_shown(shown, len(labels))
    out = np.full(arr.shape[0], -1, dtype=np.int64)
    for j, row in enumerate(arr):
        row = row[row >= 0]
        if row.size:
            out[j] = _vote(labels[row])
    return out


def knn_vote(
    shown: np.ndarray,
    train_labels: np.ndarray,
    train_features: np.ndarray,
    test_features: np.ndarray,
    n_neighbors: int = 1,
) -> np.ndarray:
    """The kNN simulator's labels, int64 ``[m]``: the vote of the ``n_neighbors`` shown
    samples nearest to each test point (float features ``[n_train, d]`` / ``[m, d]``,
    Euclidean); ``-1`` where nothing was shown."""
    if n_neighbors < 1:
        raise GradsiftError(f"n_neighbors must be >= 1, got {n_neighbors}")
    labels = np.asarray(train_labels, dtype=np.int64)
    arr = _as_shown(shown, len(labels))
    Xtr = np.asarray(train_features, dtype=np.float64).reshape(len(labels), -1)
    Xte = np.asarray(test_features, dtype=np.float64).reshape(arr.shape[0], -1)
    out = np.full(arr.shape[0], -1, dtype=np.int64)
    for j, row in enumerate(arr):
        row = row[row >= 0]
        if row.size:
            dist = np.linalg.norm(Xtr[row] - Xte[j], axis=1)
            near = row[np.argsort(dist, kind="stable")[:n_neighbors]]
            out[j] = _vote(labels[near])
    return out


def simulator_accuracy(
    shown: np.ndarray,
    train_labels: np.ndarray,
    predictions: np.ndarray,
    *,
    simulator: Simulator = "vote",
    train_features: np.ndarray | None = None,
    test_features: np.ndarray | None = None,
    n_neighbors: int = 1,
    confidence: float = 0.95,
) -> SimulatorAccuracy:
    """How often the simulator, shown ``shown[j]``, reproduces the model's ``predictions[j]``.

    Args:
        shown: int ``[m, k]`` training indices per test point, strongest first, ``-1`` pads.
        train_labels: int ``[n_train]`` the labels the model was trained on.
        predictions: int ``[m]`` the model's predicted labels on the ``m`` test points.
        simulator: ``"vote"`` (:func:`label_vote`) or ``"knn"`` (:func:`knn_vote`, needs
            ``train_features`` and ``test_features``).
        confidence: level of the Wilson interval.
    """
    pred = np.asarray(predictions, dtype=np.int64).reshape(-1)
    arr = np.asarray(shown)
    if arr.ndim != 2 or arr.shape[0] != pred.size:
        raise GradsiftError(f"shown must be [m={pred.size}, k], got shape {arr.shape}")
    if simulator == "vote":
        sim = label_vote(arr, train_labels)
    elif simulator == "knn":
        if train_features is None or test_features is None:
            raise GradsiftError("simulator='knn' needs train_features and test_features")
        sim = knn_vote(arr, train_labels, train_features, test_features, n_neighbors)
    else:
        raise GradsiftError(f"simulator must be 'vote' or 'knn', got {simulator!r}")
    correct = int(np.sum(sim == pred))
    low, high = wilson_interval(correct, pred.size, confidence)
    return SimulatorAccuracy(
        accuracy=correct / pred.size if pred.size else math.nan,
        low=low,
        high=high,
        n=int(pred.size),
        correct=correct,
        confidence=confidence,
        simulator=simulator,
        k=int(arr.shape[1]),
    )


def nearest_selection(train_features: np.ndarray, test_features: np.ndarray, k: int) -> np.ndarray:
    """int64 ``[m, k]``: the ``k`` training rows nearest (Euclidean) to each test point,
    nearest first — the similarity baseline of FastIF's comparison."""
    Xtr = np.asarray(train_features, dtype=np.float64).reshape(len(train_features), -1)
    Xte = np.asarray(test_features, dtype=np.float64).reshape(len(test_features), -1)
    k = min(int(k), len(Xtr))
    out = np.empty((len(Xte), k), dtype=np.int64)
    sq_tr = (Xtr * Xtr).sum(1)
    for s in range(0, len(Xte), 512):  # blocks of test points: [512, n_train] at a time
        block = Xte[s : s + 512]
        d2 = sq_tr[None, :] - 2.0 * block @ Xtr.T
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d2, part, axis=1).argsort(axis=1, kind="stable")
        out[s : s + 512] = np.take_along_axis(part, order, axis=1)
    return out


def random_selection(n_train: int, m: int, k: int, seed: int = 0) -> np.ndarray:
    """int64 ``[m, k]``: ``k`` distinct uniformly random training rows per test point."""
    rng = np.random.default_rng(seed)
    k = min(int(k), n_train)
    return np.stack([rng.choice(n_train, size=k, replace=False) for _ in range(m)]).astype(np.int64)


def compare_selections(
    selections: Mapping[str, np.ndarray],
    train_labels: np.ndarray,
    predictions: np.ndarray,
    ks: tuple[int, ...] = (1, 5, 10),
    **simulator_kwargs: Any,
) -> list[dict[str, Any]]:
    """Simulator accuracy of each selection (e.g. helpful / harmful / nearest / random)
    truncated to each ``k`` in ``ks``: one row ``{"selection", "k", "accuracy", "low",
    "high", "n", ...}`` per pair. Selections are ``[m, ≥k]`` arrays, strongest first;
    ``simulator_kwargs`` go to :func:`simulator_accuracy`."""
    rows = []
    for name, shown in selections.items():
        arr = np.asarray(shown, dtype=np.int64)
        for k in ks:
            if k > arr.shape[1]:
                raise GradsiftError(
                    f"selection {name!r} has {arr.shape[1]} columns, fewer than k={k}"
                )
            acc = simulator_accuracy(arr[:, :k], train_labels, predictions, **simulator_kwargs)
            rows.append({"selection": name, **acc.to_dict()})
    return rows


def explanation_simulatability(
    explanations: Explanations,
    train_labels: np.ndarray,
    predictions: np.ndarray,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, SimulatorAccuracy]:
    """The vote simulator's accuracy on an :class:`~gradsift.influence.explain.Explanations`.

    Args:
        explanations: helpful / harmful indices ``[m, top]`` per explained test point.
        train_labels: int ``[n_train]`` the labels the model was trained on.
        predictions: int ``[m]`` the model's predictions on the explained test points, in
            the order of ``explanations.test_indices``.
        confidence: level of the Wilson intervals.
        seed: seed of the random control (:func:`random_selection`, ``top`` per point).

    Returns:
        ``{"helpful": ..., "harmful": ..., "random": ...}``, each shown ``top`` samples per
        test point. Helpful samples that explain the prediction should beat the random
        control; harmful ones (which pull the other way) should fall below it.
    """
    helpful = np.asarray(explanations.helpful_indices, dtype=np.int64)
    selections = {
        "helpful": helpful,
        "harmful": np.asarray(explanations.harmful_indices, dtype=np.int64),
        "random": random_selection(len(train_labels), helpful.shape[0], helpful.shape[1], seed),
    }
    return {
        kind: simulator_accuracy(shown, train_labels, predictions, confidence=confidence)
        for kind, shown in selections.items()
    }
