"""Honest trimming experiments: does removing the flagged samples beat removing random ones?

For every seed, the same seeded :class:`Recipe` (model, optimiser, epochs, batch size) is
trained on

- the full training set (``none``),
- the training set without the top-ranked samples of each ranking, at each budget,
- the training set without the same *number* of uniformly random samples (``random``),
- the training set without exactly the known flipped samples (``oracle``), when known.

Each run records the validation accuracy and the clean test accuracy of the model at the
recipe's epoch (the final one, or the best-validation one). The budget of each method is
chosen by :func:`choose_budgets`, which only ever receives a :class:`ValidationRuns`
(validation accuracies; test numbers are not part of it), and test accuracy is reported as
mean ± std over seeds at that budget and as a full curve.

Runs are independent jobs: they run in a process pool (``TrimConfig.n_jobs``) and each
finished run is cached on disk under a hash of (recipe, seed, removed indices, data), so an
interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradsift.detect.result import DetectionResult, budget_to_count
from gradsift.errors import GradsiftError
from gradsift.experiments.models import build_model
from gradsift.experiments.training import TrainConfig, accuracy, train_classifier
from gradsift.progress import track

if TYPE_CHECKING:
    from gradsift.experiments.datasets import LabeledData

__all__ = [
    "DEFAULT_BUDGETS",
    "Recipe",
    "TrimConfig",
    "TrimJob",
    "TrimResult",
    "ValidationRuns",
    "choose_budgets",
    "plan_jobs",
    "run_trim_experiment",
    "trim_dataset",
    "trim_command",
    "recipe_for",
    "default_cache_dir",
    "TrimPipelineResult",
]

#: Default trimming budgets (fractions of the training set).
DEFAULT_BUDGETS: tuple[float, ...] = (0.025, 0.05, 0.10, 0.20)
#: Bump when the meaning of a cached run changes.
CACHE_VERSION = 1

Kind = Literal["none", "ranking", "random", "oracle"]
ModelFactory = Callable[[tuple[int, ...], int, int], nn.Module]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Recipe:
    """A seeded training recipe; every run of an experiment trains with it.

    The model of seed ``s`` is built with initialisation seed ``s`` and trained with
    ``TrainConfig(seed=s)`` (mini-batch order, dropout), so for a given seed every arm
    starts from the same weights and differs only in its training set.

    Attributes:
        model: a :func:`gradsift.experiments.models.build_model` name (``"mlp"``, ``"cnn"``,
            ``"logreg"``), or a module-level factory ``(in_shape, n_classes, seed) ->
            nn.Module`` (it must be importable by worker processes; the cache key uses its
            qualified name, so use a new cache folder after changing its code).
        model_kwargs: keyword arguments for ``build_model`` (e.g. ``{"hidden": (512,)}``).
        epochs, batch_size, lr, optimizer, momentum, weight_decay: as in
            :class:`~gradsift.experiments.training.TrainConfig`.
        select: ``"final"`` evaluates the model after the last epoch; ``"best_val"`` the
            epoch with the best validation accuracy (early stopping, on validation only).
    """

    model: str | ModelFactory = "mlp"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    select: Literal["final", "best_val"] = "final"

    def __post_init__(self) -> None:
        self.train_config(0)  # validates the optimiser settings
        if self.select not in ("final", "best_val"):
            raise ValueError(f"select must be 'final' or 'best_val', got {self.select!r}")
        if self.epochs < 1:
            raise ValueError(f"a trimming recipe needs epochs >= 1, got {self.epochs}")
        if not (isinstance(self.model, str) or callable(self.model)):
            raise TypeError(f"model must be a registry name or a factory, got {self.model!r}")

    def train_config(self, seed: int) -> TrainConfig:
        """The :class:`TrainConfig` of seed ``seed``."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            seed=seed,
        )

    def build(self, in_shape: tuple[int, ...], n_classes: int, seed: int) -> nn.Module:
        """A freshly initialised model for ``seed``."""
        if isinstance(self.model, str):
            return build_model(
                self.model, in_shape, n_classes, seed=seed, **dict(self.model_kwargs)
            )
        return self.model(in_shape, n_classes, seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (the factory by its qualified name)."""
        d = asdict(self)
        if not isinstance(self.model, str):
            d["model"] = f"{self.model.__module__}:{self.model.__qualname__}"
        d["model_kwargs"] = json.loads(json.dumps(dict(self.model_kwargs), default=list))
        return d


@dataclass(frozen=True)
class TrimConfig:
    """Settings of a trimming experiment.

    Attributes:
        budgets: fractions in ``(0, 1)`` of the training set to remove.
        seeds: training seeds (at least 3 for a mean ± std worth reporting).
        random_control: train the random-removal control at every budget.
        oracle: train the oracle (remove exactly the flipped samples), when known.
        n_jobs: worker processes (``0``: one per available core, capped by the number
            of runs; ``1``: run in this process).
        cache_dir: folder for finished runs (resumption); ``None`` disables caching.
        progress: show a progress bar.
    """

    budgets: Sequence[float] = DEFAULT_BUDGETS
    seeds: Sequence[int] = (0, 1, 2)
    random_control: bool = True
    oracle: bool = True
    n_jobs: int = 0
    cache_dir: str | os.PathLike[str] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.budgets:
            raise ValueError("budgets is empty: give at least one fraction in (0, 1)")
        for b in self.budgets:
            if isinstance(b, bool) or not (isinstance(b, (float, int)) and 0 < float(b) < 1):
                raise ValueError(f"budgets must be fractions in (0, 1), got {b!r}")
        if len(set(map(float, self.budgets))) != len(self.budgets):
            raise ValueError(f"budgets has duplicates: {list(self.budgets)}")
        if not self.seeds:
            raise ValueError("seeds is empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds has duplicates: {list(self.seeds)}")
        if self.n_jobs < 0:
            raise ValueError(f"n_jobs must be >= 0 (0 = one per core), got {self.n_jobs}")


@dataclass(eq=False)
class TrimJob:
    """One training run: ``recipe`` at ``seed`` without the ``removed`` training rows.

    Attributes:
        method: ``"none"``, ``"random"``, ``"oracle"`` or the ranking's name.
        kind: ``"none"``, ``"ranking"``, ``"random"`` or ``"oracle"``.
        budget: fraction removed as requested (``0`` for none, ``m / n`` for the oracle).
        seed: the training seed.
        removed: sorted int64 indices of the removed training rows.
    """

    method: str
    kind: Kind
    budget: float
    seed: int
    removed: np.ndarray


# --------------------------------------------------------------------------- planning


def _check_scores(name: str, scores: np.ndarray | DetectionResult, n: int) -> np.ndarray:
    s = scores.scores if isinstance(scores, DetectionResult) else np.asarray(scores)
    s = np.asarray(s, dtype=np.float64)
    if s.shape != (n,):
        raise GradsiftError(
            f"ranking {name!r} has shape {s.shape}; it must score every training sample ({n},)"
        )
    if not np.all(np.isfinite(s)):
        raise GradsiftError(f"ranking {name!r} has NaN/Inf scores")
    return s


def top_ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the ``k`` highest scores (ties broken by lower index first)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def random_removal(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted indices of ``k`` of ``n`` rows drawn without replacement (seeded by seed, k)."""
    rng = np.random.default_rng([int(seed), int(k), 0x7A1])
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def plan_jobs(
    n_train: int,
    rankings: Mapping[str, np.ndarray | DetectionResult],
    config: TrimConfig,
    flipped: np.ndarray | None = None,
) -> list[TrimJob]:
    """Every run of the experiment (no trimming, each ranking × budget, random, oracle)."""
    reserved = {"none", "random", "oracle"}
    bad = reserved & set(rankings)
    if bad:
        raise GradsiftError(f"ranking names {sorted(bad)} are reserved; rename them")
    scores = {name: _check_scores(name, s, n_train) for name, s in rankings.items()}
    counts = {float(b): budget_to_count(float(b), n_train) for b in config.budgets}
    jobs: list[TrimJob] = []
    for seed in config.seeds:
        jobs.append(TrimJob("none", "none", 0.0, int(seed), np.empty(0, dtype=np.int64)))
        for name, s in scores.items():
            for b, k in counts.items():
                jobs.append(TrimJob(name, "ranking", b, int(seed), top_ranked(s, k)))
        if config.random_control:
            for b, k in counts.items():
                jobs.append(
                    TrimJob("random", "random", b, int(seed), random_removal(n_train, k, seed))
                )
        if config.oracle and flipped is not None and flipped.size:
            jobs.append(
                TrimJob("oracle", "oracle", flipped.size / n_train, int(seed), np.sort(flipped))
            )
    return jobs


# --------------------------------------------------------------------------- caching


def data_fingerprint(data: LabeledData) -> str:
    """SHA-256 over the arrays a run reads (train X / given y, val X / y, test X / clean y)."""
    h = hashlib.sha256()
    for arr in (
        data.train.X,
        data.train.y,
        data.val.X,
        data.val.y,
        data.test.X,
        data.test.y_clean,
    ):
        a = np.ascontiguousarray(arr)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def run_key(recipe: Recipe, seed: int, removed: np.ndarray, data_fp: str) -> str:
    """Cache key of one run: hash of (recipe, seed, removed indices, data, cache version)."""
    payload = {
        "version": CACHE_VERSION,
        "recipe": recipe.to_dict(),
        "seed": int(seed),
        "removed": hashlib.sha256(np.asarray(removed, dtype=np.int64).tobytes()).hexdigest(),
        "n_removed": int(len(removed)),
        "data": data_fp,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"run-{key}.json"


def _load_cached(cache_dir: Path | None, key: str) -> dict[str, Any] | None:
    if cache_dir is None:
        return None
    path = _cache_path(cache_dir, key)
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("key") != key or not {"val_accuracy", "test_accuracy"} <= set(record):
        return None
    return record


def _store(cache_dir: Path | None, key: str, record: dict[str, Any]) -> None:
    if cache_dir is None:
        return
    path = _cache_path(cache_dir, key)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, **record}, sort_keys=True))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- one run


@dataclass
class _RunData:
    """Arrays one training run needs (shared with worker processes once)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


class _BestKeeper:
    """Recorder-compatible hook keeping the state of the best-validation epoch (earliest)."""

    def __init__(self) -> None:
        self.best: float = -math.inf
        self.epoch = 0
        self.state: dict[str, torch.Tensor] | None = None

    def on_step_end(self, *args: Any) -> None:
        return None

    def on_epoch_end(
        self, model: nn.Module, optimizer: Any, epoch: int, step: int, metrics: dict[str, float]
    ) -> None:
        acc = metrics.get("val_accuracy", -math.inf)
        if acc > self.best:
            self.best, self.epoch = acc, epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_run(recipe: Recipe, seed: int, removed: np.ndarray, data: _RunData) -> dict[str, Any]:
    """Train ``recipe`` at ``seed`` without rows ``removed``; return val / test accuracy.

    Training uses one torch thread (so results do not depend on the pool size).
    """
    t0 = time.perf_counter()
    keep = np.ones(data.X_train.shape[0], dtype=bool)
    keep[removed] = False
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = recipe.build(tuple(data.X_train.shape[1:]), data.n_classes, seed)
        keeper = _BestKeeper() if recipe.select == "best_val" else None
        train_classifier(
            model,
            data.X_train[keep],
            data.y_train[keep],
            recipe.train_config(seed),
            val=(data.X_val, data.y_val) if keeper is not None else None,
            recorder=keeper,  # type: ignore[arg-type]
            progress=False,
        )
        epoch = recipe.epochs
        if keeper is not None and keeper.state is not None:
            model.load_state_dict(keeper.state)
            epoch = keeper.epoch
        val_acc = accuracy(model, data.X_val, data.y_val)
        test_acc = accuracy(model, data.X_test, data.y_test)
    finally:
        torch.set_num_threads(threads)
    return {
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "epoch": int(epoch),
        "seconds": time.perf_counter() - t0,
    }


_WORKER_DATA: _RunData | None = None


def _init_worker(data: _RunData) -> None:
    global _WORKER_DATA
    _WORKER_DATA = data
    torch.set_num_threads(1)


def _worker_run(recipe: Recipe, seed: int, removed: np.ndarray) -> dict[str, Any]:
    assert _WORKER_DATA is not None, "worker not initialised"
    return train_run(recipe, seed, removed, _WORKER_DATA)


# --------------------------------------------------------------------------- budget choice


@dataclass(frozen=True)
class ValidationRuns:
    """What the budget chooser may see: one validation accuracy per (method, budget, seed).

    It has no test field by construction; build it with :meth:`from_runs`, which copies
    only the columns below.
    """

    method: tuple[str, ...]
    budget: tuple[float, ...]
    seed: tuple[int, ...]
    val_accuracy: tuple[float, ...]

    COLUMNS = ("method", "budget", "seed", "val_accuracy")

    @classmethod
    def from_runs(cls, runs: pd.DataFrame) -> ValidationRuns:
        """Copy the validation columns of a runs table (nothing else is read)."""
        cols = {c: runs[c].tolist() for c in cls.COLUMNS}
        return cls(
            method=tuple(map(str, cols["method"])),
            budget=tuple(map(float, cols["budget"])),
            seed=tuple(map(int, cols["seed"])),
            val_accuracy=tuple(map(float, cols["val_accuracy"])),
        )


def choose_budgets(val: ValidationRuns) -> dict[str, float]:
    """Per method, the budget with the highest mean validation accuracy over seeds.

    Ties go to the smaller budget (remove less). Only :class:`ValidationRuns` is accepted,
    so test accuracy cannot influence the choice.
    """
    if not isinstance(val, ValidationRuns):
        raise TypeError(
            f"choose_budgets takes ValidationRuns (validation accuracies only), "
            f"got {type(val).__name__}"
        )
    frame = pd.DataFrame({c: getattr(val, c) for c in ValidationRuns.COLUMNS})
    means = frame.groupby(["method", "budget"], sort=True)["val_accuracy"].mean().reset_index()
    chosen: dict[str, float] = {}
    for method, grp in means.groupby("method", sort=False):
        grp = grp.sort_values("budget", kind="stable")
        best = grp["val_accuracy"].max()
        chosen[str(method)] = float(grp.loc[grp["val_accuracy"] >= best - 1e-12, "budget"].iloc[0])
    return chosen


# --------------------------------------------------------------------------- result


def _mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    v = values.to_numpy(dtype=np.float64)
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return float(v.mean()), std


@dataclass
class TrimResult:
    """Outcome of :func:`run_trim_experiment`.

    Attributes:
        runs: one row per training run: ``method, kind, budget, n_removed, seed,
            n_flipped_removed, val_accuracy, test_accuracy, epoch, seconds, cached, key``.
        curve: per ``(method, kind, budget)``: ``n_removed``, ``val_mean, val_std,
            test_mean, test_std`` (std over seeds, ddof=1), ``flipped_removed`` (mean count)
            and ``precision`` (flipped fraction of the removed; NaN when flips unknown).
        summary: one row per method at its validation-chosen budget: test accuracy mean ±
            std, the paired difference to random removal of the same count and to no
            trimming (per seed, then mean ± std).
        chosen: ``{method: budget}`` chosen on validation accuracy only.
        info: sizes, seeds, budgets, recipe, timings.
    """

    runs: pd.DataFrame
    curve: pd.DataFrame
    summary: pd.DataFrame
    chosen: dict[str, float]
    info: dict[str, Any]

    def to_markdown(self, digits: int = 3) -> str:
        """The summary as a markdown table (accuracies as mean ± std)."""
        return summary_markdown(self.summary, digits)


def _curve(runs: pd.DataFrame, flips_known: bool) -> pd.DataFrame:
    rows = []
    for (method, kind, budget), grp in runs.groupby(["method", "kind", "budget"], sort=False):
        vm, vs = _mean_std(grp["val_accuracy"])
        tm, ts = _mean_std(grp["test_accuracy"])
        n_removed = int(grp["n_removed"].iloc[0])
        fr = float(grp["n_flipped_removed"].mean()) if flips_known else math.nan
        rows.append(
            {
                "method": method,
                "kind": kind,
                "budget": float(budget),
                "n_removed": n_removed,
                "val_mean": vm,
                "val_std": vs,
                "test_mean": tm,
                "test_std": ts,
                "n_seeds": len(grp),
                "flipped_removed": fr,
                "precision": fr / n_removed if flips_known and n_removed else math.nan,
            }
        )
    return pd.DataFrame(rows)


def _paired(
    runs: pd.DataFrame, method: str, budget: float, ref: str, ref_budget: float
) -> tuple[float, float]:
    a = runs[(runs["method"] == method) & (runs["budget"] == budget)].set_index("seed")[
        "test_accuracy"
    ]
    b = runs[(runs["method"] == ref) & (runs["budget"] == ref_budget)].set_index("seed")[
        "test_accuracy"
    ]
    common = a.index.intersection(b.index)
    if common.empty:
        return math.nan, math.nan
    return _mean_std(a[common] - b[common])


def _summary(runs: pd.DataFrame, curve: pd.DataFrame, chosen: dict[str, float]) -> pd.DataFrame:
    rows = []
    has_random = bool((runs["kind"] == "random").any())
    for method, budget in chosen.items():
        c = curve[(curve["method"] == method) & (curve["budget"] == budget)].iloc[0]
        d_none = _paired(runs, method, budget, "none", 0.0)
        d_rand = (
            _paired(runs, method, budget, "random", budget) if has_random else (math.nan, math.nan)
        )
        rows.append(
            {
                "method": method,
                "kind": c["kind"],
                "budget": budget,
                "n_removed": int(c["n_removed"]),
                "precision": c["precision"],
                "val_mean": c["val_mean"],
                "test_mean": c["test_mean"],
                "test_std": c["test_std"],
                "vs_none_mean": d_none[0],
                "vs_none_std": d_none[1],
                "vs_random_mean": d_rand[0] if c["kind"] != "random" else math.nan,
                "vs_random_std": d_rand[1] if c["kind"] != "random" else math.nan,
                "n_seeds": int(c["n_seeds"]),
            }
        )
    order = {"none": 0, "random": 1, "ranking": 2, "oracle": 3}
    frame = pd.DataFrame(rows)
    return frame.sort_values(by="kind", key=lambda k: k.map(order), kind="stable").reset_index(
        drop=True
    )


def summary_markdown(summary: pd.DataFrame, digits: int = 3) -> str:
    """Markdown table of a :attr:`TrimResult.summary` frame."""

    def pm(m: float, s: float) -> str:
        return "–" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"

    def pct(x: float) -> str:
        return "–" if math.isnan(x) else f"{100 * x:.1f}%"

    lines = [
        "| method | budget (chosen on val) | removed | flipped among removed | val acc | test acc | Δ vs random (same count) | Δ vs no trim |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples(index=False):
        lines.append(
            f"| {r.method} | {pct(r.budget) if r.kind != 'none' else '0'} | {r.n_removed} | "
            f"{pct(r.precision)} | {r.val_mean:.{digits}f} | {pm(r.test_mean, r.test_std)} | "
            f"{pm(r.vs_random_mean, r.vs_random_std)} | "
            f"{pm(r.vs_none_mean, r.vs_none_std) if r.kind != 'none' else '–'} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- experiment


def _run_data(data: LabeledData) -> _RunData:
    if len(data.test) == 0:
        raise GradsiftError("the data set has an empty test split; give it one (test_fraction > 0)")
    if len(data.val) == 0:
        raise GradsiftError(
            "the data set has an empty validation split; the trimming budget is chosen on "
            "validation accuracy, so give it one (val_fraction > 0)"
        )
    return _RunData(
        X_train=data.train.X,
        y_train=data.train.y,
        X_val=data.val.X,
        y_val=data.val.y,
        X_test=data.test.X,
        y_test=data.test.y_clean,
        n_classes=int(data.n_classes),
    )


def _n_workers(requested: int, n_jobs_to_run: int) -> int:
    if requested == 0:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
        requested = cores
    return max(1, min(requested, n_jobs_to_run))


def _execute(
    todo: list[tuple[TrimJob, str]],
    recipe: Recipe,
    run_data: _RunData,
    config: TrimConfig,
    cache_dir: Path | None,
    on_done: Callable[[TrimJob, dict[str, Any]], None] | None,
) -> dict[str, dict[str, Any]]:
    """Train the uncached jobs (serially or in a spawn pool), caching each as it finishes."""
    done: dict[str, dict[str, Any]] = {}

    def finish(job: TrimJob, key: str, record: dict[str, Any]) -> None:
        _store(cache_dir, key, record)
        done[key] = record
        if on_done is not None:
            on_done(job, record)

    workers = _n_workers(config.n_jobs, len(todo))
    if not todo:
        return done
    if workers == 1:
        it = track(todo, "Trimming runs") if config.progress else todo
        for job, key in it:
            finish(job, key, train_run(recipe, job.seed, job.removed, run_data))
        return done

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(run_data,)
    )
    try:
        futures = {
            pool.submit(_worker_run, recipe, job.seed, job.removed): (job, key) for job, key in todo
        }
        stream = as_completed(futures)
        it = track(stream, "Trimming runs", total=len(todo)) if config.progress else stream
        for fut in it:
            job, key = futures[fut]
            finish(job, key, fut.result())
    except BrokenProcessPool as err:
        raise GradsiftError(
            "trimming worker processes failed to start or died. Worker processes are "
            "started with 'spawn': a script that calls run_trim_experiment must do so under "
            '`if __name__ == "__main__":`; or pass TrimConfig(n_jobs=1) to train in this '
            f"process ({err})"
        ) from err
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return done


def run_trim_experiment(
    data: LabeledData,
    rankings: Mapping[str, np.ndarray | DetectionResult],
    recipe: Recipe = Recipe(),
    config: TrimConfig = TrimConfig(),
    on_run_done: Callable[[TrimJob, dict[str, Any]], None] | None = None,
) -> TrimResult:
    """Run the trimming experiment (see the module docstring).

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
    run_data = _run_data(data)
    flipped = data.train.flipped
    flips_known = flipped.size > 0
    jobs = plan_jobs(len(data.train), rankings, config, flipped if flips_known else None)
    fp = data_fingerprint(data)
    cache_dir = None if config.cache_dir is None else Path(config.cache_dir)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)

    keyed = [(job, run_key(recipe, job.seed, job.removed, fp)) for job in jobs]
    records: dict[str, dict[str, Any]] = {}
    cached_keys: set[str] = set()
    for _, key in keyed:
        rec = _load_cached(cache_dir, key)
        if rec is not None:
            records[key] = rec
            cached_keys.add(key)
    todo, seen = [], set(records)
    for job, key in keyed:  # identical runs (same removal, seed) are trained once
        if key not in seen:
            todo.append((job, key))
            seen.add(key)
    records.update(_execute(todo, recipe, run_data, config, cache_dir, on_run_done))

    is_flipped = np.zeros(len(data.train), dtype=bool)
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
    runs = pd.DataFrame(rows)
    chosen = choose_budgets(ValidationRuns.from_runs(runs))
    curve = _curve(runs, flips_known)
    summary = _summary(runs, curve, chosen)
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


# --------------------------------------------------------------------------- end to end

#: Training recipe used by :func:`trim_dataset` when none is given, per built-in data set.
DEFAULT_RECIPES: dict[str, Recipe] = {
    "mnist": Recipe(model="mlp", model_kwargs={"hidden": (256,)}, epochs=20, batch_size=128),
    "digits": Recipe(model="mlp", model_kwargs={"hidden": (128,)}, epochs=60, batch_size=32),
    "half_moons": Recipe(model="mlp", model_kwargs={"hidden": (32, 32)}, epochs=200, batch_size=32),
}
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
        recipe: training recipe (default from :data:`DEFAULT_RECIPES`).
        detectors: detector names (see :mod:`gradsift.detect`).
        checkpoint: which checkpoint the gradients are taken at.
        budget: flagging budget of the returned detection results (the experiment uses
            ``config.budgets``).
        config: the trimming experiment's settings.
    """
    import inspect

    from gradsift.checkpoints import CheckpointRecorder
    from gradsift.detect.oga import OGAConfig, OutlierGradientAnalysis
    from gradsift.experiments.datasets import DATASETS, load_dataset
    from gradsift.experiments.training import predict_proba
    from gradsift.task import ClassificationTask

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    key = dataset.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise GradsiftError(
            f"unknown data set {dataset!r}; available: {', '.join(sorted(DATASETS))}"
        )
    kwargs: dict[str, Any] = {**DEFAULT_DATASET_KWARGS.get(key, {}), **dict(dataset_kwargs or {})}
    accepted = inspect.signature(DATASETS[key]).parameters
    kwargs["seed"] = seed
    if "noise" in accepted:
        kwargs.update(noise=noise, noise_kind=noise_kind)
    elif noise:
        raise GradsiftError(f"data set {dataset!r} has its own fixed label noise; drop --noise")
    data = load_dataset(key, **kwargs)
    recipe = recipe or DEFAULT_RECIPES.get(key, Recipe())
    timings["load data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = recipe.build(tuple(data.train.X.shape[1:]), data.n_classes, seed)
    recorder = CheckpointRecorder(every=1)
    train_classifier(
        model,
        data.train.X,
        data.train.y,
        recipe.train_config(seed),
        val=(data.val.X, data.val.y),
        recorder=recorder,
        progress=config.progress,
    )
    timings["train detection model"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    oga_cfg = OGAConfig(detectors=tuple(detectors), budget=budget, checkpoint=checkpoint, seed=seed)
    oga = OutlierGradientAnalysis(model, ClassificationTask(), oga_cfg).run(
        (data.train.X, data.train.y), recorder
    )
    used = oga.checkpoints[-1]["epoch"]
    ckpt = next(c for c in recorder.checkpoints if c.epoch == used and c.metrics)
    CheckpointRecorder.load_into(model, ckpt)
    predicted = predict_proba(model, data.train.X).argmax(axis=1)
    timings["gradients + detectors"] = time.perf_counter() - t0

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


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gradsift/trim`` (``~/.cache/gradsift/trim`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gradsift" / "trim"


def recipe_for(
    dataset: str,
    model: str | None = None,
    hidden: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
) -> Recipe:
    """The data set's default recipe (:data:`DEFAULT_RECIPES`) with the given overrides.

    ``hidden`` sets one hidden layer of that width (MLP only).
    """
    import dataclasses

    base = DEFAULT_RECIPES.get(dataset.strip().lower().replace("-", "_"), Recipe())
    changes: dict[str, Any] = {}
    if model is not None:
        changes["model"] = model
        if model != base.model:
            changes["model_kwargs"] = {}
    if hidden is not None:
        if (model or base.model) != "mlp":
            raise GradsiftError("hidden applies to the mlp model only")
        changes["model_kwargs"] = {"hidden": (int(hidden),)}
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            changes[name] = value
    return dataclasses.replace(base, **changes)


def trim_command(
    dataset: str = "mnist",
    noise: float = 0.2,
    noise_kind: Literal["symmetric", "asymmetric"] = "symmetric",
    n_train: int | None = None,
    recipe: Recipe | None = None,
    detectors: Sequence[str] = ("l2", "loss"),
    checkpoint: str = "best",
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    seeds: Sequence[int] = (0, 1, 2),
    seed: int = 0,
    n_jobs: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    runs_csv: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[TrimPipelineResult, dict[str, Any]]:
    """What ``gradsift trim`` does: :func:`trim_dataset`, then the optional HTML report and CSV.

    Returns the pipeline result and a JSON-serialisable summary.
    """
    kwargs = {} if n_train is None else {"n_train": int(n_train)}
    config = TrimConfig(
        budgets=tuple(budgets),
        seeds=tuple(seeds),
        n_jobs=n_jobs,
        cache_dir=cache_dir,
        progress=progress,
    )
    run = trim_dataset(
        dataset,
        noise=noise,
        noise_kind=noise_kind,
        seed=seed,
        dataset_kwargs=kwargs,
        recipe=recipe,
        detectors=detectors,
        checkpoint=checkpoint,
        config=config,
    )
    if report is not None:
        from gradsift.report.sections import trim_report

        t0 = time.perf_counter()
        trim_report(run).save(report)
        run.timings["report"] = time.perf_counter() - t0
    if runs_csv is not None:
        run.trim.runs.to_csv(runs_csv, index=False)
    payload = {
        "dataset": run.data.name,
        "n_train": len(run.data.train),
        "n_flipped": int(run.data.train.flipped.size),
        "chosen_budgets": run.trim.chosen,
        "summary": run.trim.summary.to_dict(orient="records"),
        "info": {k: v for k, v in run.trim.info.items() if k != "recipe"},
        "recipe": run.recipe.to_dict(),
        "checkpoints": [c.get("epoch") for c in run.checkpoints],
        "timings": run.timings,
        "report": None if report is None else str(report),
        "runs_csv": None if runs_csv is None else str(runs_csv),
    }
    return run, payload
