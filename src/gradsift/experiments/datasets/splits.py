"""Train / val / test splits with given and true labels: :class:`Split`, :class:`LabeledData`.

Every built-in loader returns a :class:`LabeledData` holding train / val / test :class:`Split`s.
Each split carries the given labels ``y`` (possibly noisy) and the true labels ``y_clean``;
``split.flipped`` are the indices where they differ. Noise is only ever injected into the
**train** split, so validation and test stay clean. :func:`from_arrays` wraps user arrays.

All arrays are numpy: features float32 ``[n, *feature_shape]``, labels int64 ``[n]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sklearn.model_selection import train_test_split

__all__ = ["Split", "LabeledData", "from_arrays"]


@dataclass
class Split:
    """One split of a data set.

    Attributes:
        X: float32 ``[n, *feature_shape]`` model inputs (standardised where the loader
            says so).
        y: int64 ``[n]`` the given, possibly noisy, labels.
        y_clean: int64 ``[n]`` the true labels.
        X_raw: optional ``[n, *feature_shape]`` un-standardised features (e.g. pixel
            intensities, for rendering images); ``None`` when ``X`` is already raw.
    """

    X: np.ndarray
    y: np.ndarray
    y_clean: np.ndarray
    X_raw: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.X = np.asarray(self.X, dtype=np.float32)
        self.y = np.asarray(self.y).astype(np.int64, copy=False)
        self.y_clean = np.asarray(self.y_clean).astype(np.int64, copy=False)
        n = self.X.shape[0]
        if self.y.shape != (n,) or self.y_clean.shape != (n,):
            raise ValueError(
                f"Split: X has {n} rows but y has shape {self.y.shape} and "
                f"y_clean has shape {self.y_clean.shape}; expected ({n},)"
            )
        if self.X_raw is not None:
            self.X_raw = np.asarray(self.X_raw)
            if self.X_raw.shape[0] != n:
                raise ValueError(f"Split: X_raw has {self.X_raw.shape[0]} rows, X has {n}")

    @property
    def flipped(self) -> np.ndarray:
        """Sorted int64 indices ``i`` with ``y[i] != y_clean[i]``."""
        return np.flatnonzero(self.y != self.y_clean).astype(np.int64)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def subset(self, idx: np.ndarray) -> Split:
        """Rows ``idx`` (int indices or a boolean mask of length ``n``) as a new Split."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask has shape {idx.shape}, expected ({len(self)},)")
        elif idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"subset indices must be integers or a boolean mask, got {idx.dtype}")
        else:
            idx = idx.astype(np.int64)
        return Split(
            X=self.X[idx],
            y=self.y[idx],
            y_clean=self.y_clean[idx],
            X_raw=None if self.X_raw is None else self.X_raw[idx],
        )


@dataclass
class LabeledData:
    """A data set with train / val / test splits.

    Attributes:
        name: registry name or user label.
        train, val, test: the splits; only ``train`` may hold noisy labels.
        n_classes: number of classes ``C``; labels lie in ``[0, C)``.
        kind: ``"tabular"``, ``"image"`` or ``"text"``.
        image_shape: ``(H, W)`` for image data (``X`` may be stored flattened).
        feature_names: optional column names for tabular data.
        class_names: optional names of the classes, index = label.
    """

    name: str
    train: Split
    val: Split
    test: Split
    n_classes: int
    kind: Literal["tabular", "image", "text"]
    image_shape: tuple[int, int] | None = None
    feature_names: list[str] | None = None
    class_names: list[str] | None = field(default=None)

    @property
    def n_features(self) -> int:
        """Number of scalar input features, ``prod(X.shape[1:])``."""
        return int(np.prod(self.train.X.shape[1:], dtype=np.int64))


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for nm, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not (0.0 <= f < 1.0):
            raise ValueError(f"{nm} must lie in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 (nothing left to train on), "
            f"got {val_fraction} + {test_fraction}"
        )


def _can_stratify(y: np.ndarray, n_pick: int, n_rest: int) -> bool:
    counts = np.bincount(y)
    counts = counts[counts > 0]
    return bool(counts.min() >= 2 and n_pick >= counts.size and n_rest >= counts.size)


def _cut(y: np.ndarray, pool: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split index array ``pool`` into (rest, k picked), stratified by ``y`` where possible."""
    if k == 0:
        return pool, pool[:0]
    strat = y[pool] if _can_stratify(y[pool], k, pool.size - k) else None
    rest, pick = train_test_split(pool, test_size=k, random_state=seed, stratify=strat)
    return np.sort(rest), np.sort(pick)


def _three_way_split(
    y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (stratified where possible) index split into train / val / test."""
    n = y.shape[0]
    idx = np.arange(n)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    if n - n_test - n_val < 1:
        raise ValueError(f"splitting {n} samples leaves no training data")

    rest, test = _cut(y, idx, n_test, seed)
    train, val = _cut(y, rest, n_val, seed + 1)
    return train, val, test


def from_arrays(
    X: np.ndarray,
    y: np.ndarray,
    name: str = "user",
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    n_classes: int | None = None,
) -> LabeledData:
    """Wrap user arrays (e.g. loaded from CSV / NPZ) as :class:`LabeledData`.

    No noise is injected and ``y_clean = y`` (the true labels are unknown).

    Args:
        X: ``[n, *feature_shape]`` numeric features (cast to float32). 2-D → ``"tabular"``;
            3-D ``[n, H, W]`` or 4-D ``[n, C, H, W]`` → ``"image"``.
        y: ``[n]`` labels. Integer labels must lie in ``[0, n_classes)``; any other labels
            (strings, non-integral values) are encoded by ``np.unique`` order and the
            originals kept in ``class_names``. NaN labels are refused.
        val_fraction, test_fraction: fractions of ``n`` for val / test (stratified,
            seeded); a fraction of 0 gives an empty split.
        n_classes: defaults to ``max(y) + 1``.
    """
    _check_fractions(val_fraction, test_fraction)
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim < 2:
        raise ValueError(f"X must have shape [n, *feature_shape], got {X.shape}")
    if X.shape[0] == 0:
        raise ValueError("X is empty")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
    try:
        Xf = X.astype(np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"X must be numeric, got dtype {X.dtype}") from err
    if not np.all(np.isfinite(Xf)):
        raise ValueError("X contains NaN or infinite values")

    if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
        rows = np.flatnonzero(np.isnan(y))[:10].tolist()
        raise ValueError(f"y holds missing (NaN) labels at rows {rows}; fill or drop them")
    class_names: list[str] | None = None
    is_int = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    )
    if is_int:
        yi = y.astype(np.int64)
        if yi.min() < 0:
            raise ValueError(f"integer labels must be >= 0, found {int(yi.min())}")
        if n_classes is None:
            n_classes = int(yi.max()) + 1
        if yi.max() >= n_classes:
            raise ValueError(f"labels must lie in [0, {n_classes}), found {int(yi.max())}")
    else:
        uniq, yi = np.unique(y, return_inverse=True)
        yi = yi.astype(np.int64)
        class_names = [str(u) for u in uniq]
        if n_classes is None:
            n_classes = len(uniq)
        elif n_classes < len(uniq):
            raise ValueError(f"n_classes={n_classes} but y has {len(uniq)} distinct labels")
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes, got n_classes={n_classes}")

    tr, va, te = _three_way_split(yi, val_fraction, test_fraction, seed)

    def mk(ix: np.ndarray) -> Split:
        return Split(X=Xf[ix], y=yi[ix].copy(), y_clean=yi[ix].copy())

    if Xf.ndim == 2:
        kind: Literal["tabular", "image", "text"] = "tabular"
        image_shape = None
    else:
        kind = "image"
        image_shape = (int(Xf.shape[-2]), int(Xf.shape[-1]))
    return LabeledData(
        name=name,
        train=mk(tr),
        val=mk(va),
        test=mk(te),
        n_classes=int(n_classes),
        kind=kind,
        image_shape=image_shape,
        class_names=class_names,
    )
