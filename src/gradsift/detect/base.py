"""The :class:`Detector` interface, input validation and the detector registry.

A detector turns a per-sample gradient matrix ``X`` (float32/float64 ``[n, D]``, one
row per training sample, possibly a ``np.memmap``) and/or per-sample losses
(``[n]``) into a detection score (float64 ``[n]``). **Higher = more suspicious**
(more likely mislabeled or detrimental), as everywhere in gradsift.

Detectors follow the scikit-learn pattern, one contract for all of them::

    det = get_detector("iforest", seed=0)
    scores = det.fit_score(G)          # == det.fit(G).score(G) up to in-sample effects
    det.fit(G, losses=None, *, context=None)   # context: a DetectionContext

The optional :class:`~gradsift.detect.context.DetectionContext` carries what some
detectors need besides ``G`` and ``losses`` (the model, task, training data and
checkpoints of the self-influence detectors); ``G`` and ``losses`` default to the
context's.

``fit_score`` is the method to use for outlier detection on the training set
itself: for neighbour/ECDF based models it returns the *in-sample* scores (a
sample is not its own neighbour), see :mod:`gradsift.detect.fitted`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from sklearn.exceptions import NotFittedError

if TYPE_CHECKING:
    from gradsift.detect.context import DetectionContext

__all__ = [
    "Detector",
    "NotFittedError",
    "check_gradients",
    "check_losses",
    "iter_row_blocks",
]

#: Elements (not bytes) per row block when streaming over a possibly memory-mapped X.
BLOCK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- validation


def block_rows_for(n_cols: int, block_rows: int | None = None) -> int:
    """Rows per block so that one block holds about :data:`BLOCK_ELEMENTS` values."""
    if block_rows is not None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        return int(block_rows)
    return max(1, BLOCK_ELEMENTS // max(1, n_cols))


def iter_row_blocks(X: np.ndarray, block_rows: int | None = None):
    """Yield ``(start, block)`` with ``block = np.asarray(X[start:start + b])``.

    Only one block is materialised at a time, so a memory-mapped ``X`` is never read whole.
    """
    b = block_rows_for(X.shape[1], block_rows)
    for start in range(0, X.shape[0], b):
        yield start, np.asarray(X[start : start + b])


def _format_rows(bad: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in bad[:limit])
    more = f", ... ({len(bad)} rows in total)" if len(bad) > limit else ""
    return f"[{shown}{more}]"


def check_gradients(X: Any, *, name: str = "X", check_finite: bool = True) -> np.ndarray:
    """Validate a per-sample gradient matrix and return it as an ndarray (no copy for ndarrays).

    Args:
        X: real array ``[n, D]`` with ``n >= 1`` and ``D >= 1`` (any real dtype; a
            ``np.memmap`` stays memory-mapped).
        name: name used in error messages.
        check_finite: scan the rows (in blocks) for NaN/Inf.

    Raises:
        ValueError: ``X`` is None, not 2-D, empty, not real-valued, or has NaN/Inf
            rows (the message names the first offending row indices).
    """
    if X is None:
        raise ValueError(f"{name} is required (per-sample gradients [n, D]) but got None")
    arr = X if isinstance(X, np.ndarray) else np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, D], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if check_finite and np.issubdtype(arr.dtype, np.floating):
        bad = [
            start + np.flatnonzero(~np.isfinite(b).all(axis=1)) for start, b in iter_row_blocks(arr)
        ]
        bad_rows = np.concatenate(bad)
        if bad_rows.size:
            raise ValueError(
                f"{name} has NaN/Inf values in {bad_rows.size} row(s); "
                f"offending row indices: {_format_rows(bad_rows)}"
            )
    return arr


def check_losses(losses: Any, n: int | None = None, *, name: str = "losses") -> np.ndarray:
    """Validate per-sample losses and return them as float64 ``[n]``.

    Raises:
        ValueError: None, not 1-D, empty, wrong length, or NaN/Inf entries (named by index).
    """
    if losses is None:
        raise ValueError(f"{name} are required (per-sample losses [n]) but got None")
    arr = np.asarray(losses, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array [n], got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but X has {n} rows")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} has NaN/Inf at indices {_format_rows(bad)}")
    return arr


# --------------------------------------------------------------------------- interface


class Detector(ABC):
    """Per-sample outlier detector in gradient space (scikit-learn-like ``fit``/``score``).

    Class attributes:
        name: registry name (``get_detector(name)``).
        additive: True when scores from several checkpoints may be summed as-is
            (``l1``, ``l2``, ``loss``); otherwise checkpoint ensembles z-score first.
        needs_gradients: False for baselines that ignore ``X`` (``loss``, ``random``).
        needs_losses: True when ``losses`` is required (``loss``).
        needs_model: True when fitting needs the context's model, task and data (the
            ``self-if-*`` and ``self-tracin`` detectors); without them ``fit`` raises a
            ``ValueError`` saying what to pass.

    Subclasses implement :meth:`_score` and, when they learn something, :meth:`_fit`
    (and set ``requires_fit = True``); those that need more than ``X`` and ``losses``
    take it from the context in :meth:`_use_context`. Inputs are validated by the
    public methods.
    """

    name: ClassVar[str] = "detector"
    additive: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = True
    needs_losses: ClassVar[bool] = False
    requires_fit: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False

    _fitted: bool = False
    _n_features: int | None = None

    # ---------------------------------------------------------------- public API

    def fit(
        self,
        X: np.ndarray | None = None,
        losses: np.ndarray | None = None,
        *,
        context: DetectionContext | None = None,
    ) -> Detector:
        """Fit on gradients ``X`` (``[n, D]``) and/or ``losses`` (``[n]``); returns ``self``.

        ``X`` and ``losses`` default to ``context.gradients`` / ``context.losses``.
        """
        X, losses = self._prepare(X, losses, context)
        self._fit(X, losses)
        self._fitted = True
        self._n_features = None if X is None else int(X.shape[1])
        return self

    def score(
        self,
        X: np.ndarray | None = None,
        losses: np.ndarray | None = None,
        *,
        context: DetectionContext | None = None,
    ) -> np.ndarray:
        """Score every row: float64 ``[n]``, higher = more suspicious.

        Raises:
            NotFittedError: the detector learns from data and :meth:`fit` was not called.
            ValueError: invalid inputs, or ``D`` differs from the fitted ``D``.
        """
        X, losses = self._prepare(X, losses, context)
        self._check_fitted(X)
        return self._check_scores(self._score(X, losses), X, losses)

    def fit_score(
        self,
        X: np.ndarray | None = None,
        losses: np.ndarray | None = None,
        *,
        context: DetectionContext | None = None,
    ) -> np.ndarray:
        """Fit on the data and return its (in-sample) scores: float64 ``[n]``, higher = more suspicious."""
        X, losses = self._prepare(X, losses, context)
        scores = self._fit_score(X, losses)
        self._fitted = True
        self._n_features = None if X is None else int(X.shape[1])
        return self._check_scores(scores, X, losses)

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable description: ``{"name": ..., <parameters>}``."""
        return {"name": self.name}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "name")
        return f"{type(self).__name__}({params})"

    # ---------------------------------------------------------------- hooks

    def _use_context(self, context: DetectionContext) -> None:  # noqa: B027
        """Take what the detector needs besides ``X`` and ``losses`` (no-op for most)."""

    def _fit(self, X: np.ndarray | None, losses: np.ndarray | None) -> None:  # noqa: B027
        """Learn from the data (no-op for stateless detectors)."""

    @abstractmethod
    def _score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        """Return ``[n]`` scores for validated inputs (higher = more suspicious)."""

    def _fit_score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        self._fit(X, losses)
        return self._score(X, losses)

    # ---------------------------------------------------------------- checks

    def _prepare(
        self,
        X: np.ndarray | None,
        losses: np.ndarray | None,
        context: DetectionContext | None,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Fill ``X``/``losses`` from the context, hand it to the detector, validate."""
        if context is not None:
            X = context.gradients if X is None else X
            losses = context.losses if losses is None else losses
            self._use_context(context)
        return self._check_inputs(X, losses)

    def _check_inputs(
        self, X: np.ndarray | None, losses: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.needs_gradients:
            X = check_gradients(X)
        elif X is not None:  # only its row count matters; values are ignored
            X = check_gradients(X, check_finite=False)
        n = None if X is None else X.shape[0]
        if losses is not None or self.needs_losses:
            if losses is None:
                raise ValueError(f"detector {self.name!r} needs per-sample losses, got None")
            losses = check_losses(losses, n)
        if X is None and losses is None:
            raise ValueError(f"detector {self.name!r} needs X or losses to know the sample count")
        return X, losses

    def _check_fitted(self, X: np.ndarray | None) -> None:
        if self.requires_fit and not self._fitted:
            raise NotFittedError(
                f"detector {self.name!r} is not fitted; call fit(X) or fit_score(X) before score(X)"
            )
        if self.requires_fit and X is not None and self._n_features not in (None, X.shape[1]):
            raise ValueError(
                f"X has {X.shape[1]} columns but detector {self.name!r} was fitted on "
                f"{self._n_features}"
            )

    @staticmethod
    def _check_scores(
        scores: np.ndarray, X: np.ndarray | None, losses: np.ndarray | None
    ) -> np.ndarray:
        n = X.shape[0] if X is not None else len(losses)  # type: ignore[arg-type]
        out = np.asarray(scores, dtype=np.float64).reshape(-1)
        if out.shape[0] != n:
            raise RuntimeError(f"detector returned {out.shape[0]} scores for {n} samples")
        return out
