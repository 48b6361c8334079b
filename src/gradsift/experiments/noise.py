"""Label-noise injection with a known ground truth.

Two kinds of noise are supported:

- **symmetric**: exactly ``round(fraction * n)`` samples, chosen uniformly without
  replacement, are each relabelled to a uniformly random *different* class;
- **asymmetric** (class-pair): for each ``src -> dst`` in a mapping, exactly
  ``round(fraction * n_src)`` samples of class ``src`` are relabelled ``dst``.

The flipped indices are returned so that detection quality can be measured against
them (see :func:`gradsift.detect.metrics.detection_metrics`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from gradsift.experiments.labels import as_integer_labels

__all__ = ["DEFAULT_ASYMMETRIC_MAP", "flip_labels", "noisy_train_labels"]

#: Class-pair map for digit-like data (visually similar digits): 7→1, 2→7, 5→6, 3→8.
DEFAULT_ASYMMETRIC_MAP: dict[int, int] = {7: 1, 2: 7, 5: 6, 3: 8}


def _validate_labels(y: np.ndarray, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be one-dimensional, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("y is empty: cannot inject label noise into zero samples")
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    y = as_integer_labels(y)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), found values in [{lo}, {hi}]")
    return y.astype(np.int64, copy=True)


def flip_labels(
    y: np.ndarray,
    n_classes: int,
    fraction: float,
    kind: Literal["symmetric", "asymmetric"] = "symmetric",
    mapping: dict[int, int] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip a known set of labels.

    Args:
        y: int array ``[n]`` of clean labels in ``[0, n_classes)``.
        n_classes: number of classes ``C`` (>= 2).
        fraction: fraction in ``[0, 1)``. Symmetric: of all ``n`` samples. Asymmetric:
            of the samples of each source class in ``mapping``.
        kind: ``"symmetric"`` or ``"asymmetric"``.
        mapping: ``{src: dst}`` for asymmetric noise; defaults to
            :data:`DEFAULT_ASYMMETRIC_MAP`. Ignored (must be ``None``) for symmetric.
        seed: seed for ``np.random.default_rng``.

    Returns:
        ``(y_noisy, flipped)``: ``y_noisy`` int64 ``[n]`` (a copy; ``y`` is untouched)
        and ``flipped`` the sorted int64 indices where ``y_noisy != y``.

    Raises:
        ValueError: fraction outside ``[0, 1)``, labels out of range, empty ``y``,
            unknown ``kind``, or a mapping with ``src == dst`` / out-of-range classes.
    """
    y_clean = _validate_labels(y, n_classes)
    try:
        fraction = float(fraction)
    except (TypeError, ValueError) as err:
        raise ValueError(f"fraction must be a number in [0, 1), got {fraction!r}") from err
    if not (0.0 <= fraction < 1.0):
        raise ValueError(f"fraction must lie in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    y_noisy = y_clean.copy()
    n = y_clean.shape[0]

    if kind == "symmetric":
        if mapping is not None:
            raise ValueError("mapping is only used with kind='asymmetric'")
        m = int(round(fraction * n))
        idx = np.sort(rng.choice(n, size=m, replace=False)).astype(np.int64)
        # Uniform over the C-1 other classes: add an offset in [1, C-1] modulo C.
        offset = rng.integers(1, n_classes, size=m)
        y_noisy[idx] = (y_clean[idx] + offset) % n_classes
        return y_noisy, idx

    if kind == "asymmetric":
        mapping = dict(DEFAULT_ASYMMETRIC_MAP if mapping is None else mapping)
        for src, dst in mapping.items():
            for name, c in (("source", src), ("target", dst)):
                if not isinstance(c, (int, np.integer)) or not (0 <= c < n_classes):
                    raise ValueError(
                        f"mapping {src}->{dst}: {name} class {c!r} is outside [0, {n_classes})"
                    )
            if src == dst:
                raise ValueError(f"mapping {src}->{dst}: source and target class are the same")
        flipped: list[np.ndarray] = []
        # Select from the *clean* labels so chained maps (2->7, 7->1) do not compound.
        for src in sorted(mapping):
            members = np.flatnonzero(y_clean == src)
            m = int(round(fraction * members.size))
            if m == 0:
                continue
            chosen = rng.choice(members, size=m, replace=False)
            y_noisy[chosen] = mapping[src]
            flipped.append(chosen)
        idx = np.sort(np.concatenate(flipped)) if flipped else np.empty(0, dtype=np.int64)
        return y_noisy, idx.astype(np.int64)

    raise ValueError(f"unknown noise kind {kind!r}; expected 'symmetric' or 'asymmetric'")


def noisy_train_labels(
    y: np.ndarray,
    n_classes: int,
    noise: float,
    kind: Literal["symmetric", "asymmetric"] = "symmetric",
    mapping: dict[int, int] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The training labels a data-set loader hands out: ``y`` with ``noise`` of them flipped
    (:func:`flip_labels`; the class-pair ``mapping`` applies to asymmetric noise only), or a
    copy of ``y`` when ``noise == 0``. ``noise`` must lie in ``[0, 1)``."""
    if not (0.0 <= noise < 1.0):
        raise ValueError(f"noise must lie in [0, 1), got {noise}")
    if noise == 0:
        return np.asarray(y).copy()
    pairs = mapping if kind == "asymmetric" else None
    return flip_labels(y, n_classes, noise, kind=kind, mapping=pairs, seed=seed)[0]
