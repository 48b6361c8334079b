"""Whole report pages, one per command: ``gradsift demo``, ``detect``, ``explain`` and ``trim``.

Each builder takes the result object the library returned (:class:`DemoResult`,
:class:`DetectRun`, :class:`ExplainRun`, :class:`TrimPipelineResult`) and never re-reads a
file the pipeline already had. Ranks shown are 1-based (1 = most suspicious / strongest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from gradsift.report.detection import detection_section
from gradsift.report.gallery import SampleView
from gradsift.report.html import Report
from gradsift.report.plots import score_distribution
from gradsift.report.trimming import headline, trimming_section

if TYPE_CHECKING:
    from gradsift.experiments.demo import DemoResult
    from gradsift.experiments.detect_run import DetectRun
    from gradsift.experiments.explain_run import ExplainRun
    from gradsift.experiments.trimming.pipeline import TrimPipelineResult

__all__ = [
    "demo_report",
    "detect_report",
    "explain_report",
    "run_info",
    "seconds_table",
    "trim_report",
]


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


def demo_report(result: DemoResult) -> Report:
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


def detect_report(run: DetectRun) -> Report:
    """Report of ``gradsift detect`` (a :class:`~gradsift.experiments.detect_run.DetectRun`).

    With the file's rows (:attr:`DetectRun.table`): the detection section with the top rows
    rendered as they were read (images or table rows) and the model's predictions; for a
    user model: the score histogram and a table of the 50 most suspicious rows.
    """
    source = str(run.info.get("source", ""))
    detectors = run.detectors
    report = Report(
        f"gradsift detect: {source}",
        subtitle="Flipped labels are unknown here: the scores rank the rows to inspect first.",
    )
    sec = report.add_section("Overview")
    facts = {
        k: v for k, v in run.info.items() if k not in ("source", "notices", "checkpoint_choice")
    }
    sec.add_key_values(
        run_info({"source": source, "rows": len(run.scores), **facts}), caption="Set-up"
    )
    for line in run.info.get("notices", []):
        sec.add_callout(line, tone="info", title="Note:")
    if run.table is not None:
        samples = SampleView.from_table(run.table)
        detection = detection_section(
            report, run.oga.results, samples, predicted=run.predicted, primary=detectors[0]
        )
        detection.add_table(
            run.most_suspicious(50).reset_index(),
            caption=f"The 50 rows ranked most suspicious by {detectors[0]} (ranks 1-based).",
        )
    else:
        primary = run.oga.results[detectors[0]]
        sec = report.add_section("Detection")
        sec.add_figure(score_distribution(primary.scores, primary.is_issue, detector=detectors[0]))
        sec.add_table(
            run.most_suspicious(50).reset_index(),
            caption=f"The 50 rows ranked most suspicious by {detectors[0]} (ranks 1-based).",
        )
    return report


def explain_report(run: ExplainRun) -> Report:
    """Report of ``gradsift explain`` (a :class:`~gradsift.experiments.explain_run.ExplainRun`):
    the set-up, the simulatability of the explanations (a quality number), then per test
    point its most helpful and most harmful training samples and the train × test influence
    heatmap (:func:`gradsift.influence.explain.add_explanations`)."""
    from gradsift.influence.explain import add_explanations

    data, info = run.data, run.info
    report = Report(
        f"gradsift explain: {info['dataset']}",
        f"{run.model_name} trained {run.epochs} epochs on {len(data.train)} samples "
        f"({info['n_flipped']} labels flipped); method {info['method']}",
    )
    report.add_section("Set-up").add_key_values(
        {k: v for k, v in info.items() if k not in ("timings", "simulatability")}, caption="Run"
    )
    if "simulatability" in info:
        _simulatability_section(report, info["simulatability"])
    add_explanations(
        report,
        run.explanations,
        data.train,
        data.test,
        data.kind,
        data.image_shape,
        data.feature_names if data.kind == "tabular" else None,
        data.class_names,
        test_predicted=run.predicted,
    )
    return report


def _simulatability_section(report: Report, sim: Mapping[str, Mapping[str, Any]]) -> None:
    """Simulator accuracy of the helpful / harmful / random samples, with Wilson intervals."""
    rows = pd.DataFrame(
        {
            "samples shown": list(sim),
            "simulator accuracy": [float(v["accuracy"]) for v in sim.values()],
            f"{100 * next(iter(sim.values()))['confidence']:.0f}% interval": [
                f"[{v['low']:.2f}, {v['high']:.2f}]" for v in sim.values()
            ],
            "reproduced / points": [f"{v['correct']} / {v['n']}" for v in sim.values()],
        }
    )
    k = next(iter(sim.values()))["k"]
    sec = report.add_section(
        "Quality: do the shown samples explain the predictions?",
        intro=f"A simulator sees only the {k} samples shown per test point and guesses the "
        "model's prediction by the majority of their training labels (ties: the first shown). "
        "Helpful samples that explain the prediction beat the random control; harmful ones "
        "fall below it. The samples are ranked by influence on the loss at the given test "
        "label, so on misclassified points they explain the true label, not the prediction.",
    )
    if "helpful" in sim and "random" in sim:
        h, r = sim["helpful"], sim["random"]
        better = h["low"] > r["high"]
        sec.add_callout(
            f"helpful {h['accuracy']:.0%} vs random {r['accuracy']:.0%} over {h['n']} points"
            + ("" if better else " (intervals overlap: explain more points to tell them apart)"),
            tone="good" if better else "info",
            title="Simulatability:",
        )
    sec.add_table(rows, caption="Simulator accuracy (label vote of the shown samples)")
