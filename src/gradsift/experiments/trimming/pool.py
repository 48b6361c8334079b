"""One training run of a trimming experiment, and the process pool that trains many.

Runs train with one torch thread each (so results do not depend on the pool size) in a
``spawn`` pool; each finished run is cached as it finishes (:mod:`.cache`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import LabeledData
from gradsift.experiments.training import accuracy, train_classifier
from gradsift.experiments.trimming.cache import store
from gradsift.experiments.trimming.jobs import TrimJob
from gradsift.experiments.trimming.recipe import Recipe, TrimConfig
from gradsift.progress import track

__all__ = ["RunData", "execute", "run_data", "train_run"]


@dataclass
class RunData:
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


def train_run(recipe: Recipe, seed: int, removed: np.ndarray, data: RunData) -> dict[str, Any]:
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


_WORKER_DATA: RunData | None = None


def _init_worker(data: RunData) -> None:
    global _WORKER_DATA
    _WORKER_DATA = data
    torch.set_num_threads(1)


def _worker_run(recipe: Recipe, seed: int, removed: np.ndarray) -> dict[str, Any]:
    assert _WORKER_DATA is not None, "worker not initialised"
    return train_run(recipe, seed, removed, _WORKER_DATA)


def run_data(data: LabeledData) -> RunData:
    if len(data.test) == 0:
        raise GradsiftError("the data set has an empty test split; give it one (test_fraction > 0)")
    if len(data.val) == 0:
        raise GradsiftError(
            "the data set has an empty validation split; the trimming budget is chosen on "
            "validation accuracy, so give it one (val_fraction > 0)"
        )
    return RunData(
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


def execute(
    todo: list[tuple[TrimJob, str]],
    recipe: Recipe,
    arrays: RunData,
    config: TrimConfig,
    cache_dir: Path | None,
    on_done: Callable[[TrimJob, dict[str, Any]], None] | None,
) -> dict[str, dict[str, Any]]:
    """Train the uncached jobs (serially or in a spawn pool), caching each as it finishes."""
    done: dict[str, dict[str, Any]] = {}

    def finish(job: TrimJob, key: str, record: dict[str, Any]) -> None:
        store(cache_dir, key, record)
        done[key] = record
        if on_done is not None:
            on_done(job, record)

    workers = _n_workers(config.n_jobs, len(todo))
    if not todo:
        return done
    if workers == 1:
        it = track(todo, "Trimming runs") if config.progress else todo
        for job, key in it:
            finish(job, key, train_run(recipe, job.seed, job.removed, arrays))
        return done

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(arrays,)
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
