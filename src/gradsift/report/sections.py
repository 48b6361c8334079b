"""Ready-made report sections: detection quality, flagged-sample gallery, trimming experiment.

Each function appends one section to a :class:`~gradsift.report.html.Report` and returns it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gradsift.detect.metrics import detection_metrics
from gradsift.detect.result import DetectionResult
from gradsift.report.gallery import SampleView, sample_items
from gradsift.report.html import Report, Section
from gradsift.report.plots import roc_pr_curves, score_distribution, trimming_bars, trimming_curves

if TYPE_CHECKING:
    from gradsift.experiments.trimming import TrimPipelineResult, TrimResult

__all__ = [
    "detection_section",
    "detection_table",
    "trimming_section",
    "demo_report",
    "detect_report",
    "detect_report_for_cli",
    "samples_from_file",
    "headline",
    "trimming_verdict",
    "trim_report",
]


def _as_results(
    results: Mapping[str, DetectionResult | np.ndarray], budget: float
) -> dict[str, DetectionResult]:
    out = {}
    for name, r in results.items():
        out[name] = (
            r
            if isinstance(r, DetectionResult)
            else DetectionResult(np.asarray(r), name, budget=budget)
        )
    if not out:
        raise ValueError("no detection results to report")
    return out


def _has_flips(flipped: np.ndarray | None, n: int) -> bool:
    """True when some but not all of the ``n`` samples are known to be flipped."""
    if flipped is None:
        return False
    a = np.asarray(flipped)
    count = int(a.sum()) if a.dtype == bool else int(a.size)
    return 0 < count < n


def detection_table(
    results: Mapping[str, DetectionResult | np.ndarray], flipped: np.ndarray
) -> pd.DataFrame:
    """Detection metrics per detector (AUROC, AP, precision@m, recall@10/20%), best first."""
    rows = []
    for name, r in results.items():
        s = r.scores if isinstance(r, DetectionResult) else np.asarray(r)
        rows.append({"detector": name, **detection_metrics(s, flipped)})
    frame = pd.DataFrame(rows).sort_values("auroc", ascending=False, kind="stable")
    return frame[
        [
            "detector",
            "auroc",
            "average_precision",
            "precision_at_m",
            "recall_at_10pct",
            "recall_at_20pct",
            "m",
            "n",
        ]
    ]


def detection_section(
    report: Report,
    results: Mapping[str, DetectionResult | np.ndarray],
    samples: SampleView,
    flipped: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    primary: str | None = None,
    n_gallery: int = 24,
    budget: float = 0.1,
    title: str = "Detection",
    note: str | None = None,
    extra_table: pd.DataFrame | None = None,
) -> Section:
    """Score distribution, ROC / PR curves, metrics and a gallery of the top flagged samples.

    Args:
        report: the report to append to.
        results: ``{detector: DetectionResult or float [n] scores}``; arrays are flagged
            at ``budget``.
        samples: the scored training samples and how to render them.
        flipped: known flipped indices (or mask); enables metrics, ROC / PR and the
            flipped-vs-clean histogram.
        predicted: optional int ``[n]`` model predictions shown in the gallery.
        primary: the detector shown in the histogram and gallery (default: the best by
            AUROC when flips are known, else the first).
        n_gallery: number of top-ranked samples in the gallery.
        budget: flagging budget for plain score arrays.
        title: section title.
        note: optional paragraph (e.g. which checkpoint the gradients came from).
        extra_table: an optional table shown after the metrics (e.g. per-checkpoint rows).
    """
    res = _as_results(results, budget)
    n = next(iter(res.values())).n
    if len(samples.y) != n:
        raise ValueError(f"samples has {len(samples.y)} rows but the scores have {n}")
    known = _has_flips(flipped, n)
    sec = report.add_section(
        title,
        "Every training sample gets a detection score (higher = more likely mislabeled or "
        "harmful). The flagged samples are the top-ranked ones at the trimming budget.",
    )
    if note:
        sec.add_text(note)
    table = None
    if known:
        table = detection_table(res, flipped)  # type: ignore[arg-type]
        best = table.iloc[0]
        sec.add_callout(
            f"Best detector: {best['detector']} with AUROC {best['auroc']:.3f} and average "
            f"precision {best['average_precision']:.3f}; {best['precision_at_m']:.1%} of its "
            f"top {int(best['m'])} samples are truly flipped (chance: {best['m'] / best['n']:.1%}).",
            tone="info",
        )
        sec.add_table(
            table.rename(
                columns={
                    "average_precision": "AP",
                    "auroc": "AUROC",
                    "precision_at_m": "precision@m",
                    "recall_at_10pct": "recall@10%",
                    "recall_at_20pct": "recall@20%",
                }
            ),
            caption="Detection quality against the known flipped labels (m = number flipped).",
        )
        sec.add_figure(
            roc_pr_curves({k: v.scores for k, v in res.items()}, flipped),
            caption="ROC and precision–recall curves per detector. Dotted: chance.",
        )
    if extra_table is not None:
        sec.add_table(extra_table)
    if primary is None:
        primary = str(table.iloc[0]["detector"]) if table is not None else next(iter(res))
    if primary not in res:
        raise ValueError(f"primary detector {primary!r} is not among {sorted(res)}")
    r = res[primary]
    sec.add_figure(
        score_distribution(r.scores, r.is_issue, flipped if known else None, detector=primary),
        caption=f"Distribution of the {primary} scores; dashed: the flagging threshold "
        f"({r.n_flagged} of {r.n} flagged).",
    )
    top = np.argsort(-r.scores, kind="stable")[: max(0, n_gallery)]
    items = sample_items(
        samples.X,
        samples.y,
        top,
        samples.kind,
        scores=r.scores,
        predicted=predicted,
        flipped=flipped if known else None,
        y_true=samples.y_true,
        image_shape=samples.image_shape,
        feature_names=samples.feature_names,
        class_names=samples.class_names,
        score_name=f"{primary} score",
    )
    caption = f"The {len(items)} samples ranked most suspicious by {primary}, as they are, with the given label"
    caption += ", the model's prediction" if predicted is not None else ""
    caption += " and, for truly flipped samples, the true label (red frame)." if known else "."
    sec.add_gallery(items, caption=caption)
    return sec


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


def seconds_table(timings: Mapping[str, float]) -> pd.DataFrame:
    """A two-column ``step | seconds`` frame."""
    return pd.DataFrame({"step": list(timings), "seconds": [float(v) for v in timings.values()]})


def run_info(items: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``None`` values (for :meth:`Section.add_key_values`)."""
    return {k: v for k, v in items.items() if v is not None}


def trim_report(run: TrimPipelineResult, title: str | None = None) -> Report:
    """The full report of :func:`gradsift.experiments.trimming.trim_dataset`: overview, trimming, detection."""
    data, result = run.data, run.trim
    n, m = len(data.train), int(data.train.flipped.size)
    report = Report(
        title or f"Does trimming help? {data.name}, {m / n:.0%} flipped training labels",
        subtitle="Outlier Gradient Analysis ranks the training samples; the flagged ones are "
        "removed and the model retrained, against random removal of as many samples, no "
        "trimming, and an oracle that removes exactly the flipped samples.",
    )
    sec = report.add_section("Overview")
    tone, text = headline(result)
    sec.add_callout(text, tone=tone, title="Answer:")  # type: ignore[arg-type]
    epochs = [c.get("epoch") for c in run.checkpoints]
    sec.add_key_values(
        run_info(
            {
                "data set": f"{data.name} ({data.kind}{', ' + 'x'.join(map(str, data.image_shape)) if data.image_shape else ''})",
                "training / validation / test samples": f"{n} / {len(data.val)} / {len(data.test)}",
                "flipped training labels": f"{m} ({m / n:.1%})" if m else "unknown",
                "recipe": ", ".join(f"{k}={v}" for k, v in result.info["recipe"].items()),
                "detectors": ", ".join(run.detection),
                "gradients taken at epoch(s)": epochs,
                "seeds": result.info["seeds"],
            }
        ),
        caption="Set-up",
    )
    sec.add_table(
        seconds_table(run.timings), caption="Wall time per step (seconds)", float_format="{:.1f}"
    )
    trimming_section(report, result)
    detection_section(
        report,
        run.detection,
        SampleView.from_split(data),
        flipped=data.train.flipped if m else None,
        predicted=run.predicted,
        title="Detection: which samples were flagged",
        note=f"Scores from last-layer per-sample gradients of the detection model at epoch(s) {epochs}.",
    )
    return report


_METRIC_NAMES = {
    "auroc": "AUROC",
    "average_precision": "AP",
    "precision_at_m": "precision@m",
    "recall_at_10pct": "recall@10%",
    "recall_at_20pct": "recall@20%",
}


def demo_report(result: Any) -> Report:
    """Report of ``gradsift demo`` (a :class:`gradsift.experiments.demo.DemoResult`).

    Shows the detection at the first checkpoint mode (``best`` by default) with ROC / PR
    curves, score distribution and the flagged-sample gallery, plus every (checkpoint mode,
    detector) row of the demo's table.
    """
    data = result.data
    info = result.info
    report = Report(
        f"gradsift demo: {data.name} with {info['n_flipped']} flipped training labels",
        subtitle="Outlier Gradient Analysis on a model that memorises its noisy labels.",
    )
    sec = report.add_section("Overview")
    sec.add_key_values(run_info(info), caption="Set-up")
    sec.add_table(
        seconds_table(result.timings), caption="Wall time per step (seconds)", float_format="{:.2f}"
    )
    sec.add_callout(
        "This demo measures detection only. `gradsift trim --dataset digits --report out.html` "
        "retrains without the flagged samples against random removal and the oracle.",
        tone="info",
    )
    rows = pd.DataFrame(result.rows)
    if not rows.empty:
        rows = rows.rename(columns=_METRIC_NAMES)
        rows["epochs"] = rows["epochs"].map(lambda e: ", ".join(map(str, e)))
        sec.add_table(rows, caption="Every checkpoint mode and detector (m = number flipped).")
    for mode, run in result.runs.items():
        epochs = [c.get("epoch") for c in run.checkpoints]
        detection_section(
            report,
            run.results,
            SampleView.from_split(data),
            flipped=data.train.flipped,
            title=f"Detection with gradients at the '{mode}' checkpoint (epoch {', '.join(map(str, epochs))})",
            n_gallery=24 if mode == next(iter(result.runs)) else 12,
        )
    return report


def detect_report(
    scores: pd.DataFrame,
    detectors: list[str],
    source: str,
    samples: SampleView | None = None,
    predicted: np.ndarray | None = None,
    budget: float | int = 0.1,
    info: Mapping[str, Any] | None = None,
) -> Report:
    """Report of ``gradsift detect`` from its per-row score frame (columns ``<name>_score``).

    Args:
        scores: one row per training row with ``<detector>_score`` columns.
        detectors: detector names; the first ranks the gallery.
        source: where the data came from (shown in the report).
        samples: the rows to render (``None``: a table of the top rows instead).
        predicted: optional int ``[n]`` predictions.
        budget: flagging budget.
        info: facts shown in the overview.
    """
    results = {
        name: DetectionResult(scores[f"{name}_score"].to_numpy(np.float64), name, budget=budget)
        for name in detectors
    }
    report = Report(
        f"gradsift detect: {source}",
        subtitle="Flipped labels are unknown here: the scores rank the rows to inspect first.",
    )
    sec = report.add_section("Overview")
    sec.add_key_values(
        run_info({"source": source, "rows": len(scores), **dict(info or {})}), caption="Set-up"
    )
    if samples is not None:
        detection_section(
            report, results, samples, predicted=predicted, primary=detectors[0], budget=budget
        )
    else:
        primary = results[detectors[0]]
        sec = report.add_section("Detection")
        sec.add_figure(score_distribution(primary.scores, primary.is_issue, detector=detectors[0]))
        top = np.argsort(-primary.scores, kind="stable")[:50]
        sec.add_table(
            scores.iloc[top].reset_index(),
            caption=f"The 50 rows ranked most suspicious by {detectors[0]}.",
        )
    return report


def samples_from_file(
    path: str | Any, label_column: str = "label", x_key: str = "X", y_key: str = "y"
) -> SampleView:
    """Rows of a CSV / NPZ file (as ``gradsift detect`` reads them) for rendering.

    NPZ arrays with 3 or 4 dimensions (``[n, H, W]``, ``[n, C, H, W]``) are shown as
    images; everything else as table rows with their column names.
    """
    from pathlib import Path

    from gradsift.experiments.tabular import read_table

    table = read_table(path, label_column, x_key, y_key)
    if Path(path).suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            X = npz[x_key]
        if X.ndim in (3, 4):
            return SampleView(X=X, y=table.y, kind="image", class_names=table.class_names)
    return SampleView(
        X=table.X,
        y=table.y,
        kind="tabular",
        feature_names=table.feature_names,
        class_names=table.class_names,
    )


def detect_report_for_cli(
    frame: pd.DataFrame,
    detectors: list[str],
    info: Mapping[str, Any],
    data_path: Any | None,
    label_column: str = "label",
    x_key: str = "X",
    y_key: str = "y",
    budget: float | int = 0.1,
) -> Report:
    """The ``gradsift detect --report`` page: from the score frame, plus the file's rows if any."""
    samples = (
        samples_from_file(data_path, label_column, x_key, y_key) if data_path is not None else None
    )
    predicted = None
    if samples is not None and "predicted" in frame.columns:
        names = samples.class_names
        lookup = {str(c): i for i, c in enumerate(names)} if names else None
        values = frame["predicted"].tolist()
        predicted = np.array([lookup[str(v)] if lookup else int(v) for v in values], dtype=np.int64)
    return detect_report(
        frame,
        detectors,
        str(info.get("source", data_path)),
        samples=samples,
        predicted=predicted,
        budget=budget,
        info={k: v for k, v in info.items() if k != "source"},
    )
