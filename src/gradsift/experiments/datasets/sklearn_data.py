"""scikit-learn's bundled data sets with known label noise: digits and the OGA half-moons.

No network access is needed: both come with scikit-learn.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn import datasets as _skd

from gradsift.experiments.datasets.splits import (
    LabeledData,
    Split,
    _check_fractions,
    _cut,
    _three_way_split,
)
from gradsift.experiments.noise import noisy_train_labels

__all__ = ["load_digits", "load_half_moons"]


def load_digits(
    noise: float = 0.0,
    noise_kind: Literal["symmetric", "asymmetric"] = "symmetric",
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    standardize: bool = True,
    mapping: dict[int, int] | None = None,
) -> LabeledData:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 samples, 10 classes).

    Args:
        noise: label-noise fraction in ``[0, 1)`` injected into the train split only
            (see :func:`gradsift.experiments.noise.flip_labels`).
        noise_kind: ``"symmetric"`` or ``"asymmetric"`` (class-pair map, default
            :data:`gradsift.experiments.noise.DEFAULT_ASYMMETRIC_MAP`).
        seed: seeds the stratified split and the noise.
        val_fraction, test_fraction: fractions of all samples for val / test.
        standardize: z-score each pixel with mean / std fitted on train only
            (constant pixels get std 1).
        mapping: optional class-pair map for asymmetric noise.

    Returns:
        LabeledData with ``X`` float32 ``[n, 64]``, ``X_raw`` the pixel intensities
        (0..16, float32 ``[n, 64]``), ``image_shape=(8, 8)``, ``kind="image"``.
    """
    _check_fractions(val_fraction, test_fraction)
    bunch = _skd.load_digits()
    X_all = np.asarray(bunch.data, dtype=np.float32)
    y_all = np.asarray(bunch.target, dtype=np.int64)
    tr, va, te = _three_way_split(y_all, val_fraction, test_fraction, seed)

    if standardize:
        mean = X_all[tr].mean(axis=0)
        std = X_all[tr].std(axis=0)
        std = np.where(std > 1e-8, std, 1.0).astype(np.float32)

        def tf(a: np.ndarray) -> np.ndarray:
            return ((a - mean) / std).astype(np.float32)
    else:

        def tf(a: np.ndarray) -> np.ndarray:
            return a.astype(np.float32, copy=True)

    y_train = y_all[tr]
    y_noisy = noisy_train_labels(y_train, 10, noise, noise_kind, mapping, seed)

    def mk(ix: np.ndarray, y_given: np.ndarray) -> Split:
        return Split(X=tf(X_all[ix]), y=y_given, y_clean=y_all[ix], X_raw=X_all[ix].copy())

    return LabeledData(
        name="digits",
        train=mk(tr, y_noisy),
        val=mk(va, y_all[va].copy()),
        test=mk(te, y_all[te].copy()),
        n_classes=10,
        kind="image",
        image_shape=(8, 8),
        feature_names=[f"pixel_{r}_{c}" for r in range(8) for c in range(8)],
        class_names=[str(d) for d in range(10)],
    )


def load_half_moons(
    seed: int = 0,
    n_train: int = 250,
    n_test: int = 100,
    flips_per_class: int = 10,
    noise_std: float = 0.1,
    n_val: int = 50,
) -> LabeledData:
    """The OGA paper's synthetic two-moons set with exactly ``2 * flips_per_class`` flips.

    ``n_train + n_val + n_test`` points are drawn by ``sklearn.datasets.make_moons``
    (seeded) and split stratified into train / val / test. In train, exactly
    ``flips_per_class`` points of class 0 are relabelled 1 and ``flips_per_class`` points
    of class 1 are relabelled 0. Features are the raw 2-D coordinates (float32 ``[n, 2]``).
    """
    for nm, v in (("n_train", n_train), ("n_test", n_test), ("n_val", n_val)):
        if v < 0:
            raise ValueError(f"{nm} must be >= 0, got {v}")
    if n_train < 2:
        raise ValueError(f"n_train must be >= 2, got {n_train}")
    if flips_per_class < 0:
        raise ValueError(f"flips_per_class must be >= 0, got {flips_per_class}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    n_total = n_train + n_val + n_test
    X_all, y_all = _skd.make_moons(n_samples=n_total, noise=noise_std, random_state=seed)
    X_all = X_all.astype(np.float32)
    y_all = y_all.astype(np.int64)
    idx = np.arange(n_total)

    rest, te = _cut(y_all, idx, n_test, seed)
    tr, va = _cut(y_all, rest, n_val, seed + 1)

    y_train = y_all[tr]
    y_noisy = y_train.copy()
    rng = np.random.default_rng(seed)
    for c in (0, 1):
        members = np.flatnonzero(y_train == c)
        if flips_per_class > members.size:
            raise ValueError(
                f"flips_per_class={flips_per_class} exceeds the {members.size} train samples "
                f"of class {c}"
            )
        chosen = rng.choice(members, size=flips_per_class, replace=False)
        y_noisy[chosen] = 1 - c

    def mk(ix: np.ndarray, y_given: np.ndarray) -> Split:
        return Split(X=X_all[ix], y=y_given, y_clean=y_all[ix])

    return LabeledData(
        name="half_moons",
        train=mk(tr, y_noisy),
        val=mk(va, y_all[va].copy()),
        test=mk(te, y_all[te].copy()),
        n_classes=2,
        kind="tabular",
        feature_names=["x1", "x2"],
    )
