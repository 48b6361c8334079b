"""The ``gradsift explain`` pipeline: train a model on a built-in data set, explain test points.

:func:`run_explain` loads a data set (label noise in the training split) and builds the
model (:func:`gradsift.experiments.pipeline.load_and_build`), trains it, picks test points
(misclassified and correct ones by default) and explains them with
:func:`gradsift.influence.explain.explain` (FastIF or an influence method; positive
influence = helpful), and measures how well the shown samples explain the predictions
(:func:`simulatability`). It returns an :class:`ExplainRun`; the HTML page is
:func:`gradsift.report.pages.explain_report` and the scores table
``run.explanations.to_frame()``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradsift.config import DEFAULT_DAMPING
from gradsift.errors import GradsiftError
from gradsift.evaluate.simulatability import SimulatorAccuracy, explanation_simulatability
from gradsift.experiments.datasets import DATASETS, LabeledData, dataset_key
from gradsift.experiments.pipeline import load_and_build
from gradsift.experiments.training import TrainConfig, predict_proba, train_classifier
from gradsift.influence.explain import Explanations, explain
from gradsift.influence.fastif import FastIFConfig
from gradsift.influence.neighbors import IndexConfig
from gradsift.task import ClassificationTask

__all__ = ["ExplainRun", "run_explain", "simulatability"]


def _check_n_train(dataset: str, n_train: int | None) -> dict[str, Any]:
    """``{"n_train": n_train}`` for loaders that take it; refused for the others."""
    if not n_train:
        return {}
    key = dataset_key(dataset)
    if key in DATASETS and "n_train" not in inspect.signature(DATASETS[key]).parameters:
        raise GradsiftError(f"data set {dataset!r} takes no 'n_train' setting")
    return {"n_train": n_train}


@dataclass
class ExplainRun:
    """What :func:`run_explain` produced.

    Attributes:
        explanations: per test point the top helpful / harmful training samples and the
            heatmap rows (positive influence = helpful).
        info: JSON-serialisable facts (data set, test indices, accuracy, timings,
            ``"simulatability"``: :func:`simulatability` as ``{kind: {accuracy, low,
            high, n, correct, ...}}``).
        data: the data set (train split with its flips, test split).
        predicted: int ``[n_test]`` the model's test predictions.
        model_name, epochs: how the model was trained (for the report's subtitle).
    """

    explanations: Explanations
    info: dict[str, Any]
    data: LabeledData
    predicted: np.ndarray
    model_name: str
    epochs: int


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
    extra = {"hidden": (hidden,)} if model_name == "mlp" else {}
    data, model = load_and_build(
        dataset,
        model_name,
        seed=seed,
        noise=noise,
        model_kwargs=extra,
        dataset_kwargs=_check_n_train(dataset, n_train),
    )
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
        "simulatability": {
            kind: acc.to_dict() for kind, acc in simulatability(expl, data, predicted, seed).items()
        },
        "timings": expl.settings["timings"],
    }
    return ExplainRun(expl, info, data, predicted, model_name, epochs)


def simulatability(
    expl: Explanations, data: LabeledData, predicted: np.ndarray, seed: int = 0
) -> dict[str, SimulatorAccuracy]:
    """Quality of the explanations: can the shown samples' labels reproduce the predictions?

    The label-vote simulator (:func:`gradsift.evaluate.simulatability.label_vote`) sees the
    ``top`` helpful (or harmful, or ``top`` random: the control) training samples of each
    explained test point with their *given* training labels, and guesses the model's
    prediction ``predicted[test_indices]``. Returns ``{"helpful", "harmful", "random"}``
    accuracies with 95% Wilson intervals over the explained points (few points: wide
    intervals). Explanations score the loss at the *given* test label, so on misclassified
    points helpful samples support the true label rather than the prediction.
    """
    return explanation_simulatability(
        expl, data.train.y, predicted[expl.test_indices], confidence=0.95, seed=seed
    )
