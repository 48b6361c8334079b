"""Report sections on a trimming experiment: verdicts against random removal, plots, tables.

They read a :class:`~gradsift.experiments.trimming.TrimResult` (the result object; no file
is read again).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from gradsift.report.html import Report, Section
from gradsift.report.plots import trimming_bars, trimming_curves

if TYPE_CHECKING:
    from gradsift.experiments.trimming.summary import TrimResult

__all__ = ["headline", "trimming_section", "trimming_verdict"]


def _pm(m: float, s: float, d: int = 3) -> str:
    return (
        "–" if m is None or (isinstance(m, float) and math.isnan(m)) else f"{m:.{d}f} ± {s:.{d}f}"
    )


def trimming_verdict(result: TrimResult) -> list[tuple[str, str]]:
    """One ``(tone, sentence)`` per ranking: does it beat random removal of the same count?

    A ranking "beats random removal" when it is better on every seed (paired by seed at the
    budget chosen on validation); "does not" when its mean paired difference is <= 0;
    otherwise the evidence is mixed.
    """
    runs, summary = result.runs, result.summary.set_index("method")
    out = []
    none_m = summary.loc["none", "test_mean"] if "none" in summary.index else math.nan
    oracle_m = summary.loc["oracle", "test_mean"] if "oracle" in summary.index else math.nan
    for method, row in summary.iterrows():
        if row["kind"] != "ranking":
            continue
        b = row["budget"]
        a = runs[(runs["method"] == method) & (runs["budget"] == b)].set_index("seed")[
            "test_accuracy"
        ]
        r = runs[(runs["method"] == "random") & (runs["budget"] == b)].set_index("seed")[
            "test_accuracy"
        ]
        common = a.index.intersection(r.index)
        if not len(common):
            out.append(("warn", f"{method}: no random-removal control was run."))
            continue
        wins = int((a[common] > r[common]).sum())
        text = (
            f"{method} (budget {b:.1%}, chosen on validation): clean test accuracy "
            f"{_pm(row['test_mean'], row['test_std'])}, against {_pm(r.mean(), r.std(ddof=1))} "
            f"for removing {int(row['n_removed'])} random samples (paired difference "
            f"{row['vs_random_mean']:+.3f} ± {row['vs_random_std']:.3f}; better on {wins} of "
            f"{len(common)} seeds) and {none_m:.3f} without trimming."
        )
        if not math.isnan(oracle_m) and not math.isnan(none_m) and oracle_m > none_m:
            closed = (row["test_mean"] - none_m) / (oracle_m - none_m)
            text += f" It closes {closed:.0%} of the gap between no trimming and the oracle ({oracle_m:.3f})."
        if wins == len(common) and row["vs_random_mean"] > 0:
            tone = "good"
        elif row["vs_random_mean"] <= 0:
            tone = "bad"
        else:
            tone = "warn"
        out.append((tone, text))
    return out


def headline(result: TrimResult) -> tuple[str, str]:
    """``(tone, sentence)``: the best ranking (by validation accuracy) against the controls."""
    summary = result.summary.set_index("method")
    ranked = summary[summary["kind"] == "ranking"]
    if ranked.empty:
        return "info", "No detector ranking was trimmed; only the controls ran."
    best = str(ranked["val_mean"].idxmax())
    verdicts = dict(zip(ranked.index, trimming_verdict(result), strict=True))
    tone, text = verdicts[best]
    lead = {
        "good": "Yes: trimming beats random removal on every seed.",
        "bad": "No: trimming does not beat random removal.",
        "warn": "Unclear: trimming beats random removal on some seeds only.",
    }[tone]
    return tone, f"{lead} Best detector on validation: {text}"


def _pretty_summary(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in summary.itertuples(index=False):
        rows.append(
            {
                "method": r.method,
                "budget": "–"
                if r.kind == "none"
                else (f"{r.budget:.1%}" + (" (= flipped)" if r.kind == "oracle" else "")),
                "removed": r.n_removed,
                "flipped among removed": "–" if math.isnan(r.precision) else f"{r.precision:.1%}",
                "val accuracy": f"{r.val_mean:.3f}",
                "test accuracy": _pm(r.test_mean, r.test_std),
                "Δ vs random (same count)": _pm(r.vs_random_mean, r.vs_random_std),
                "Δ vs no trimming": "–" if r.kind == "none" else _pm(r.vs_none_mean, r.vs_none_std),
            }
        )
    return pd.DataFrame(rows)


def trimming_section(
    report: Report, result: TrimResult, title: str = "Trimming: retrain without the flagged samples"
) -> Section:
    """The trimming experiment: verdicts, accuracy at the chosen budgets, full curves, tables."""
    info = result.info
    seeds = len(info["seeds"])
    recipe = info["recipe"]
    sec = report.add_section(
        title,
        f"Each arm retrains the same recipe ({recipe['model']}, {recipe['epochs']} epochs, "
        f"batch {recipe['batch_size']}, {recipe['optimizer']} lr {recipe['lr']}, evaluated at the "
        f"{'final epoch' if recipe['select'] == 'final' else 'best validation epoch'}) with the same "
        f"{seeds} seeds: no trimming, removing each detector's top-ranked samples, removing the "
        "same number of random samples, and (when the flipped samples are known) removing exactly "
        "them. The budget is chosen on validation accuracy; test accuracy is only reported.",
    )
    for tone, text in trimming_verdict(result):
        sec.add_callout(text, tone=tone)  # type: ignore[arg-type]
    sec.add_figure(
        trimming_bars(result.summary, result.runs),
        caption="Clean test accuracy of each detector at its validation-chosen budget, next to "
        "random removal of the same number of samples (grey). Dashed black: no trimming; "
        "dash-dotted green: the oracle. Dots are single seeds.",
    )
    sec.add_figure(
        trimming_curves(result.curve, result.chosen, seeds),
        caption="Accuracy against the trimming budget (±1 std bands over seeds). Left: "
        "validation, which chooses the budget (★). Right: test, as reported.",
    )
    sec.add_table(
        _pretty_summary(result.summary),
        caption="At the budget chosen on validation (mean ± std over seeds; Δ are paired by seed).",
    )
    curve = result.curve.copy()
    curve["budget"] = curve["budget"].map(lambda b: f"{b:.1%}")
    sec.add_table(
        curve[
            [
                "method",
                "budget",
                "n_removed",
                "precision",
                "val_mean",
                "val_std",
                "test_mean",
                "test_std",
                "n_seeds",
            ]
        ],
        caption="Every (method, budget): mean and std over seeds; precision = flipped fraction of the removed samples.",
    )
    sec.add_key_values(
        {
            "training samples": info["n_train"],
            "flipped (known)": info["n_flipped"],
            "validation / test samples": f"{info['n_val']} / {info['n_test']}",
            "seeds": info["seeds"],
            "training runs": f"{info['n_runs']} ({info['n_trained']} trained now, {info['n_cached']} from the cache)",
            "wall time (s)": round(info["wall_seconds"], 1),
        },
        caption="Experiment",
    )
    return sec
