"""Report section for attribution validation (``gradsift validate``): LDS and LOO.

:func:`validation_section` adds to a :class:`~gradsift.report.html.Report` the summary
numbers, a scatter of predicted against actual outputs (subset sums against retrained
outputs for LDS; predicted against actual loss change for LOO) and the distribution of
the per-test-point correlation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gradsift.evaluate import LDSResult, LOOResult
from gradsift.report.html import Report
from gradsift.report.plots import CLEAN, PALETTE, new_figure

__all__ = ["correlation_histogram", "predicted_vs_actual", "validation_section"]


def predicted_vs_actual(predicted: np.ndarray, actual: np.ndarray, title: str) -> Figure:
    """Scatter of ``predicted`` against ``actual`` (both ``[r, m]``), one colour per test
    point (the first 8), each column standardised so test points share the axes."""
    fig, (ax,) = new_figure(5.0, 4.0)
    for t in range(min(8, predicted.shape[1])):
        p, a = predicted[:, t], actual[:, t]
        p = (p - p.mean()) / (p.std() or 1.0)
        a = (a - a.mean()) / (a.std() or 1.0)
        ax.scatter(p, a, s=10, alpha=0.6, color=PALETTE[t % len(PALETTE)], label=f"test {t}")
    ax.set_xlabel("predicted (standardised per test point)")
    ax.set_ylabel("actual (standardised per test point)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    return fig


def correlation_histogram(values: np.ndarray, label: str) -> Figure:
    """Histogram of per-test-point correlations (NaN left out), mean marked."""
    fig, (ax,) = new_figure(5.0, 3.2)
    ok = values[np.isfinite(values)]
    ax.hist(ok, bins=min(30, max(5, len(ok) // 3)), range=(-1, 1), color=CLEAN)
    if len(ok):
        ax.axvline(float(ok.mean()), color="#222222", linestyle="--", label=f"mean {ok.mean():.3f}")
        ax.legend(fontsize=8)
    ax.set_xlabel(label)
    ax.set_ylabel("test points")
    return fig


def validation_section(
    report: Report, lds: LDSResult | None = None, loo: LOOResult | None = None
) -> Report:
    """Add a "Validation" section with whatever of ``lds`` / ``loo`` is given."""
    sec = report.add_section(
        "Validation",
        "How well the attribution scores predict retraining: the linear datamodeling score "
        "(LDS, Spearman over random training subsets) and leave-one-out agreement.",
    )
    items: dict[str, Any] = {}
    if lds is not None:
        items.update(
            {
                "LDS (mean over test points)": f"{lds.score:.3f}",
                "subset models": lds.masks.shape[0],
                "subset fraction": f"{lds.masks.sum(1).mean() / lds.masks.shape[1]:.2f}",
            }
        )
    if loo is not None:
        items.update({"LOO Pearson": f"{loo.pearson:.3f}", "LOO Spearman": f"{loo.spearman:.3f}"})
    sec.add_key_values(items)
    if lds is not None:
        sec.add_figure(
            predicted_vs_actual(lds.predicted, lds.actual, "LDS: subset sum vs retrained output"),
            caption="Predicted (sum of scores over the subset) against the retrained model's output.",
        )
        sec.add_figure(correlation_histogram(lds.per_test, "per-test LDS (Spearman)"))
    if loo is not None:
        sec.add_figure(
            predicted_vs_actual(loo.predicted, loo.actual, "LOO: predicted vs actual loss change")
        )
        sec.add_figure(correlation_histogram(loo.per_test_pearson, "per-test LOO Pearson"))
    return report
