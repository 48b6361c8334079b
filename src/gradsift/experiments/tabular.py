"""User data from a CSV or NPZ file: read it, train a classifier, run OGA on every row.

The early-stopping epoch is chosen on a validation split, then the classifier is trained
again on *all* rows for that many epochs (same seed), so every row is a training sample
when its gradient is taken and no row's score leaks from a held-out fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from gradsift.detect.oga import OGAConfig, OGAResult
from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import from_arrays
from gradsift.experiments.models import logistic_regression, mlp
from gradsift.experiments.pipeline import train_and_rank
from gradsift.experiments.training import TrainConfig, predict_proba, train_classifier

Classifier = Literal["logreg", "mlp"]


@dataclass
class Table:
    """Features ``X`` float32 ``[n, d]``, integer labels ``y`` ``[n]`` and their names.

    ``image_shape`` is the per-row shape (``[H, W]`` or ``[C, H, W]``) when the file held
    images (an NPZ array with 3 or 4 dimensions); ``X`` holds them flattened.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    class_names: list[str] | None = None
    image_shape: tuple[int, ...] | None = None


def read_table(
    path: str | Path, label_column: str = "label", x_key: str = "X", y_key: str = "y"
) -> Table:
    """Read a CSV (numeric feature columns + ``label_column``) or an NPZ (``x_key``, ``y_key``)."""
    path = Path(path)
    if not path.exists():
        raise GradsiftError(f"no such file: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in (x_key, y_key) if k not in npz]
            if missing:
                raise GradsiftError(
                    f"{path} has no arrays {missing}; it holds {list(npz.keys())} (use --x-key/--y-key)"
                )
            X, y = npz[x_key], npz[y_key]
        image_shape = tuple(X.shape[1:]) if X.ndim in (3, 4) else None
        X = X.reshape(len(X), -1)
        names = [f"x{i}" for i in range(X.shape[1])]
    else:
        image_shape = None
        frame = pd.read_csv(path)
        if label_column not in frame.columns:
            raise GradsiftError(
                f"{path} has no column {label_column!r}; columns: {list(frame.columns)[:20]} (use --label-column)"
            )
        features = frame.drop(columns=[label_column])
        bad = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
        if bad:
            raise GradsiftError(
                f"non-numeric feature columns {bad[:10]}: encode them first or drop them"
            )
        X, y, names = (
            features.to_numpy(np.float32),
            frame[label_column].to_numpy(),
            list(features.columns),
        )
    if len(X) == 0:
        raise GradsiftError(f"{path} holds no rows")
    if not np.isfinite(X).all():
        rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise GradsiftError(f"missing or non-finite feature values in rows {rows[:10].tolist()}")
    data = from_arrays(X, y, val_fraction=0.0)  # label checks and string-label encoding
    y = _encode(y, data.class_names)
    return Table(X.astype(np.float32), y, names, data.class_names, image_shape)


def _encode(y: np.ndarray, class_names: list[str] | None) -> np.ndarray:
    if class_names is None:
        return y.astype(np.int64)
    lookup = {name: i for i, name in enumerate(class_names)}
    return np.array([lookup[str(v)] for v in y], dtype=np.int64)


def standardized(table: Table) -> Table:
    """Z-score each feature column (constant columns stay 0): unscaled columns such as
    prices next to ratios would otherwise dominate both training and the gradients."""
    mean, std = table.X.mean(axis=0), table.X.std(axis=0)
    X = ((table.X - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    return Table(X, table.y, table.feature_names, table.class_names, table.image_shape)


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
    table = standardized(table)
    oga = oga or OGAConfig()
    n_classes = int(table.y.max()) + 1 if table.class_names is None else len(table.class_names)

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
    best_epoch = int(np.argmax(history.val_accuracy)) + 1
    final = TrainConfig(**{**train.__dict__, "epochs": best_epoch})
    checkpoint = "final" if oga.checkpoint == "best" else oga.checkpoint
    config = OGAConfig(**{**oga.__dict__, "checkpoint": checkpoint})
    run = train_and_rank(build(), (table.X, table.y), final, {"rows": config})
    model, result = run.model, run.oga["rows"]
    predicted = predict_proba(model, table.X).argmax(axis=1)
    info = {
        "n": len(table.y),
        "classes": n_classes,
        "best_epoch": best_epoch,
        "classifier": classifier,
    }
    return TabularDetection(result, predicted, info)
