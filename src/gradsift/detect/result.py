"""Detection output: per-sample scores with ranks and flags at a trimming budget.

Convention: **higher score = more suspicious**. ``rank`` 0 is the most suspicious
sample; ties are broken by sample index (lower index first). ``is_issue`` flags the
``n_flagged`` top-ranked samples, where ``n_flagged`` comes from the budget:

- a float in ``(0, 1)``: a fraction of ``n``, ``n_flagged = max(1, round(budget · n))``
  (halves round up);
- an int in ``[1, n]``: a count.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from .base import Detector
    from .context import DetectionContext

__all__ = ["DetectionResult", "budget_to_count"]

Budget = float | int


def budget_to_count(budget: Budget, n: int) -> int:
    """Number of samples flagged by ``budget`` out of ``n`` (see module docstring).

    Raises:
        TypeError: budget is not a real number (bools are rejected).
        ValueError: a fraction outside ``(0, 1)`` or a count outside ``[1, n]``.
    """
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, float, np.number)):
        raise TypeError(f"budget must be a float fraction or an int count, got {budget!r}")
    if isinstance(budget, (int, np.integer)):
        if not 1 <= budget <= n:
            raise ValueError(f"budget count must be in [1, n={n}], got {budget}")
        return int(budget)
    b = float(budget)
    if not (math.isfinite(b) and 0.0 < b < 1.0):
        raise ValueError(
            f"budget fraction must be in (0, 1), got {budget!r}; pass an int for a count"
        )
    return max(1, min(n, int(math.floor(b * n + 0.5))))


@dataclass(eq=False)
class DetectionResult:
    """Scores of one detector with derived ranks and flags.

    Attributes:
        scores: float64 ``[n]``, higher = more suspicious.
        detector: detector name (e.g. ``"iforest"``).
        settings: JSON-serialisable detector settings.
        budget: float fraction in ``(0, 1)`` or int count in ``[1, n]``.
        rank: int64 ``[n]`` (derived), 0 = most suspicious, ties broken by index.
        is_issue: bool ``[n]`` (derived), True for the ``n_flagged`` top-ranked samples.
        n_flagged: int (derived), number of flagged samples.
    """

    scores: np.ndarray = field(repr=False)
    detector: str
    settings: dict[str, Any] = field(default_factory=dict, repr=False)
    budget: Budget = 0.1
    rank: np.ndarray = field(init=False, repr=False)
    is_issue: np.ndarray = field(init=False, repr=False)
    n_flagged: int = field(init=False)

    def __post_init__(self) -> None:
        s = np.array(self.scores, dtype=np.float64, copy=True)
        if s.ndim != 1 or s.size == 0:
            raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
        bad = np.flatnonzero(~np.isfinite(s))
        if bad.size:
            raise ValueError(f"scores have NaN/Inf at indices {bad[:10].tolist()}")
        self.scores = s
        self.n_flagged = budget_to_count(self.budget, s.size)
        order = self._order()
        rank = np.empty(s.size, dtype=np.int64)
        rank[order] = np.arange(s.size, dtype=np.int64)
        self.rank = rank
        self.is_issue = rank < self.n_flagged

    def _order(self) -> np.ndarray:
        """Indices from most to least suspicious (stable: ties by index)."""
        return np.argsort(-self.scores, kind="stable").astype(np.int64)

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.scores.size)

    def with_budget(self, budget: Budget) -> DetectionResult:
        """Same scores with another budget (a new result; ``self`` is unchanged)."""
        return dataclasses.replace(self, budget=budget)

    def flagged_indices(self) -> np.ndarray:
        """int64 indices of the flagged samples, most suspicious first."""
        return self._order()[: self.n_flagged]

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary: detector, n, n_flagged, budget, score quantiles."""
        qs = np.quantile(self.scores, [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
        keys = ["min", "q25", "median", "q75", "q90", "max"]
        budget = (
            int(self.budget) if isinstance(self.budget, (int, np.integer)) else float(self.budget)
        )
        return {
            "detector": self.detector,
            "n": self.n,
            "n_flagged": self.n_flagged,
            "budget": budget,
            "score_quantiles": {k: float(v) for k, v in zip(keys, qs, strict=True)},
            "flagged_min_score": float(self.scores[self.is_issue].min()),
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per sample, in index order: ``index, score, rank, is_issue, detector``."""
        import pandas as pd

        return pd.DataFrame(
            {
                "index": np.arange(self.n, dtype=np.int64),
                "score": self.scores,
                "rank": self.rank,
                "is_issue": self.is_issue,
                "detector": self.detector,
            }
        )

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_frame` as CSV (no pandas index column; floats round-trip exactly)."""
        self.to_frame().to_csv(path, index=False)

    @classmethod
    def from_detector(
        cls,
        detector: Detector,
        X: np.ndarray | None = None,
        losses: np.ndarray | None = None,
        budget: Budget = 0.1,
        *,
        context: DetectionContext | None = None,
    ) -> DetectionResult:
        """Run ``detector.fit_score(X, losses, context=context)`` and wrap the scores with
        its settings."""
        scores = detector.fit_score(X, losses, context=context)
        settings = detector.settings()
        return cls(scores=scores, detector=settings["name"], settings=settings, budget=budget)
