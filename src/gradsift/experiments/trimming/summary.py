"""The statistics of a trimming experiment: curves, the summary at the chosen budgets, markdown."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["TrimResult", "summarize", "summary_markdown"]


def _mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    v = values.to_numpy(dtype=np.float64)
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return float(v.mean()), std


@dataclass
class TrimResult:
    """Outcome of :func:`~gradsift.experiments.trimming.run_trim_experiment`.

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


def summarize(
    runs: pd.DataFrame, chosen: dict[str, float], flips_known: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(curve, summary)`` of a runs table at the budgets ``chosen`` (see :class:`TrimResult`)."""
    curve = _curve(runs, flips_known)
    return curve, _summary(runs, curve, chosen)


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
