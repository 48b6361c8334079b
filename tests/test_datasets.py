"""Tests for gradsift.experiments.datasets: split sizes, noise only in train, standardisation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from gradsift.experiments.datasets import (
    LabeledData,
    Split,
    from_arrays,
    load_dataset,
    load_digits,
    load_half_moons,
)
from gradsift.experiments.noise import DEFAULT_ASYMMETRIC_MAP


def _check_split_types(s: Split) -> None:
    assert s.X.dtype == np.float32
    assert s.y.dtype == np.int64 and s.y_clean.dtype == np.int64
    assert s.X.shape[0] == s.y.shape[0] == s.y_clean.shape[0] == len(s)


def test_digits_shapes_and_clean_val_test() -> None:
    d = load_digits(noise=0.2, seed=0)
    assert isinstance(d, LabeledData)
    assert d.kind == "image" and d.image_shape == (8, 8) and d.n_classes == 10
    assert d.n_features == 64
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert len(d.test) == round(0.2 * 1797) and len(d.val) == round(0.2 * 1797)
    for s in (d.train, d.val, d.test):
        _check_split_types(s)
        assert s.X.shape[1] == 64 and s.X_raw is not None
    # noise only in train, exact count, flipped property consistent
    assert d.train.flipped.size == round(0.2 * len(d.train))
    assert np.array_equal(d.train.flipped, np.flatnonzero(d.train.y != d.train.y_clean))
    assert d.val.flipped.size == 0 and d.test.flipped.size == 0


def test_digits_raw_pixels_and_standardisation() -> None:
    d = load_digits(seed=1)
    sk = sk_load_digits()
    # every raw row is a real digit with its true label
    lookup = {
        row.tobytes(): lab for row, lab in zip(sk.data.astype(np.float32), sk.target, strict=True)
    }
    for s in (d.train, d.val, d.test):
        assert all(lookup[r.tobytes()] == lab for r, lab in zip(s.X_raw, s.y_clean, strict=True))
    # standardisation fitted on train raw pixels only
    mean = d.train.X_raw.mean(axis=0)
    std = d.train.X_raw.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    for s in (d.train, d.val, d.test):
        np.testing.assert_allclose(s.X, (s.X_raw - mean) / std, rtol=1e-4, atol=1e-4)
    # unstandardised variant
    raw = load_digits(seed=1, standardize=False)
    np.testing.assert_array_equal(raw.train.X, raw.train.X_raw)


def test_digits_stratified_and_seeded() -> None:
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    np.testing.assert_array_equal(a.train.X, b.train.X)
    assert not np.array_equal(a.train.y, c.train.y)
    full = np.bincount(sk_load_digits().target, minlength=10) / 1797
    for s in (a.train, a.val, a.test):
        assert np.abs(np.bincount(s.y_clean, minlength=10) / len(s) - full).max() < 0.02


def test_digits_asymmetric_noise_follows_map() -> None:
    d = load_digits(noise=0.3, noise_kind="asymmetric", seed=0)
    f = d.train.flipped
    assert f.size > 0
    for i in f:
        assert DEFAULT_ASYMMETRIC_MAP[int(d.train.y_clean[i])] == d.train.y[i]
    for src in DEFAULT_ASYMMETRIC_MAP:
        n_src = np.sum(d.train.y_clean == src)
        assert np.sum(d.train.y_clean[f] == src) == round(0.3 * n_src)


def test_half_moons_exact_flips() -> None:
    d = load_half_moons(seed=0)
    assert (len(d.train), len(d.val), len(d.test)) == (250, 50, 100)
    assert d.n_classes == 2 and d.kind == "tabular" and d.n_features == 2
    for s in (d.train, d.val, d.test):
        _check_split_types(s)
    f = d.train.flipped
    assert f.size == 20
    assert np.sum(d.train.y_clean[f] == 0) == 10 and np.sum(d.train.y_clean[f] == 1) == 10
    assert np.all(d.train.y[f] == 1 - d.train.y_clean[f])
    assert d.val.flipped.size == 0 and d.test.flipped.size == 0
    e = load_half_moons(seed=0)
    np.testing.assert_array_equal(d.train.X, e.train.X)
    np.testing.assert_array_equal(d.train.y, e.train.y)
    assert load_half_moons(seed=0, flips_per_class=3).train.flipped.size == 6
    with pytest.raises(ValueError, match="flips_per_class"):
        load_half_moons(n_train=20, flips_per_class=50)


def test_split_subset() -> None:
    d = load_half_moons(seed=2)
    idx = np.array([0, 5, 7])
    s = d.train.subset(idx)
    assert len(s) == 3
    np.testing.assert_array_equal(s.X, d.train.X[idx])
    np.testing.assert_array_equal(s.y, d.train.y[idx])
    mask = np.zeros(len(d.train), dtype=bool)
    mask[d.train.flipped] = True
    assert np.all(d.train.subset(mask).y != d.train.subset(mask).y_clean)
    with pytest.raises(ValueError):
        Split(X=np.zeros((3, 2)), y=np.zeros(2), y_clean=np.zeros(3))


def test_from_arrays() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 5))
    y = rng.integers(0, 3, size=100)
    d = from_arrays(X, y, name="mine", val_fraction=0.2, test_fraction=0.1, seed=0)
    assert d.name == "mine" and d.n_classes == 3 and d.kind == "tabular"
    assert (len(d.train), len(d.val), len(d.test)) == (70, 20, 10)
    for s in (d.train, d.val, d.test):
        _check_split_types(s)
        assert s.flipped.size == 0
    # every row kept once
    rows = np.concatenate([d.train.X, d.val.X, d.test.X])
    assert sorted(map(bytes, rows)) == sorted(map(bytes, X.astype(np.float32)))
    # default: no test split
    assert len(from_arrays(X, y).test) == 0
    # string labels are encoded, names kept
    ys = np.array(["cat", "dog"] * 50)
    ds = from_arrays(X, ys)
    assert ds.class_names == ["cat", "dog"] and ds.n_classes == 2
    assert set(np.unique(ds.train.y)) == {0, 1}
    img = from_arrays(rng.normal(size=(40, 6, 6)), np.repeat([0, 1], 20))
    assert img.kind == "image" and img.image_shape == (6, 6)
    with pytest.raises(ValueError, match="NaN"):
        from_arrays(np.full((10, 2), np.nan), np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="shape"):
        from_arrays(X, y[:-1])
    with pytest.raises(ValueError, match="lie in"):
        from_arrays(X, y, n_classes=2)


def test_load_dataset_registry() -> None:
    d = load_dataset("half_moons", seed=1, flips_per_class=2)
    assert d.train.flipped.size == 4
    assert load_dataset("half-moons").name == "half_moons"
    with pytest.raises(ValueError, match="digits.*half_moons"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="unknown argument"):
        load_dataset("digits", nosie=0.1)
