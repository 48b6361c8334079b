"""What ``gradsift detect`` does, as library calls: score every row of a file or of your model.

:func:`detect_file` reads a CSV / TSV / NPZ table, trains a classifier on it and scores
every row (:func:`~gradsift.experiments.tabular.detect_table`); :func:`detect_user_model`
loads your trained model and data from a factory (:mod:`gradsift.factory`) and scores them
as given. Both return a :class:`DetectRun`, which :func:`gradsift.report.pages.detect_report`
renders. :func:`check_oga_config` refuses bad detector and checkpoint settings before any
training starts.

Ranks in :attr:`DetectRun.scores` are **1-based** (1 = most suspicious), as everywhere a
person reads them (tables, CSV, JSON, reports); :attr:`DetectionResult.rank` inside
:attr:`DetectRun.oga` stays 0-based.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradsift.detect.oga import OGAConfig, OGAResult, OutlierGradientAnalysis
from gradsift.detect.registry import get_detector
from gradsift.errors import GradsiftError
from gradsift.experiments.tabular import Classifier, Table, detect_table, read_table
from gradsift.experiments.training import TrainConfig
from gradsift.factory import load_factory
from gradsift.task import TrackSpec

__all__ = ["DetectRun", "check_oga_config", "detect_file", "detect_user_model", "scores_frame"]

CHECKPOINT_MODES = ("best", "final", "ensemble")


@dataclass
class DetectRun:
    """Per-row detection scores and what they were computed from.

    Attributes:
        oga: ``{detector: DetectionResult}`` (higher score = more suspicious) in the order
            the detectors were given, plus the checkpoints used and timings.
        scores: one row per training row (index ``index`` = row number): for a file, the
            ``--id-column`` (when given), ``label`` and ``predicted`` (in the file's label
            values); then per detector ``<name>_score``, ``<name>_rank`` (1-based: 1 = most
            suspicious), ``<name>_is_issue``.
        info: facts about the run (``n`` rows, ``source``, ``notices``, ...).
        table: the rows as read from the file (``None`` for a user model).
        predicted: int ``[n]`` predictions of the trained classifier (file only).
    """

    oga: OGAResult
    scores: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    table: Table | None = None
    predicted: np.ndarray | None = None

    @property
    def detectors(self) -> list[str]:
        """Detector names; the first one ranks :meth:`most_suspicious`."""
        return list(self.oga.results)

    def flagged(self) -> dict[str, int]:
        """Number of rows each detector flags at its budget."""
        return {name: int(r.is_issue.sum()) for name, r in self.oga.results.items()}

    def most_suspicious(self, top: int) -> pd.DataFrame:
        """The ``top`` rows of :attr:`scores` ranked most suspicious by the first detector."""
        return self.scores.sort_values(f"{self.detectors[0]}_rank").head(top)


def scores_frame(oga: OGAResult) -> pd.DataFrame:
    """One row per sample (index ``index``): per detector ``<name>_score``, ``<name>_rank``
    (1-based) and ``<name>_is_issue``."""
    frame = oga.scores_frame()
    for name in oga.results:
        frame[f"{name}_rank"] = frame[f"{name}_rank"] + 1
    return frame


def check_oga_config(config: OGAConfig) -> None:
    """Refuse an empty or unknown detector list and an unknown checkpoint choice.

    Raises:
        GradsiftError: the message names the accepted values.
    """
    names = list(config.detectors)
    if not names:
        raise GradsiftError("--detectors is empty: give comma-separated names, e.g. l2,loss")
    for name in names:
        try:
            get_detector(name)
        except (ValueError, ImportError) as err:
            raise GradsiftError(str(err)) from None
    choice = config.checkpoint
    if isinstance(choice, str):
        if choice not in CHECKPOINT_MODES:
            raise GradsiftError(
                f"--checkpoint must be best, final, ensemble or comma-separated epochs, got {choice!r}"
            )
    elif not (isinstance(choice, Sequence) and choice and all(isinstance(e, int) for e in choice)):
        raise GradsiftError(f"checkpoint epochs must be a non-empty list of ints, got {choice!r}")


def detect_file(
    path: str | Path,
    label_column: str = "label",
    x_key: str = "X",
    y_key: str = "y",
    classifier: Classifier = "mlp",
    hidden: int = 128,
    train: TrainConfig | None = None,
    oga: OGAConfig | None = None,
    id_column: str | None = None,
    sep: str | None = None,
) -> DetectRun:
    """Read a CSV / TSV (numeric features + ``label_column``, optional ``id_column``) or an
    NPZ (``x_key``, ``y_key``) and score every row (see
    :func:`~gradsift.experiments.tabular.detect_table`)."""
    if oga is not None:
        check_oga_config(oga)
    table = read_table(path, label_column, x_key, y_key, id_column, sep)
    result = detect_table(table, classifier, train, oga, hidden=(hidden,))
    frame = scores_frame(result.oga)
    names = table.class_names
    frame.insert(0, "label", [names[v] for v in table.y] if names else table.y)
    frame.insert(
        1, "predicted", [names[v] for v in result.predicted] if names else result.predicted
    )
    if table.row_ids is not None:
        frame.insert(0, str(table.id_column), table.row_ids)
    info = {
        **result.info,
        "source": str(path),
        "features": len(table.feature_names),
        "id_column": table.id_column,
        "class_names": names,
        "notices": table.notices,
    }
    return DetectRun(result.oga, frame, info, table, result.predicted)


def detect_user_model(
    spec: str, oga: OGAConfig | None = None, tracked: TrackSpec | None = None
) -> DetectRun:
    """Score your trained model's training data (``spec``: ``'pkg.module:factory'`` or
    ``'file.py:factory'``, see :func:`gradsift.factory.load_factory`) with the model as given.

    ``tracked`` overrides the task's tracked parameters (``None``: the task's own).
    """
    if oga is not None:
        check_oga_config(oga)
    setup = load_factory(spec).with_tracked(tracked)
    setup.model.eval()
    result = OutlierGradientAnalysis(setup.model, setup.task, oga).run(setup.dataset)
    frame = scores_frame(result)
    info = {"n": len(frame), "source": spec, "checkpoint": "the model as given", "notices": []}
    return DetectRun(result, frame, info)
