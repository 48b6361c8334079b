"""User data from a CSV, TSV or NPZ file: read it, train a classifier, run OGA on every row.

:func:`read_table` validates what it reads and says what to do in one sentence when it
refuses (:class:`~gradsift.errors.GradsiftError`):

* labels: missing values and non-integer numbers (a continuous target) are refused, as
  is a column with more classes than half the rows; more classes than ``sqrt(n)`` gives
  a notice. Any class values (``{0, 1000}``, ``{"cat", "dog"}``) are mapped to
  ``0..C-1`` in sorted order and the original values kept as ``class_names``, which
  every output shows.
* row identity: ``id_column`` names a column of row IDs (text or numbers), kept apart
  from the features; constant columns and integer columns unique per row (an index or
  ID nobody named) are dropped from the features with a notice.
* features: numeric, finite and within the float32 range.

The early-stopping epoch is chosen on a validation split, then the classifier is trained
again on *all* rows for that many epochs (same seed), so every row is a training sample
when its gradient is taken and no row's score leaks from a held-out fit.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from gradsift.detect.checkpoint_choice import choose_epoch
from gradsift.detect.oga import OGAConfig, OGAResult
from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import from_arrays
from gradsift.experiments.models import logistic_regression, mlp
from gradsift.experiments.pipeline import train_and_rank
from gradsift.experiments.training import TrainConfig, predict_proba, train_classifier

Classifier = Literal["logreg", "mlp"]

MIN_ROWS = 10
"""Fewest rows :func:`read_table` accepts: a validation split and the neighbour-based
detectors need a handful of rows per side."""

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Table:
    """Features ``X`` float32 ``[n, d]``, labels ``y`` int64 ``[n]`` in ``0..C-1`` and their names.

    ``class_names[c]`` is the file's value of class ``c`` (``None`` when the file's labels
    already are ``0..C-1``). ``image_shape`` is the per-row shape (``[H, W]`` or
    ``[C, H, W]``) when the file held images (an NPZ array with 3 or 4 dimensions); ``X``
    holds them flattened. ``row_ids`` ``[n]`` are the values of ``id_column`` (``None``
    without one). ``notices`` are sentences about what was dropped or looks odd.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    class_names: list[str] | None = None
    image_shape: tuple[int, ...] | None = None
    row_ids: np.ndarray | None = None
    id_column: str | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        """Number of classes ``C``."""
        return len(self.class_names) if self.class_names else int(self.y.max()) + 1


def read_table(
    path: str | Path,
    label_column: str = "label",
    x_key: str = "X",
    y_key: str = "y",
    id_column: str | None = None,
    sep: str | None = None,
) -> Table:
    """Read a CSV / TSV (numeric feature columns, ``label_column`` and optionally
    ``id_column``) or an NPZ (arrays ``x_key``, ``y_key`` and optionally ``id_column``).

    ``sep``: the column separator (default: tab for ``.tsv`` / ``.tab`` files, else comma;
    ``"\\t"`` and ``"tab"`` mean a tab).

    Raises:
        GradsiftError: the file cannot be used as it is (the message says what to do).
    """
    path = Path(path)
    if not path.exists():
        raise GradsiftError(f"no such file: {path}")
    if path.is_dir():
        raise GradsiftError(f"{path} is a folder; give a CSV, TSV or NPZ file")
    if path.suffix == ".npy":
        raise GradsiftError(
            f"{path} is a single .npy array; save features and labels together with "
            "numpy.savez(path, X=features, y=labels) and give the .npz"
        )
    notices: list[str] = []
    if path.suffix == ".npz":
        X, y, names, ids, image_shape = _read_npz(path, x_key, y_key, id_column)
    else:
        X, y, names, ids, notices = _read_csv(path, label_column, id_column, sep)
        image_shape = None
    _check_finite(X)
    if len(X) < MIN_ROWS:
        raise GradsiftError(
            f"{path} holds {len(X)} rows; detection needs at least {MIN_ROWS} (more rows per "
            "class make the scores meaningful)"
        )
    codes, class_names, label_notices = encode_labels(y)
    return Table(
        X.astype(np.float32),
        codes,
        names,
        class_names,
        image_shape,
        ids,
        id_column if ids is not None else None,
        notices + label_notices,
    )


def _read_npz(
    path: Path, x_key: str, y_key: str, id_key: str | None
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None, tuple[int, ...] | None]:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise GradsiftError(f"cannot read {path} as an NPZ archive ({err})") from None
    with npz:
        wanted = [x_key, y_key] + ([id_key] if id_key else [])
        missing = [k for k in wanted if k not in npz]
        if missing:
            raise GradsiftError(
                f"{path} has no arrays {missing}; it holds {list(npz.keys())} "
                "(use --x-key/--y-key/--id-column)"
            )
        X, y = npz[x_key], npz[y_key]
        ids = npz[id_key] if id_key else None
    if X.ndim < 2 or not np.issubdtype(X.dtype, np.number):
        raise GradsiftError(
            f"{path}: {x_key} must be a numeric array [n, features...], got {X.dtype} {list(X.shape)}"
        )
    if y.ndim != 1 or len(y) != len(X) or (ids is not None and ids.shape != y.shape):
        raise GradsiftError(
            f"{path}: {y_key} (and the ID array) must be 1-D with one value per row of "
            f"{x_key} ({len(X)}), got {list(y.shape)}"
        )
    image_shape = tuple(X.shape[1:]) if X.ndim in (3, 4) else None
    X = X.reshape(len(X), -1).astype(np.float64)
    return X, y, [f"x{i}" for i in range(X.shape[1])], ids, image_shape


def separator(path: Path, sep: str | None) -> str:
    """The column separator: ``sep`` (``"\\t"``/``"tab"`` → tab), else by the suffix."""
    if sep is None:
        return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    if sep.lower() in ("\\t", "tab"):
        return "\t"
    if len(sep) != 1:
        raise GradsiftError(f"--sep must be one character (or 'tab'), got {sep!r}")
    return sep


def _read_csv(
    path: Path, label_column: str, id_column: str | None, sep: str | None
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None, list[str]]:
    delimiter = separator(path, sep)
    try:
        frame = pd.read_csv(path, sep=delimiter)
    except pd.errors.EmptyDataError:
        raise GradsiftError(f"{path} is empty: give a table with a header row") from None
    except UnicodeDecodeError:
        raise GradsiftError(
            f"{path} is not a text table (CSV/TSV); for arrays give an NPZ holding X and y"
        ) from None
    except pd.errors.ParserError as err:
        first = str(err).strip().splitlines()[0]
        raise GradsiftError(f"cannot parse {path} with separator {delimiter!r}: {first}") from None
    hint = _separator_hint(frame, delimiter)
    for option, column in (("--label-column", label_column), ("--id-column", id_column)):
        if column is not None and column not in frame.columns:
            raise GradsiftError(
                f"{path} has no column {column!r}; columns: {list(frame.columns)[:20]} "
                f"(use {option}){hint}"
            )
    if id_column == label_column:
        raise GradsiftError("--id-column and --label-column name the same column")
    if len(frame) == 0:
        raise GradsiftError(f"{path} holds a header but no rows")
    ids = frame[id_column].to_numpy() if id_column else None
    features = frame.drop(columns=[c for c in (label_column, id_column) if c])
    features, notices = _drop_id_like(features)
    return (
        features.to_numpy(np.float64),
        frame[label_column].to_numpy(),
        [str(c) for c in features.columns],
        ids,
        notices,
    )


def _separator_hint(frame: pd.DataFrame, delimiter: str) -> str:
    if frame.shape[1] != 1:
        return ""
    header = str(frame.columns[0])
    for other, name in ((";", ";"), ("\t", "tab"), (",", ",")):
        if other != delimiter and other in header:
            return f"; the header looks {name}-separated: pass --sep '{name}'"
    return ""


def _drop_id_like(features: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Refuse text columns; drop constant and integer unique-per-row columns (notices)."""
    n = len(features)
    text = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if text:
        ids = [c for c in text if features[c].nunique(dropna=False) == n]
        hint = f"; {ids[0]!r} looks like a row ID: pass --id-column {ids[0]}" if ids else ""
        raise GradsiftError(
            f"non-numeric feature columns {text[:10]}: encode them as numbers or drop them{hint}"
        )
    constant = [c for c in features.columns if features[c].nunique(dropna=False) <= 1]
    unique_ints = [
        c
        for c in features.columns
        if n > 2
        and c not in constant
        and pd.api.types.is_integer_dtype(features[c])  # integral floats may be features
        and features[c].nunique() == n
    ]
    notices = []
    if constant:
        notices.append(f"dropped constant columns {constant[:10]} (they carry no information)")
    if unique_ints:
        notices.append(
            f"dropped integer columns unique per row {unique_ints[:10]} (row IDs, not "
            "features); name one with --id-column to keep it in the outputs"
        )
    kept = features.drop(columns=constant + unique_ints)
    if kept.shape[1] == 0:
        raise GradsiftError("no feature columns left (besides the label and ID columns)")
    return kept, notices


def _check_finite(X: np.ndarray) -> None:
    finite = np.isfinite(X)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise GradsiftError(
            f"missing or non-finite feature values in rows {rows[:10].tolist()}: fill or drop them"
        )
    big = np.abs(X) > _FLOAT32_MAX
    if big.any():
        rows = np.flatnonzero(big.any(axis=1))
        raise GradsiftError(
            f"feature values beyond the float32 range (|x| > 3.4e38) in rows "
            f"{rows[:10].tolist()}: rescale those columns"
        )


def encode_labels(y: np.ndarray) -> tuple[np.ndarray, list[str] | None, list[str]]:
    """Labels ``y`` ``[n]`` (any values) → ``(codes int64 [n] in 0..C-1, class_names, notices)``.

    Codes follow the sorted order of the distinct values; ``class_names`` is ``None`` when
    the values already are ``0..C-1``. Refuses missing labels, non-integer numbers, fewer
    than 2 classes and more classes than half the rows.
    """
    y = np.asarray(y)
    n = len(y)
    missing = (
        pd.isna(y)
        if y.dtype == object
        else (np.isnan(y) if np.issubdtype(y.dtype, np.floating) else np.zeros(n, bool))
    )
    if y.dtype == object:
        missing |= np.array([isinstance(v, str) and not v.strip() for v in y])
    if missing.any():
        rows = np.flatnonzero(missing)
        raise GradsiftError(f"missing labels in rows {rows[:10].tolist()}: fill or drop those rows")
    if np.issubdtype(y.dtype, np.floating):
        fractional = y[np.mod(y, 1.0) != 0.0]
        if fractional.size:
            raise GradsiftError(
                f"the labels hold non-integer numbers (e.g. {fractional[0]:g}): a continuous "
                "target is not a class label; give a column of classes"
            )
        y = y.astype(np.int64)
    if y.dtype == bool:
        y = y.astype(np.int64)
    uniq, codes = np.unique(y.astype(str) if y.dtype == object else y, return_inverse=True)
    c = len(uniq)
    if c < 2:
        raise GradsiftError(f"the labels hold {c} class; detection needs at least 2")
    if c > n / 2:
        raise GradsiftError(
            f"{c} distinct labels in {n} rows: most classes hold a single row, so this is "
            "not a class label (an ID or a continuous column?); give a column of classes"
        )
    notices = []
    if c > math.sqrt(n):
        notices.append(
            f"{c} classes for {n} rows (more than sqrt(n) = {math.sqrt(n):.0f}): few rows per "
            "class make the scores noisy; check that the label column holds classes"
        )
    is_range = np.issubdtype(uniq.dtype, np.integer) and np.array_equal(uniq, np.arange(c))
    names = None if is_range else [str(u) for u in uniq]
    return codes.reshape(-1).astype(np.int64), names, notices


def standardized(table: Table) -> Table:
    """Z-score each feature column (constant columns stay 0): unscaled columns such as
    prices next to ratios would otherwise dominate both training and the gradients.
    Computed in float64, so columns of any float32 magnitude (1e38) keep their spread."""
    X = table.X.astype(np.float64)
    mean, std = X.mean(axis=0), X.std(axis=0)
    Z = ((X - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    return Table(
        Z,
        table.y,
        table.feature_names,
        table.class_names,
        table.image_shape,
        table.row_ids,
        table.id_column,
        table.notices,
    )


@dataclass
class TabularDetection:
    """The OGA result for every row, plus the model's predictions and the training facts."""

    oga: OGAResult
    predicted: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def detect_table(
    table: Table,
    classifier: Classifier = "mlp",
    train: TrainConfig | None = None,
    oga: OGAConfig | None = None,
    hidden: tuple[int, ...] = (128,),
    val_fraction: float = 0.2,
) -> TabularDetection:
    """Standardise features, choose the epoch on a validation split, retrain on all rows,
    score every row."""
    if classifier not in ("logreg", "mlp"):
        raise GradsiftError(f"classifier must be logreg or mlp, got {classifier!r}")
    train = train or TrainConfig(epochs=50, seed=0)
    if train.epochs < 1:
        raise GradsiftError(f"--epochs must be at least 1, got {train.epochs}")
    table = standardized(table)
    oga = oga or OGAConfig()
    n_classes = table.n_classes

    def build():
        if classifier == "logreg":
            return logistic_regression(table.X.shape[1], n_classes, seed=train.seed)
        return mlp(table.X.shape[1], n_classes, hidden=hidden, seed=train.seed)

    split = from_arrays(
        table.X, table.y, val_fraction=val_fraction, seed=train.seed, n_classes=n_classes
    )
    history = train_classifier(
        build(), split.train.X, split.train.y, train, val=(split.val.X, split.val.y)
    )
    choice = choose_epoch(history)
    final = TrainConfig(**{**train.__dict__, "epochs": max(choice.epochs)})
    checkpoint = list(choice.epochs) if oga.checkpoint == "best" else oga.checkpoint
    config = OGAConfig(**{**oga.__dict__, "checkpoint": checkpoint})
    run = train_and_rank(build(), (table.X, table.y), final, {"rows": config})
    model, result = run.model, run.oga["rows"]
    predicted = predict_proba(model, table.X).argmax(axis=1)
    info = {
        "n": len(table.y),
        "classes": n_classes,
        "best_epoch": choice.epoch,
        "checkpoint": (
            f"gradients summed over {choice.reason}"
            if oga.checkpoint == "best"
            else f"checkpoint {oga.checkpoint!r} as asked"
        ),
        "checkpoint_choice": choice.to_dict(),
        "classifier": classifier,
    }
    return TabularDetection(result, predicted, info)
