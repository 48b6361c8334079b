"""Matplotlib figures for reports (Agg renderer, no pyplot state).

Every function returns a ``matplotlib.figure.Figure`` attached to an Agg canvas; embed it
with :meth:`gradsift.report.html.Section.add_figure`. Detection scores follow the gradsift
convention (higher = more suspicious).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "new_figure",
    "score_distribution",
    "roc_pr_curves",
    "trimming_curves",
    "trimming_bars",
]

FLAGGED = "#d1495b"
REST = "#7a8699"
FLIPPED = "#c2291f"
CLEAN = "#2e86ab"
RANDOM = "#8c8c8c"
NONE = "#222222"
ORACLE = "#1a7f37"
PALETTE = ["#0b5cad", "#e07a1f", "#7b3fa0", "#c2291f", "#178a8a", "#9a6700", "#d63384", "#4a5d23"]


def method_colors(names) -> dict[str, str]:
    """A stable colour per ranking name (sorted order), shared by every trimming plot."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(names)))}


def new_figure(width: float = 9.0, height: float = 3.6, ncols: int = 1) -> tuple[Figure, list]:
    """A figure with ``ncols`` side-by-side axes on an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0].tolist()
    return fig, axes


def _mask(idx_or_mask: np.ndarray | None, n: int) -> np.ndarray | None:
    if idx_or_mask is None:
        return None
    a = np.asarray(idx_or_mask)
    if a.dtype == bool:
        if a.shape != (n,):
            raise ValueError(f"mask has shape {a.shape}, expected ({n},)")
        return a
    m = np.zeros(n, dtype=bool)
    m[a.astype(np.int64)] = True
    return m


def _hist_pair(ax, scores: np.ndarray, mask: np.ndarray, bins: np.ndarray, labels, colors) -> None:
    for sel, label, color in ((mask, labels[0], colors[0]), (~mask, labels[1], colors[1])):
        vals = scores[sel]
        if vals.size:
            ax.hist(
                vals,
                bins=bins,
                density=True,
                alpha=0.55,
                color=color,
                label=f"{label} (n={vals.size})",
                histtype="stepfilled",
                edgecolor=color,
            )
    ax.set_xlabel("detection score (higher = more suspicious)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, frameon=False)


def score_distribution(
    scores: np.ndarray,
    flagged: np.ndarray,
    flipped: np.ndarray | None = None,
    detector: str = "",
    bins: int = 50,
) -> Figure:
    """Histogram of detection scores: flagged vs the rest, and flipped vs clean when known.

    Args:
        scores: float ``[n]`` detection scores.
        flagged: bool mask ``[n]`` or int indices of the flagged samples.
        flipped: optional bool mask or indices of the truly flipped samples.
        detector: name shown in the titles.
        bins: histogram bins (shared by both panels).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    fl = _mask(flagged, s.size)
    fp = _mask(flipped, s.size)
    fig, axes = new_figure(10.0 if fp is not None else 5.5, 3.4, 2 if fp is not None else 1)
    finite = s[np.isfinite(s)]
    edges = np.histogram_bin_edges(finite, bins=bins) if finite.size else np.linspace(0, 1, bins)
    _hist_pair(axes[0], s, fl, edges, ("flagged", "rest"), (FLAGGED, REST))
    thr = s[fl].min() if fl.any() else None
    if thr is not None:
        axes[0].axvline(thr, color=FLAGGED, lw=1, ls="--")
    axes[0].set_title(f"{detector}: flagged vs rest".strip(": "), fontsize=10)
    if fp is not None:
        _hist_pair(axes[1], s, fp, edges, ("flipped", "clean"), (FLIPPED, CLEAN))
        if thr is not None:
            axes[1].axvline(thr, color=FLAGGED, lw=1, ls="--", label="flag threshold")
        axes[1].set_title(f"{detector}: truly flipped vs clean".strip(": "), fontsize=10)
    return fig


def roc_pr_curves(scores: Mapping[str, np.ndarray], flipped: np.ndarray) -> Figure:
    """ROC and precision–recall curves of every detector against the known flips.

    Args:
        scores: ``{detector: float [n] scores}`` (higher = more suspicious).
        flipped: bool mask ``[n]`` or int indices of the flipped samples.
    """
    if not scores:
        raise ValueError("scores is empty: give at least one detector")
    n = len(next(iter(scores.values())))
    y = _mask(flipped, n)
    if y is None or y.all() or not y.any():
        raise ValueError("ROC / PR curves need both flipped and clean samples")
    fig, (ax_roc, ax_pr) = new_figure(10.0, 3.7, 2)
    ranked = sorted(scores.items(), key=lambda kv: -roc_auc_score(y, kv[1]))
    colors = method_colors(scores)
    for name, s in ranked:
        s = np.asarray(s, dtype=np.float64)
        color = colors[name]
        style = "--" if name in ("random", "loss") else "-"
        fpr, tpr, _ = roc_curve(y, s)
        ax_roc.plot(
            fpr, tpr, color=color, ls=style, lw=1.5, label=f"{name} ({roc_auc_score(y, s):.3f})"
        )
        prec, rec, _ = precision_recall_curve(y, s)
        ax_pr.plot(
            rec,
            prec,
            color=color,
            ls=style,
            lw=1.5,
            label=f"{name} ({average_precision_score(y, s):.3f})",
        )
    ax_roc.plot([0, 1], [0, 1], color="#bbbbbb", lw=1, ls=":")
    ax_roc.set(
        xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01)
    )
    ax_roc.set_title("ROC (legend: AUROC)", fontsize=10)
    base = y.mean()
    ax_pr.axhline(base, color="#bbbbbb", lw=1, ls=":")
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.set_title(f"precision–recall (legend: AP; chance = {base:.2f})", fontsize=10)
    for ax in (ax_roc, ax_pr):
        ax.legend(fontsize=7.5, frameon=False, loc="lower right" if ax is ax_roc else "upper right")
        ax.grid(alpha=0.25)
    return fig


def _band(ax, x, mean, std, color, label, ls="-", marker="o", fill=True) -> None:
    ax.plot(x, mean, color=color, ls=ls, marker=marker, ms=4, lw=1.6, label=label)
    if fill:
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, lw=0)


def trimming_curves(
    curve: pd.DataFrame, chosen: Mapping[str, float] | None = None, n_seeds: int | None = None
) -> Figure:
    """Accuracy vs trimming budget on validation (used to choose) and test (reported).

    Each ranking is a line with a ±1 std band over seeds; random removal is a grey band;
    no trimming is a horizontal line with its band; the oracle (removing exactly the
    flipped samples) is a green line and marker at its budget. The budget chosen on
    validation for each ranking is marked with a star.

    Args:
        curve: :attr:`gradsift.experiments.trimming.TrimResult.curve` (columns ``method, kind, budget,
            val_mean, val_std, test_mean, test_std``).
        chosen: ``{method: budget}`` chosen on validation.
        n_seeds: shown in the titles.
    """
    need = {"method", "kind", "budget", "val_mean", "val_std", "test_mean", "test_std"}
    missing = need - set(curve.columns)
    if missing:
        raise ValueError(f"curve lacks columns {sorted(missing)}")
    fig, axes = new_figure(11.0, 4.2, 2)
    seeds = f", mean ± std over {n_seeds} seeds" if n_seeds else ""
    rankings = sorted(curve.loc[curve["kind"] == "ranking", "method"].unique())
    colors = method_colors(rankings)
    budgets = np.sort(curve.loc[curve["kind"].isin(["ranking", "random"]), "budget"].unique())
    xmax = 100 * max(budgets.max() if budgets.size else 0.2, curve["budget"].max()) * 1.05
    for ax, split in zip(axes, ("val", "test"), strict=True):
        mu, sd = f"{split}_mean", f"{split}_std"
        none = curve[curve["kind"] == "none"]
        if len(none):
            m, s = float(none[mu].iloc[0]), float(none[sd].iloc[0])
            ax.axhline(m, color=NONE, lw=1.3, ls="--", label="no trimming")
            ax.axhspan(m - s, m + s, color=NONE, alpha=0.07, lw=0)
        rnd = curve[curve["kind"] == "random"].sort_values("budget")
        if len(rnd):
            _band(
                ax,
                100 * rnd["budget"],
                rnd[mu],
                rnd[sd],
                RANDOM,
                "random removal (control)",
                ls=":",
                marker="s",
            )
        for name in rankings:
            r = curve[(curve["method"] == name) & (curve["kind"] == "ranking")].sort_values(
                "budget"
            )
            color = colors[name]
            _band(ax, 100 * r["budget"], r[mu], r[sd], color, name)
            if chosen and name in chosen:
                pick = r[r["budget"] == chosen[name]]
                ax.plot(
                    100 * pick["budget"],
                    pick[mu],
                    marker="*",
                    ms=15,
                    color=color,
                    mec="black",
                    mew=0.6,
                    ls="none",
                )
        orc = curve[curve["kind"] == "oracle"]
        if len(orc):
            m, s, b = float(orc[mu].iloc[0]), float(orc[sd].iloc[0]), float(orc["budget"].iloc[0])
            ax.axhline(
                m, color=ORACLE, lw=1.2, ls="-.", label="oracle (remove exactly the flipped)"
            )
            ax.errorbar([100 * b], [m], yerr=[s], color=ORACLE, marker="D", ms=6, capsize=3)
        ax.set_xlim(0, xmax)
        ax.set_xlabel("training samples removed (% of the training set)")
        ax.set_ylabel(f"{'validation' if split == 'val' else 'clean test'} accuracy")
        ax.grid(alpha=0.25)
    axes[0].set_title(f"validation: used to choose the budget (★){seeds}", fontsize=10)
    axes[1].set_title(f"test: reported, never used for choices{seeds}", fontsize=10)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(4, len(labels)),
        fontsize=8,
        frameon=False,
    )
    return fig


def trimming_bars(summary: pd.DataFrame, runs: pd.DataFrame) -> Figure:
    """Each ranking at its validation-chosen budget next to random removal of the same count.

    Bars are mean ± std of clean test accuracy over seeds (dots: single seeds); the dashed
    black line is no trimming and the green dash-dotted line the oracle (removing exactly
    the flipped samples), each with a ±1 std band.

    Args:
        summary: :attr:`gradsift.experiments.trimming.TrimResult.summary`.
        runs: :attr:`gradsift.experiments.trimming.TrimResult.runs`.
    """
    if summary.empty:
        raise ValueError("summary is empty")
    rankings = summary[summary["kind"] == "ranking"].sort_values("method", kind="stable")
    colors = method_colors(rankings["method"])
    fig, (ax,) = new_figure(max(6.0, 1.6 * len(rankings) + 3.0), 3.8, 1)

    def seeds_of(method: str, budget: float) -> np.ndarray:
        sel = (runs["method"] == method) & np.isclose(runs["budget"], budget)
        return runs.loc[sel, "test_accuracy"].to_numpy(dtype=np.float64)

    values: list[np.ndarray] = []
    for kind, color, label, ls in (
        ("none", NONE, "no trimming", "--"),
        ("oracle", ORACLE, "oracle", "-."),
    ):
        row = summary[summary["kind"] == kind]
        if len(row):
            m, sd = float(row["test_mean"].iloc[0]), float(row["test_std"].iloc[0])
            ax.axhline(m, color=color, ls=ls, lw=1.4, label=f"{label} ({m:.3f})")
            ax.axhspan(m - sd, m + sd, color=color, alpha=0.08, lw=0)
            values.append(np.array([m - sd, m + sd]))
    ticks, labels = [], []
    for i, r in enumerate(rankings.itertuples(index=False)):
        x0 = 3.0 * i
        color = colors[r.method]
        for dx, method, col, name in (
            (0.0, r.method, color, r.method),
            (1.0, "random", RANDOM, "random"),
        ):
            pts = seeds_of(method, r.budget)
            if pts.size == 0:
                continue
            sd = pts.std(ddof=1) if pts.size > 1 else 0.0
            ax.bar(x0 + dx, pts.mean(), yerr=sd, color=col, alpha=0.85, capsize=4, width=0.9)
            ax.plot(x0 + dx + np.linspace(-0.15, 0.15, pts.size), pts, "o", color="black", ms=3)
            values.append(np.array([pts.mean() - sd, pts.mean() + sd, pts.min(), pts.max()]))
            ticks.append(x0 + dx)
            labels.append(f"{name}\n{100 * r.budget:.1f}%")
    ax.set_xticks(ticks, labels, fontsize=8)
    allv = np.concatenate(values) if values else np.array([0.0, 1.0])
    lo, hi = float(allv.min()), float(allv.max())
    pad = max(0.005, 0.12 * (hi - lo))
    ax.set_ylim(lo - pad, min(1.0, hi + pad))
    ax.set_ylabel("clean test accuracy")
    ax.set_title(
        "each detector at its validation-chosen budget vs random removal of as many samples",
        fontsize=10,
    )
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.25)
    return fig
