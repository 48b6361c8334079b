"""The page of ``gradsift augment``: does adding influential pool samples beat random ones?

Built from an :class:`~gradsift.experiments.augment.AugmentResult` and the pool it ranked
(no file is read again): a verdict per ranked arm against random additions of the same
count, the accuracy table at the budgets chosen on validation, accuracy against the
number added, and a gallery of the samples each arm added.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gradsift.report.gallery import sample_items
from gradsift.report.html import Report, Section
from gradsift.report.plots import NONE, RANDOM, method_colors, new_figure

if TYPE_CHECKING:
    from gradsift.experiments.augment import AugmentResult
    from gradsift.experiments.datasets import LabeledData, Split

__all__ = ["augment_curves", "augment_report", "augment_verdicts"]

#: Added samples shown per arm.
SHOWN = 24


def _pm(m: float, s: float, d: int = 3) -> str:
    return "–" if math.isnan(m) else f"{m:.{d}f} ± {s:.{d}f}"


def augment_verdicts(result: AugmentResult) -> list[tuple[str, str]]:
    """One ``(tone, sentence)`` per ranked arm: better than random additions of as many
    pool samples, paired by seed at the arm's validation-chosen budget?"""
    runs, out = result.runs, []
    none = runs[runs["arm"] == "none"]["test_accuracy"]
    for row in result.summary.itertuples(index=False):
        if row.arm in ("none", "random"):
            continue
        sel = runs[runs["budget"] == row.budget]
        a = sel[sel["arm"] == row.arm].set_index("seed")["test_accuracy"]
        r = sel[sel["arm"] == "random"].set_index("seed")["test_accuracy"]
        common = a.index.intersection(r.index)
        if not len(common):
            out.append(("warn", f"{row.arm}: no random control at m = {row.budget} was run."))
            continue
        wins = int((a[common] > r[common]).sum())
        text = (
            f"{row.arm} (m = {row.budget} added, chosen on validation): test accuracy "
            f"{_pm(row.test_mean, row.test_std)}, against {_pm(r.mean(), r.std(ddof=1))} for "
            f"{row.budget} random pool samples (paired difference "
            f"{_pm(row.vs_random_mean, row.vs_random_std)}, better on {wins} of {len(common)} "
            f"seeds) and {none.mean():.3f} with nothing added."
        )
        if wins == len(common) and row.vs_random_mean > 0:
            tone = "good"
        elif row.vs_random_mean <= 0:
            tone = "bad"
        else:
            tone = "warn"
        out.append((tone, text))
    return out


def augment_curves(result: AugmentResult) -> Figure:
    """Accuracy against the number of pool samples added: validation (choose part, which
    picks the budget, ★) and test (reported); ±1 std bands over seeds."""
    curve = result.curve
    fig, axes = new_figure(11.0, 4.0, 2)
    arms = [a for a in curve["arm"].unique() if a not in ("none",)]
    colors = {**method_colors([a for a in arms if a != "random"]), "random": RANDOM}
    none = curve[curve["arm"] == "none"]
    for ax, split in zip(axes, ("val", "test"), strict=True):
        mu, sd = f"{split}_mean", f"{split}_std"
        if len(none):
            m = float(none[mu].iloc[0])
            ax.axhline(m, color=NONE, lw=1.2, ls="--", label="nothing added")
        for arm in arms:
            c = curve[curve["arm"] == arm].sort_values("budget")
            x, y, s = c["budget"].to_numpy(), c[mu].to_numpy(), c[sd].to_numpy()
            ax.plot(x, y, marker="o", color=colors[arm], label=arm)
            ax.fill_between(x, y - s, y + s, color=colors[arm], alpha=0.15, lw=0)
            if split == "val" and arm in result.chosen:
                at = c[c["budget"] == result.chosen[arm]]
                ax.plot(at["budget"], at[mu], marker="*", ms=14, color=colors[arm], ls="none")
        ax.set_xscale("log")
        ticks = sorted(curve.loc[curve["arm"] != "none", "budget"].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("pool samples added (m)")
        ax.set_ylabel("accuracy")
        ax.set_title("validation (chooses m)" if split == "val" else "test (reported)")
    axes[1].legend(loc="best", fontsize=8)
    return fig


def _summary_table(result: AugmentResult) -> pd.DataFrame:
    rows = []
    for r in result.summary.itertuples(index=False):
        rows.append(
            {
                "arm": r.arm,
                "added (m, chosen on val)": r.budget,
                "val accuracy": f"{r.val_mean:.3f}",
                "test accuracy": _pm(r.test_mean, r.test_std),
                "Δ vs random (same m)": _pm(r.vs_random_mean, r.vs_random_std),
                "Δ vs nothing added": _pm(r.vs_none_mean, r.vs_none_std),
                "seeds": r.n_seeds,
            }
        )
    return pd.DataFrame(rows)


def _class_counts(result: AugmentResult, pool: Split, names: list[str] | None) -> pd.DataFrame:
    n_cls = int(max(pool.y.max() + 1, len(names or [])))
    rows = []
    for arm, idx in result.added.items():
        counts = np.bincount(pool.y[idx], minlength=n_cls)
        rows.append(
            {
                "arm": arm,
                "added": len(idx),
                **{_name(c, names): int(counts[c]) for c in range(n_cls)},
            }
        )
    return pd.DataFrame(rows)


def _name(c: int, names: list[str] | None) -> str:
    return f"class {names[c]}" if names and c < len(names) else f"class {c}"


def _gallery(sec: Section, result: AugmentResult, data: LabeledData, pool: Split) -> None:
    X = pool.X_raw if pool.X_raw is not None else pool.X
    for arm, idx in result.added.items():
        if not len(idx):
            continue
        score_name = {"influence": "influence", "nearest": "−distance"}.get(arm, "score")
        items = sample_items(
            X,
            pool.y,
            idx[:SHOWN],
            data.kind,
            scores=result.scores.get(arm),
            image_shape=data.image_shape,
            feature_names=data.feature_names,
            class_names=data.class_names,
            score_name=score_name,
        )
        order = "in rank order" if arm != "random" else "a random draw (first seed)"
        sec.add_gallery(
            items,
            caption=f"{arm}: the first {len(items)} of the {len(idx)} pool samples added at the "
            f"chosen budget, {order}; '#i' is the pool index.",
        )


def augment_report(
    result: AugmentResult, data: LabeledData, pool: Split, title: str | None = None
) -> Report:
    """The full page: verdicts, accuracy table and curves, class balance and the samples
    each arm added (``data`` gives the rendering hints, ``pool`` the samples)."""
    info = result.info
    recipe = info["recipe"]
    report = Report(
        title or f"Does adding influential pool samples help? {data.name}",
        subtitle="A labelled pool the model never saw is ranked by influence on the "
        "validation loss (helpful first), by nearness to the validation samples, or at "
        "random; the top m are added to the training set and the same recipe retrained.",
    )
    sec = report.add_section(
        "Accuracy after adding pool samples",
        f"Every arm retrains the same recipe ({recipe['model']}, {recipe['epochs']} epochs, "
        f"batch {recipe['batch_size']}, {recipe['optimizer']} lr {recipe['lr']}) with the same "
        f"{len(info['seeds'])} seeds. {info['n_val_rank']} validation samples are the ranking "
        f"target; {info['n_val_choose']} others choose each arm's "
        "m; test accuracy is only reported.",
    )
    for tone, text in augment_verdicts(result):
        sec.add_callout(text, tone=tone)  # type: ignore[arg-type]
    sec.add_table(
        _summary_table(result),
        caption="At the m chosen on validation (mean ± std over seeds; Δ paired by seed).",
    )
    sec.add_figure(
        augment_curves(result),
        caption="Accuracy against m (±1 std over seeds); ★ = chosen on validation.",
    )
    curve = result.curve.round(4)
    sec.add_table(curve, caption="Every (arm, m): mean and std over seeds.")
    sec.add_key_values(
        {
            "training / pool samples": f"{info['n_train']} / {info['n_pool']}",
            "validation (rank / choose) / test": f"{info['n_val_rank']} / {info['n_val_choose']} / {info['n_test']}",
            "influence": f"{info['method']}, tracked {info['tracked']}",
            "budgets m": info["budgets"],
            "seeds": info["seeds"],
            "training runs": f"{info['n_runs']} ({info['n_trained']} trained now)",
            "wall time (s)": round(info["wall_seconds"], 1),
        },
        caption="Experiment",
    )
    added = report.add_section("The added samples", "What each arm took from the pool.")
    added.add_table(
        _class_counts(result, pool, data.class_names), caption="Labels of the added samples."
    )
    _gallery(added, result, data, pool)
    return report
