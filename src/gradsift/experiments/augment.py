"""Data augmentation from an unseen labelled pool (FastIF's application, issue 14 part 3).

A model is trained on ``train``; a labelled ``pool`` it never saw is ranked, the top ``m``
pool samples are added to the training set and the same seeded :class:`Recipe` is
retrained. Arms, all with the same recipe, seeds and training-set sizes:

- ``none``: the training set alone (``m = 0``);
- ``influence``: pool samples by their influence on the mean validation loss, **helpful
  first**: ``score(z) = mean_t g_tᵀ (H+λI)⁻¹ g_z`` (METHODS.md sign: positive = adding
  ``z`` lowers the validation loss), ``H`` the Hessian of the training loss at the model,
  ``g_z`` the gradient of ``z``'s loss under its pool label. Computed by
  :class:`~gradsift.influence.scores.InfluenceScorer` (test vectors averaged once, then
  one dot product per pool row: every pool sample is scored exactly, so FastIF's
  candidate restriction is not needed at pool sizes that fit in memory);
- ``random``: a seeded random draw (seed ``s`` of the run, nested across budgets);
- ``nearest``: pool samples by their distance to the nearest validation sample in the
  model's penultimate features (the FastIF candidate space, no influence), nearest first.

The validation split is cut in two, stratified and seeded: the **rank** part is the
influence / nearest-neighbour target, the **choose** part picks each arm's budget ``m``
(:func:`~gradsift.experiments.trimming.choose_budgets` on its accuracy; ranking and
budget choice never see the same points, and no arm sees the test split). Test accuracy
is only reported. Training runs reuse the trimming machinery (process pool, run cache):
the training matrix is ``[train; pool]`` and a run "removes" the pool rows it does not add,
so every run of every arm sees its rows in the same order.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from gradsift.experiments.augment_pool import (
    AugmentError,
    PoolSplit,
    carve_pool,
    check_pool_disjoint,
    cut_validation,
    influence_pool_scores,
    nearest_pool_scores,
    plan_augment_jobs,
    random_order,
    rank_order,
    train_runs,
)
from gradsift.experiments.datasets import LabeledData, Split, dataset_key, load_dataset
from gradsift.experiments.training import train_classifier
from gradsift.experiments.trimming import (
    DEFAULT_RECIPES,
    Recipe,
    ValidationRuns,
    choose_budgets,
)
from gradsift.experiments.trimming.pool import RunData
from gradsift.influence.scores import InfluenceMethod

__all__ = [
    "ARMS",
    "AugmentConfig",
    "AugmentError",
    "AugmentResult",
    "PoolSplit",
    "augment_dataset",
    "augment_experiment",
    "carve_pool",
    "check_pool_disjoint",
    "influence_pool_scores",
    "nearest_pool_scores",
    "plan_augment_jobs",
    "random_order",
    "summary_markdown",
]

#: The ranked arms (``none`` always runs too).
ARMS: tuple[str, ...] = ("influence", "random", "nearest")


@dataclass(frozen=True)
class AugmentConfig:
    """Settings of :func:`augment_experiment`.

    Attributes:
        budgets: numbers ``m`` of pool samples to add (one is chosen per arm on validation).
        seeds: training seeds (the recipe's initialisation, batch order and, for
            ``random``, the draw).
        arms: subset of :data:`ARMS`.
        method: :class:`InfluenceScorer` method of the ``influence`` arm.
        tracked: its tracked parameters (``"last_linear"`` by default: the head, where the
            cross-entropy Hessian is positive semi-definite; ``"all"`` on an MLP meets
            negative curvature, which CG refuses).
        rank_fraction: share of the validation split used as the ranking target; the rest
            chooses the budget. In ``(0, 1)``.
        split_seed: seed of that validation cut.
        n_jobs, cache_dir, progress: as in :class:`TrimConfig`.
    """

    budgets: Sequence[int] = (100, 250, 500, 1000)
    seeds: Sequence[int] = (0, 1, 2)
    arms: Sequence[str] = ARMS
    method: InfluenceMethod = "if-exact"
    tracked: str = "last_linear"
    rank_fraction: float = 0.5
    split_seed: int = 0
    n_jobs: int = 1
    cache_dir: str | os.PathLike[str] | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.budgets or any(int(b) != b or b < 1 for b in self.budgets):
            raise AugmentError(f"budgets must be positive integers, got {list(self.budgets)}")
        if len(set(self.budgets)) != len(self.budgets) or len(set(self.seeds)) != len(self.seeds):
            raise AugmentError("budgets and seeds must not repeat")
        if not self.seeds:
            raise AugmentError("seeds is empty")
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise AugmentError(f"arms must be a non-empty subset of {ARMS}, got {list(self.arms)}")
        if not 0.0 < self.rank_fraction < 1.0:
            raise AugmentError(f"rank_fraction must lie in (0, 1), got {self.rank_fraction}")


@dataclass
class AugmentResult:
    """Outcome of :func:`augment_experiment`.

    Attributes:
        runs: one row per training run: ``arm, budget (m), seed, val_accuracy`` (on the
            choose part of validation), ``test_accuracy, epoch, seconds, cached, key``.
        curve: per ``(arm, budget)``: ``val_mean, val_std, test_mean, test_std, n_seeds``.
        summary: per arm at its chosen budget: ``val_mean, test_mean, test_std`` (std over
            seeds, ddof=1), paired differences to ``random`` at the same ``m`` and to
            ``none`` (per seed, then mean ± std), ``n_seeds``.
        chosen: ``{arm: m}`` chosen on the choose part of validation only.
        added: ``{arm: int64 [m]}`` pool indices added at the chosen budget, in rank order
            (``random``: the draw of the first seed).
        scores: ``{arm: float64 [n_pool]}`` ranking scores (higher = added first).
        info: sizes, settings, timings.
    """

    runs: pd.DataFrame
    curve: pd.DataFrame
    summary: pd.DataFrame
    chosen: dict[str, int]
    added: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self, digits: int = 3) -> str:
        """The summary as a markdown table (accuracies as mean ± std over seeds)."""
        return summary_markdown(self.summary, digits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the added indices at the chosen budgets included)."""
        return {
            "chosen": self.chosen,
            "summary": self.summary.to_dict(orient="records"),
            "added": {k: v.tolist() for k, v in self.added.items()},
            "info": self.info,
        }


# --------------------------------------------------------------------------- experiment

Orders = dict[str, Callable[[int], np.ndarray]]


def _rank_pool(
    model: nn.Module,
    data: LabeledData,
    pool: Split,
    target: Split,
    recipe: Recipe,
    config: AugmentConfig,
    timings: dict[str, float],
) -> tuple[dict[str, np.ndarray], Orders]:
    """Scores of the ranked arms, and per arm ``seed -> pool order`` (first = added first)."""
    scores: dict[str, np.ndarray] = {}
    if "influence" in config.arms:
        t0 = time.perf_counter()
        scores["influence"] = influence_pool_scores(
            model, data.train, pool, target, config.method, config.tracked, recipe.weight_decay
        )
        timings["rank: influence"] = time.perf_counter() - t0
    if "nearest" in config.arms:
        t0 = time.perf_counter()
        scores["nearest"] = nearest_pool_scores(model, pool, target)
        timings["rank: nearest"] = time.perf_counter() - t0
    orders: Orders = {a: (lambda _seed, o=rank_order(s): o) for a, s in scores.items()}
    orders["random"] = lambda seed: random_order(len(pool), seed)
    return scores, orders


def _check_inputs(data: LabeledData, pool: Split, config: AugmentConfig) -> None:
    if len(pool) < max(config.budgets):
        raise AugmentError(
            f"the pool holds {len(pool)} samples, fewer than the budget {max(config.budgets)}"
        )
    if pool.X.shape[1:] != data.train.X.shape[1:]:
        raise AugmentError(
            f"pool features {pool.X.shape[1:]} differ from training {data.train.X.shape[1:]}"
        )
    if len(data.test) == 0:
        raise AugmentError("the data set has an empty test split; give it one")
    check_pool_disjoint(data, pool)


def augment_experiment(
    data: LabeledData,
    pool: Split,
    recipe: Recipe,
    config: AugmentConfig = AugmentConfig(),
    model: nn.Module | None = None,
) -> AugmentResult:
    """Rank ``pool``, add the top ``m`` to ``data.train``, retrain; compare the arms.

    Args:
        data: train / val / test. Training uses ``train.y``; validation (``val.y``) is cut
            into a ranking part and a budget-choice part; test accuracy uses ``test.y_clean``.
        pool: labelled samples the model never saw (``pool.y`` is used for training and
            for the pool gradients). Must share no sample with val or test.
        recipe: the seeded training recipe of every run.
        config: budgets, seeds, arms, influence method, parallelism.
        model: the trained model to rank with (put in eval mode); default: ``recipe``
            trained on ``data.train`` with the first seed.

    Returns:
        :class:`AugmentResult`.

    Raises:
        AugmentError: a pool smaller than a budget, mismatched features, no test split,
            or a pool sample that also appears in val or test.
    """
    t0 = time.perf_counter()
    _check_inputs(data, pool, config)
    rank_val, choose_val = cut_validation(data.val, config.rank_fraction, config.split_seed)
    timings: dict[str, float] = {}
    if model is None:
        seed = int(config.seeds[0])
        model = recipe.build(tuple(data.train.X.shape[1:]), data.n_classes, seed)
        train_classifier(
            model, data.train.X, data.train.y, recipe.train_config(seed), progress=False
        )
        timings["train ranking model"] = time.perf_counter() - t0
    model.eval()
    scores, orders = _rank_pool(model, data, pool, rank_val, recipe, config, timings)
    arrays = RunData(
        X_train=np.concatenate([data.train.X, pool.X]),
        y_train=np.concatenate([data.train.y, pool.y]),
        X_val=choose_val.X,
        y_val=choose_val.y,
        X_test=data.test.X,
        y_test=data.test.y_clean,
        n_classes=int(data.n_classes),
    )
    arm_orders = {a: orders[a] for a in config.arms}
    jobs = plan_augment_jobs(arm_orders, config.budgets, config.seeds, len(data.train), len(pool))
    t1 = time.perf_counter()
    runs = train_runs(jobs, recipe, arrays, config.n_jobs, config.cache_dir, config.progress)
    timings["training runs"] = time.perf_counter() - t1
    val_runs = ValidationRuns.from_runs(runs.rename(columns={"arm": "method"}))
    chosen = {a: int(b) for a, b in choose_budgets(val_runs).items()}
    added = {arm: orders[arm](int(config.seeds[0]))[: chosen[arm]] for arm in config.arms}
    info = {
        "n_train": len(data.train),
        "n_pool": len(pool),
        "n_val_rank": len(rank_val),
        "n_val_choose": len(choose_val),
        "n_test": len(data.test),
        "budgets": [int(b) for b in config.budgets],
        "seeds": [int(s) for s in config.seeds],
        "arms": list(config.arms),
        "method": config.method,
        "tracked": config.tracked,
        "recipe": recipe.to_dict(),
        "n_runs": len(jobs),
        "n_trained": int((~runs["cached"]).sum()),
        "timings": timings,
        "wall_seconds": time.perf_counter() - t0,
    }
    curve = _curve(runs)
    return AugmentResult(runs, curve, _summary(runs, chosen), chosen, added, scores, info)


#: Validation / test sizes :func:`augment_dataset` asks of a loader that takes them.
DEFAULT_EVAL_SIZES: dict[str, dict[str, int]] = {"mnist": {"n_val": 2000, "n_test": 10000}}


def augment_dataset(
    dataset: str = "digits",
    n_train: int = 200,
    n_pool: int = 800,
    seed: int = 0,
    recipe: Recipe | None = None,
    config: AugmentConfig = AugmentConfig(),
) -> tuple[PoolSplit, AugmentResult]:
    """Load a built-in data set (no label noise), carve ``n_train`` training rows and a
    disjoint pool of ``n_pool`` rows from its training split (:func:`carve_pool`, seeded by
    ``seed``) and run :func:`augment_experiment` with the data set's default recipe."""
    key = dataset_key(dataset)
    kwargs: dict[str, Any] = dict(DEFAULT_EVAL_SIZES.get(key, {}))
    if key == "mnist":  # draw only what is needed from the 50,000 training images
        kwargs["n_train"] = n_train + n_pool
    data = load_dataset(key, seed=seed, **kwargs)
    split = carve_pool(data, n_train, n_pool, seed)
    recipe = recipe or DEFAULT_RECIPES.get(key, Recipe())
    return split, augment_experiment(split.data, split.pool, recipe, config)


# --------------------------------------------------------------------------- statistics


def _mean_std(v: np.ndarray) -> tuple[float, float]:
    v = np.asarray(v, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _at(runs: pd.DataFrame, arm: str, m: int) -> pd.Series:
    sel = runs[(runs["arm"] == arm) & (runs["budget"] == m)]
    return sel.set_index("seed")["test_accuracy"]


def _paired(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    common = a.index.intersection(b.index)
    return _mean_std((a[common] - b[common]).to_numpy()) if len(common) else (math.nan, math.nan)


def _curve(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (arm, m), grp in runs.groupby(["arm", "budget"], sort=False):
        vm, vs = _mean_std(grp["val_accuracy"].to_numpy())
        tm, ts = _mean_std(grp["test_accuracy"].to_numpy())
        rows.append(
            {
                "arm": arm,
                "budget": int(m),
                "val_mean": vm,
                "val_std": vs,
                "test_mean": tm,
                "test_std": ts,
                "n_seeds": len(grp),
            }
        )
    return pd.DataFrame(rows)


def _summary(runs: pd.DataFrame, chosen: dict[str, int]) -> pd.DataFrame:
    rows = []
    for arm in ["none", *[a for a in ARMS if a in chosen]]:
        m = chosen[arm]
        sel = runs[(runs["arm"] == arm) & (runs["budget"] == m)]
        test = _at(runs, arm, m)
        rnd = _at(runs, "random", m) if arm not in ("none", "random") else pd.Series(dtype=float)
        tm, ts = _mean_std(test.to_numpy())
        vr = _paired(test, rnd) if len(rnd) else (math.nan, math.nan)
        vn = _paired(test, _at(runs, "none", 0)) if arm != "none" else (math.nan, math.nan)
        rows.append(
            {
                "arm": arm,
                "budget": m,
                "val_mean": float(sel["val_accuracy"].mean()),
                "test_mean": tm,
                "test_std": ts,
                "vs_random_mean": vr[0],
                "vs_random_std": vr[1],
                "vs_none_mean": vn[0],
                "vs_none_std": vn[1],
                "n_seeds": len(sel),
            }
        )
    return pd.DataFrame(rows)


def summary_markdown(summary: pd.DataFrame, digits: int = 3) -> str:
    """Markdown table of an :attr:`AugmentResult.summary` frame."""

    def pm(m: float, s: float) -> str:
        return "–" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"

    lines = [
        "| arm | added m (chosen on val) | val acc | test acc | Δ vs random (same m) | Δ vs none |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples(index=False):
        lines.append(
            f"| {r.arm} | {r.budget} | {r.val_mean:.{digits}f} | {pm(r.test_mean, r.test_std)} | "
            f"{pm(r.vs_random_mean, r.vs_random_std)} | {pm(r.vs_none_mean, r.vs_none_std)} |"
        )
    return "\n".join(lines)
