"""Report sections on detection quality: metrics, ROC / PR curves, score histogram, flagged samples.

Each section function appends one section to a :class:`~gradsift.report.html.Report` and
returns it. Detection score convention: higher = more suspicious.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from gradsift.detect.metrics import detection_metrics
from gradsift.detect.result import DetectionResult
from gradsift.report.gallery import SampleView, sample_items
from gradsift.report.html import Report, Section
from gradsift.report.plots import roc_pr_curves, score_distribution

__all__ = ["detection_section", "detection_table"]


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
