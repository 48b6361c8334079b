"""Tests for gradsift.experiments.noise.flip_labels against direct checks of the returned labels."""

from __future__ import annotations

import numpy as np
import pytest

from gradsift.experiments.noise import DEFAULT_ASYMMETRIC_MAP, flip_labels


def _labels(n: int = 1000, n_classes: int = 10, seed: int = 123) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_classes, size=n)


@pytest.mark.parametrize("fraction", [0.0, 0.013, 0.1, 0.45, 0.99])
def test_symmetric_flips_exact_count_never_same_class(fraction: float) -> None:
    y = _labels()
    y_before = y.copy()
    y_noisy, flipped = flip_labels(y, 10, fraction, seed=3)
    assert y_noisy.dtype == np.int64 and flipped.dtype == np.int64
    assert np.array_equal(y, y_before), "input must not be modified"
    assert flipped.size == round(fraction * y.size)
    assert np.all(np.diff(flipped) > 0), "sorted and unique"
    # the flipped set is exactly where the labels differ: never relabelled to the same class
    assert np.array_equal(np.flatnonzero(y_noisy != y), flipped)
    assert np.all((y_noisy >= 0) & (y_noisy < 10))


def test_symmetric_targets_uniform_over_other_classes() -> None:
    y = np.zeros(6000, dtype=np.int64)
    y_noisy, flipped = flip_labels(y, 4, 0.5, seed=0)
    counts = np.bincount(y_noisy[flipped], minlength=4)
    assert counts[0] == 0
    # each of the 3 other classes gets ~1/3 of 3000 flips (sd ≈ 26)
    assert np.all(np.abs(counts[1:] - 1000) < 150)


def test_symmetric_seeded() -> None:
    y = _labels()
    a = flip_labels(y, 10, 0.2, seed=7)
    b = flip_labels(y, 10, 0.2, seed=7)
    c = flip_labels(y, 10, 0.2, seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_asymmetric_default_map_exact_counts() -> None:
    y = _labels(2000)
    frac = 0.3
    y_noisy, flipped = flip_labels(y, 10, frac, kind="asymmetric", seed=1)
    assert np.array_equal(np.flatnonzero(y_noisy != y), flipped)
    for src, dst in DEFAULT_ASYMMETRIC_MAP.items():
        of_src = flipped[y[flipped] == src]
        assert of_src.size == round(frac * np.sum(y == src))
        assert np.all(y_noisy[of_src] == dst)
    # only source classes of the map are ever flipped
    assert set(np.unique(y[flipped])) <= set(DEFAULT_ASYMMETRIC_MAP)


def test_asymmetric_custom_map() -> None:
    y = np.repeat(np.arange(3), 100)
    y_noisy, flipped = flip_labels(y, 3, 0.25, kind="asymmetric", mapping={0: 2}, seed=0)
    assert flipped.size == 25
    assert np.all(y[flipped] == 0) and np.all(y_noisy[flipped] == 2)


def test_zero_fraction_no_flips() -> None:
    y = _labels(50)
    y_noisy, flipped = flip_labels(y, 10, 0.0)
    assert flipped.size == 0 and np.array_equal(y_noisy, y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": -0.1}, "fraction"),
        ({"fraction": 1.0}, "fraction"),
        ({"y": np.array([0, 1, 10])}, "range|lie"),
        ({"y": np.array([0, -1, 2])}, "range|lie"),
        ({"y": np.array([], dtype=np.int64)}, "empty"),
        ({"kind": "pairflip"}, "kind"),
        ({"kind": "asymmetric", "mapping": {1: 1}}, "same"),
        ({"kind": "asymmetric", "mapping": {1: 10}}, "outside"),
        ({"kind": "asymmetric", "mapping": {-1: 2}}, "outside"),
    ],
)
def test_bad_inputs(kwargs: dict, match: str) -> None:
    args = {"y": _labels(100), "n_classes": 10, "fraction": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        flip_labels(**args)
