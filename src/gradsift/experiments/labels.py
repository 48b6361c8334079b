"""Class labels as integers: the one coercion every experiment module applies."""

from __future__ import annotations

import numpy as np

__all__ = ["as_integer_labels"]


def as_integer_labels(y: np.ndarray, name: str = "y") -> np.ndarray:
    """``y`` as int64 when it holds integers (or integral, finite floats); else ``ValueError``."""
    if np.issubdtype(y.dtype, np.integer):
        return y
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
