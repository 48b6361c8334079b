"""The ``gradsift explain`` pipeline: train a model on a built-in data set, explain test points.

:func:`run_explain` loads a data set (label noise in the training split), trains a model,
picks test points (misclassified and correct ones by default), explains them with
:func:`gradsift.influence.explain.explain` (FastIF or an influence method) and writes an
HTML report (:func:`~gradsift.influence.explain.add_explanations`) and a CSV of the scores
(positive influence = helpful).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradsift.config import DEFAULT_DAMPING
from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import DATASETS, load_dataset
from gradsift.experiments.models import build_model
from gradsift.experiments.training import TrainConfig, predict_proba, train_classifier
from gradsift.influence.explain import Explanations, add_explanations, explain
from gradsift.influence.fastif import FastIFConfig
from gradsift.influence.neighbors import IndexConfig
from gradsift.report.html import Report
from gradsift.task import ClassificationTask

__all__ = ["ExplainRun", "run_explain"]


def _load(dataset: str, noise: float, seed: int, n_train: int | None) -> Any:
    key = dataset.strip().lower().replace("-", "_")
    accepted = set(inspect.signature(DATASETS[key]).parameters) if key in DATASETS else set()
    kwargs: dict[str, Any] = {"seed": seed}
    for name, value in (("noise", noise), ("n_train", n_train)):
        if value:
            if key in DATASETS and name not in accepted:
                raise GradsiftError(f"data set {dataset!r} takes no {name!r} setting")
            kwargs[name] = value
    return load_dataset(dataset, **kwargs)


@dataclass
class ExplainRun:
    """What :func:`run_explain` produced."""

    explanations: Explanations
    info: dict[str, Any]
    report_path: Path | None
    csv_path: Path | None


def run_explain(
    dataset: str = "digits",
    noise: float = 0.1,
    seed: int = 0,
    model_name: str = "mlp",
    hidden: int = 64,
    epochs: int = 30,
    weight_decay: float = 1e-3,
    test_indices: Sequence[int] | None = None,
    n_auto: int = 3,
    method: str = "fastif",
    top: int = 5,
    heatmap_top: int = 3,
    k: int = 1000,
    space: str = "features",
    damping: float = DEFAULT_DAMPING,
    workers: int = 1,
    report_path: str | Path | None = "explain.html",
    csv_path: str | Path | None = None,
    n_train: int | None = None,
) -> ExplainRun:
    """Train a model on a built-in data set and explain test points (``gradsift explain``).

    ``test_indices`` default: the first ``n_auto`` misclassified and the first ``n_auto``
    correctly classified test points. Label noise (``noise``) is injected into the
    training split only, so the report can show whether flipped samples are harmful
    (``half_moons`` has its own fixed flips: use ``noise=0``). ``n_train`` subsamples
    the training split of loaders that support it (``mnist``).
    """
    t0 = time.perf_counter()
    data = _load(dataset, noise, seed, n_train)
    extra = {"hidden": (hidden,)} if model_name == "mlp" else {}
    model = build_model(model_name, data.train.X.shape[1:], data.n_classes, seed=seed, **extra)
    train_classifier(
        model,
        data.train.X,
        data.train.y,
        TrainConfig(epochs=epochs, weight_decay=weight_decay, seed=seed),
        progress=False,
    )
    model.eval()
    predicted = predict_proba(model, data.test.X).argmax(1)
    if test_indices is None:
        wrong = np.flatnonzero(predicted != data.test.y)[:n_auto]
        right = np.flatnonzero(predicted == data.test.y)[:n_auto]
        test_indices = np.concatenate([wrong, right]).tolist()
    train_s = time.perf_counter() - t0
    task = ClassificationTask()
    train_data = (torch.as_tensor(data.train.X), torch.as_tensor(data.train.y))
    test_data = (torch.as_tensor(data.test.X), torch.as_tensor(data.test.y))
    config = FastIFConfig(
        k=k,
        space=space,  # type: ignore[arg-type]
        index=IndexConfig(backend="flat", metric="l2" if space == "features" else "ip"),
        workers=workers,
    )
    expl = explain(
        model,
        task,
        train_data,
        test_data,
        test_indices,
        method=method,
        top=top,
        heatmap_top=min(heatmap_top, top),
        damping=damping,
        weight_decay=weight_decay,
        fastif_config=config,
        solver=None,
    )
    expl.settings["timings"]["train"] = train_s
    flipped = data.train.flipped
    h_flip = float(np.isin(expl.helpful_indices, flipped).mean())
    a_flip = float(np.isin(expl.harmful_indices, flipped).mean())
    info = {
        "dataset": dataset,
        "n_train": len(data.train),
        "n_flipped": len(flipped),
        "test_accuracy": float((predicted == data.test.y).mean()),
        "test_indices": [int(t) for t in expl.test_indices],
        "method": method,
        "flipped_among_helpful": h_flip,
        "flipped_among_harmful": a_flip,
        "timings": expl.settings["timings"],
    }
    out_report = None
    if report_path is not None:
        report = Report(
            f"gradsift explain: {dataset}",
            f"{model_name} trained {epochs} epochs on {len(data.train)} samples "
            f"({len(flipped)} labels flipped); method {method}",
        )
        report.add_section("Set-up").add_key_values(
            {k: v for k, v in info.items() if k not in ("timings",)}, caption="Run"
        )
        add_explanations(
            report,
            expl,
            data.train,
            data.test,
            data.kind,
            data.image_shape,
            data.feature_names if data.kind == "tabular" else None,
            data.class_names,
            test_predicted=predicted,
        )
        out_report = report.save(report_path)
    out_csv = None
    if csv_path is not None:
        out_csv = Path(csv_path)
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        expl.to_frame().to_csv(out_csv, index=False)
    return ExplainRun(expl, info, out_report, out_csv)
