"""The trimming experiment end to end: :func:`run_trim_experiment` and :func:`trim_dataset`."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from gradsift.detect.oga import OGAConfig
from gradsift.detect.result import DetectionResult
from gradsift.experiments.datasets import LabeledData, dataset_key, load_with_noise
from gradsift.experiments.pipeline import train_and_rank
from gradsift.experiments.training import predict_proba
from gradsift.experiments.trimming.budget import ValidationRuns, choose_budgets
from gradsift.experiments.trimming.cache import data_fingerprint, load_cached, run_key
from gradsift.experiments.trimming.jobs import TrimJob, plan_jobs
from gradsift.experiments.trimming.pool import execute, run_data
from gradsift.experiments.trimming.recipe import DEFAULT_RECIPES, Recipe, TrimConfig
from gradsift.experiments.trimming.summary import TrimResult, summarize

__all__ = ["DEFAULT_DATASET_KWARGS", "TrimPipelineResult", "run_trim_experiment", "trim_dataset"]


def run_trim_experiment(
    data: LabeledData,
    rankings: Mapping[str, np.ndarray | DetectionResult],
    recipe: Recipe = Recipe(),
    config: TrimConfig = TrimConfig(),
    on_run_done: Callable[[TrimJob, dict[str, Any]], None] | None = None,
) -> TrimResult:
    """Run the trimming experiment (see :mod:`gradsift.experiments.trimming`).

    Args:
        data: train / val / test splits. Training uses the given (possibly noisy) train
            labels; validation accuracy uses ``val.y`` and chooses the budget; test
            accuracy uses the clean ``test.y_clean``. The flipped train samples
            (``train.flipped``), when any, give the oracle and the removal precision.
        rankings: ``{name: scores}``, float ``[n_train]`` detection scores (higher = more
            suspicious) or :class:`DetectionResult`; the top-scored samples are removed.
            May be empty (then only the controls run).
        recipe: the seeded training recipe shared by every run.
        config: budgets, seeds, controls, parallelism and the cache folder.
        on_run_done: called in this process after each newly trained run (not for cached
            ones) with the job and its record.

    Returns:
        :class:`TrimResult` with every run, the curves, and the summary at the budgets
        chosen on validation.
    """
    t0 = time.perf_counter()
    arrays = run_data(data)
    flipped = data.train.flipped
    flips_known = flipped.size > 0
    jobs = plan_jobs(len(data.train), rankings, config, flipped if flips_known else None)
    fp = data_fingerprint(data)
    cache_dir = None if config.cache_dir is None else Path(config.cache_dir)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)

    keyed = [(job, run_key(recipe, job.seed, job.removed, fp)) for job in jobs]
    records: dict[str, dict[str, Any]] = {}
    for _, key in keyed:
        rec = load_cached(cache_dir, key)
        if rec is not None:
            records[key] = rec
    cached_keys = set(records)
    todo, seen = [], set(records)
    for job, key in keyed:  # identical runs (same removal, seed) are trained once
        if key not in seen:
            todo.append((job, key))
            seen.add(key)
    records.update(execute(todo, recipe, arrays, config, cache_dir, on_run_done))

    runs = _runs_frame(keyed, records, cached_keys, flipped, len(data.train))
    chosen = choose_budgets(ValidationRuns.from_runs(runs))
    curve, summary = summarize(runs, chosen, flips_known)
    info = {
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "n_flipped": int(flipped.size),
        "seeds": list(config.seeds),
        "budgets": [float(b) for b in config.budgets],
        "recipe": recipe.to_dict(),
        "n_runs": len(jobs),
        "n_trained": len(todo),
        "n_cached": len(cached_keys),
        "wall_seconds": time.perf_counter() - t0,
        "train_seconds": float(sum(records[k]["seconds"] for _, k in todo)),
    }
    return TrimResult(runs=runs, curve=curve, summary=summary, chosen=chosen, info=info)


def _runs_frame(
    keyed: list[tuple[TrimJob, str]],
    records: Mapping[str, Mapping[str, Any]],
    cached_keys: set[str],
    flipped: np.ndarray,
    n_train: int,
) -> pd.DataFrame:
    """One row per planned run (see :attr:`TrimResult.runs`)."""
    is_flipped = np.zeros(n_train, dtype=bool)
    is_flipped[flipped] = True
    rows = []
    for job, key in keyed:
        rec = records[key]
        rows.append(
            {
                "method": job.method,
                "kind": job.kind,
                "budget": job.budget,
                "n_removed": int(job.removed.size),
                "seed": job.seed,
                "n_flipped_removed": int(is_flipped[job.removed].sum()),
                "val_accuracy": float(rec["val_accuracy"]),
                "test_accuracy": float(rec["test_accuracy"]),
                "epoch": int(rec["epoch"]),
                "seconds": float(rec["seconds"]),
                "cached": key in cached_keys,
                "key": key,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- end to end

#: Data-set arguments used by :func:`trim_dataset` unless overridden.
DEFAULT_DATASET_KWARGS: dict[str, dict[str, Any]] = {
    "mnist": {"n_train": 5000, "n_val": 2000, "n_test": 10000},
}


@dataclass
class TrimPipelineResult:
    """Everything :func:`trim_dataset` produced.

    Attributes:
        data: the loaded data set (with the injected noise).
        detection: ``{detector: DetectionResult}`` on the training set.
        predicted: int ``[n_train]`` predictions of the detection model at the checkpoint
            the gradients were taken at.
        checkpoints: the checkpoints used (epoch, lr, metrics).
        trim: the trimming experiment.
        recipe: the training recipe.
        timings: seconds per step.
    """

    data: LabeledData
    detection: dict[str, DetectionResult]
    predicted: np.ndarray
    checkpoints: list[dict[str, Any]]
    trim: TrimResult
    recipe: Recipe
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: sizes, chosen budgets, the summary rows, run counts, timings."""
        return {
            "dataset": self.data.name,
            "n_train": len(self.data.train),
            "n_flipped": int(self.data.train.flipped.size),
            "chosen_budgets": self.trim.chosen,
            "summary": self.trim.summary.to_dict(orient="records"),
            "info": {k: v for k, v in self.trim.info.items() if k != "recipe"},
            "recipe": self.recipe.to_dict(),
            "checkpoints": [c.get("epoch") for c in self.checkpoints],
            "timings": self.timings,
        }


def trim_dataset(
    dataset: str = "mnist",
    noise: float = 0.2,
    noise_kind: Literal["symmetric", "asymmetric"] = "symmetric",
    seed: int = 0,
    dataset_kwargs: Mapping[str, Any] | None = None,
    recipe: Recipe | None = None,
    detectors: Sequence[str] = ("l2", "loss"),
    checkpoint: str = "best",
    budget: float = 0.1,
    config: TrimConfig = TrimConfig(),
) -> TrimPipelineResult:
    """Load a built-in data set with label noise, rank it with OGA, run the trimming experiment.

    The detection model is ``recipe`` trained once with seed ``seed`` (a checkpoint every
    epoch); the rankings are the detectors' scores on last-layer gradients at
    ``checkpoint`` (``"best"``: best validation accuracy, ``"final"``, ``"ensemble"``),
    see :mod:`gradsift.detect.oga`. Then :func:`run_trim_experiment` retrains ``recipe`` over
    ``config.seeds`` for every ranking, the random control and the oracle.

    Args:
        dataset: built-in data set name (``"mnist"``, ``"digits"``, ...).
        noise, noise_kind: injected label noise (train split only).
        seed: seeds the data split, the noise, the detection model and the detectors.
        dataset_kwargs: more loader arguments (e.g. ``{"n_train": 8000}`` for MNIST);
            defaults from :data:`DEFAULT_DATASET_KWARGS`.
        recipe: training recipe (default from :data:`~.recipe.DEFAULT_RECIPES`).
        detectors: detector names (see :mod:`gradsift.detect`).
        checkpoint: which checkpoint the gradients are taken at.
        budget: flagging budget of the returned detection results (the experiment uses
            ``config.budgets``).
        config: the trimming experiment's settings.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    key = dataset_key(dataset)
    kwargs = {**DEFAULT_DATASET_KWARGS.get(key, {}), **dict(dataset_kwargs or {})}
    data = load_with_noise(dataset, noise, noise_kind, seed, **kwargs)
    recipe = recipe or DEFAULT_RECIPES.get(key, Recipe())
    timings["load data"] = time.perf_counter() - t0

    model = recipe.build(tuple(data.train.X.shape[1:]), data.n_classes, seed)
    oga_cfg = OGAConfig(detectors=tuple(detectors), budget=budget, checkpoint=checkpoint, seed=seed)
    run = train_and_rank(
        model,
        (data.train.X, data.train.y),
        recipe.train_config(seed),
        {"detection": oga_cfg},
        val=(data.val.X, data.val.y),
        progress=config.progress,
    )
    oga = run.oga["detection"]
    timings["train detection model"] = run.timings["train"]
    t0 = time.perf_counter()
    run.model_at(oga.checkpoints[-1]["epoch"])
    predicted = predict_proba(run.model, data.train.X).argmax(axis=1)
    timings["gradients + detectors"] = run.timings["oga detection"] + time.perf_counter() - t0

    t0 = time.perf_counter()
    result = run_trim_experiment(data, oga.results, recipe, config)
    timings["trimming experiment"] = time.perf_counter() - t0
    return TrimPipelineResult(
        data=data,
        detection=dict(oga.results),
        predicted=predicted,
        checkpoints=oga.checkpoints,
        trim=result,
        recipe=recipe,
        timings=timings,
    )
