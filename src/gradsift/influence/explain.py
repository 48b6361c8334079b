"""Explanations: the training samples that most helped and most hurt chosen test points.

For each chosen test point *t*, :func:`explain` returns the ``top`` most helpful training
samples (largest ``score(i, t)``) and the ``top`` most harmful (most negative), with their
scores (**positive = helpful**: removing *i* would raise *t*'s loss). It also returns a
train × test influence **heatmap**: the scores of every training sample that is among the
``heatmap_top`` most helpful or harmful of *some* chosen test point, against every chosen
test point (FastIF's visualisation of how test points share their supporters).

Scores come from FastIF (``method="fastif"``, candidates from a nearest-neighbour index)
or from any :class:`~gradsift.influence.scores.InfluenceScorer` method over all training
rows (``"if-exact"``, ``"if-cg"``, ``"if-lissa"``, ``"datainf"``, ``"dot"``, ``"cosine"``).

:func:`add_explanations` renders them into a :class:`gradsift.report.html.Report`: per
test point a gallery (the test sample, then its helpful and harmful training samples, as
images, table rows or text), a score table, and the heatmap figure. The ``gradsift explain``
pipeline on a built-in data set is :func:`gradsift.experiments.explain_run.run_explain`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from gradsift.config import DEFAULT_DAMPING
from gradsift.errors import GradsiftError
from gradsift.grads.computer import GradientComputer
from gradsift.influence.fastif import FastIF, FastIFConfig
from gradsift.influence.scores import METHODS, InfluenceScorer
from gradsift.influence.solvers import CGSolver, ExactSolver, InverseHVP
from gradsift.task import Task

__all__ = [
    "Explanations",
    "explain",
    "default_solver",
    "heatmap_figure",
    "add_explanations",
    "EXPLAIN_METHODS",
]

#: Methods :func:`explain` accepts.
EXPLAIN_METHODS: tuple[str, ...] = ("fastif", *(m for m in METHODS if m != "tracin"))


@dataclass
class Explanations:
    """Top helpful / harmful training samples of ``m`` test points, and the heatmap.

    Attributes:
        test_indices: int64 ``[m]`` rows of the test data that were explained.
        helpful_indices, helpful_scores: int64 / float64 ``[m, top]``, most helpful first.
        harmful_indices, harmful_scores: int64 / float64 ``[m, top]``, most harmful
            (most negative) first. ``-1`` / NaN pad rows with fewer candidates (FastIF).
        heatmap_rows: int64 ``[r]`` training rows of the heatmap (sorted by the test point
            they were picked for, helpful then harmful).
        heatmap: float64 ``[r, m]`` ``score(heatmap_rows[a], test_indices[b])``.
        method: the scoring method; settings: its parameters and timings (seconds).
    """

    test_indices: np.ndarray
    helpful_indices: np.ndarray
    helpful_scores: np.ndarray
    harmful_indices: np.ndarray
    harmful_scores: np.ndarray
    heatmap_rows: np.ndarray
    heatmap: np.ndarray
    method: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def top(self) -> int:
        return int(self.helpful_indices.shape[1])

    def to_frame(self) -> pd.DataFrame:
        """Long table: ``test_index``, ``kind`` (helpful/harmful), ``rank`` (1 = strongest),
        ``train_index``, ``score``."""
        rows = []
        for b, t in enumerate(self.test_indices):
            for kind, idx, val in (
                ("helpful", self.helpful_indices, self.helpful_scores),
                ("harmful", self.harmful_indices, self.harmful_scores),
            ):
                for r in range(self.top):
                    if idx[b, r] >= 0:
                        rows.append((int(t), kind, r + 1, int(idx[b, r]), float(val[b, r])))
        return pd.DataFrame(rows, columns=["test_index", "kind", "rank", "train_index", "score"])


def default_solver(model: nn.Module, task: Task, damping: float = DEFAULT_DAMPING) -> InverseHVP:
    """Exact (Cholesky) when at most 5,000 parameters are tracked, conjugate gradient above."""
    dim = GradientComputer(model, task).dim
    return ExactSolver(damping=damping) if dim <= 5000 else CGSolver(damping=damping)


def explain(
    model: nn.Module,
    task: Task,
    train_data: Dataset | tuple[Any, ...],
    test_data: Dataset | tuple[Any, ...],
    test_indices: Sequence[int] | np.ndarray | None = None,
    *,
    method: str = "fastif",
    top: int = 5,
    heatmap_top: int = 3,
    solver: InverseHVP | None = None,
    damping: float = DEFAULT_DAMPING,
    weight_decay: float = 0.0,
    fastif_config: FastIFConfig = FastIFConfig(),
    **scorer_kwargs: Any,
) -> Explanations:
    """Explain test points by their most helpful and harmful training samples.

    Args:
        model, task: the trained model (eval mode) and its task.
        train_data: the training data the model was trained on.
        test_data: the data holding the test points; ``test_indices`` picks rows of it
            (default: all rows).
        method: ``"fastif"`` or an :class:`InfluenceScorer` method (see
            :data:`EXPLAIN_METHODS`).
        top: helpful and harmful samples per test point.
        heatmap_top: per test point, how many of its helpful and of its harmful samples
            become heatmap rows.
        solver: inverse-HVP solver (fitted or not) for FastIF and the ``if-*`` methods;
            default :func:`default_solver` with ``damping``.
        weight_decay: the coupled L2 coefficient the model was trained with.
        fastif_config: FastIF settings (``k``, index, space, workers).
        **scorer_kwargs: passed to :class:`InfluenceScorer` (e.g. ``batch_size``).
    """
    if method not in EXPLAIN_METHODS:
        raise GradsiftError(f"unknown method {method!r}; use one of {EXPLAIN_METHODS}")
    if top < 1 or heatmap_top < 0 or heatmap_top > top:
        raise GradsiftError(f"need top >= 1 and 0 <= heatmap_top <= top, got {top}, {heatmap_top}")
    n_test = _length(test_data)
    idx = np.arange(n_test) if test_indices is None else np.asarray(test_indices, dtype=np.int64)
    if idx.ndim != 1 or len(idx) == 0:
        raise GradsiftError("test_indices must be a non-empty list of row numbers")
    if idx.min() < 0 or idx.max() >= n_test:
        raise GradsiftError(f"test indices must lie in [0, {n_test}), got {idx.tolist()[:10]}")
    tests = _subset(test_data, idx)
    t0 = time.perf_counter()
    uses_solver = method == "fastif" or method.startswith("if-")
    if uses_solver:
        solver = solver or default_solver(model, task, damping)
        if not solver.fitted:
            solver.fit(model, task, train_data, weight_decay=weight_decay)
    timings = {"fit": time.perf_counter() - t0}
    t0 = time.perf_counter()
    if method == "fastif":
        run = _fastif(model, task, train_data, tests, solver, fastif_config, top, heatmap_top)
    else:
        scorer = InfluenceScorer(
            model,
            task,
            method,  # type: ignore[arg-type]
            solver=solver if uses_solver else None,
            weight_decay=weight_decay,
            **scorer_kwargs,
        )
        run = _scorer(scorer.fit(train_data), train_data, tests, top, heatmap_top)
    h_idx, h_val, a_idx, a_val, rows, heat, info = run
    timings["scores"] = time.perf_counter() - t0
    return Explanations(
        test_indices=idx,
        helpful_indices=h_idx,
        helpful_scores=h_val,
        harmful_indices=a_idx,
        harmful_scores=a_val,
        heatmap_rows=rows,
        heatmap=heat,
        method=method,
        settings={**info, "top": top, "heatmap_top": heatmap_top, "timings": timings},
    )


def _fastif(model, task, train_data, tests, solver, config, top, heatmap_top):
    with FastIF(model, task, train_data, solver, config) as fast:
        S = fast.solve(fast.test_gradients(tests))
        result = fast.influence(tests, S=S)
        h_idx, h_val = _pad(*result.helpful(top), top)
        a_idx, a_val = _pad(*result.harmful(top), top)
        rows = _heatmap_rows(h_idx[:, :heatmap_top], a_idx[:, :heatmap_top])
        cand = np.broadcast_to(rows, (len(S), len(rows))).copy()
        heat = fast.score_candidates(S, cand).T if len(rows) else np.zeros((0, len(S)))
    info = {**result.settings, "method_timings": result.timings}
    return h_idx, h_val, a_idx, a_val, rows, heat, info


def _scorer(scorer, train_data, tests, top, heatmap_top):
    res = scorer.top_k(train_data, tests, k=top)
    h_idx, h_val = _pad(res.helpful_indices, res.helpful_scores, top)
    a_idx, a_val = _pad(res.harmful_indices, res.harmful_scores, top)
    rows = _heatmap_rows(h_idx[:, :heatmap_top], a_idx[:, :heatmap_top])
    n_test = len(h_idx)
    heat = scorer.scores(_subset(train_data, rows), tests) if len(rows) else np.zeros((0, n_test))
    return h_idx, h_val, a_idx, a_val, rows, heat, {"scorer": scorer.settings()}


def _pad(idx: np.ndarray, val: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    if idx.shape[1] == top:
        return idx, val
    out_i = np.full((len(idx), top), -1, dtype=np.int64)
    out_v = np.full((len(idx), top), np.nan)
    out_i[:, : idx.shape[1]], out_v[:, : idx.shape[1]] = idx, val
    return out_i, out_v


def _heatmap_rows(helpful: np.ndarray, harmful: np.ndarray) -> np.ndarray:
    """Distinct training rows in order of first appearance (test point by test point)."""
    seen: dict[int, None] = {}
    for h, a in zip(helpful, harmful, strict=True):
        for i in (*h.tolist(), *a.tolist()):
            if i >= 0:
                seen.setdefault(int(i), None)
    return np.array(list(seen), dtype=np.int64)


def _length(data: Dataset | tuple[Any, ...]) -> int:
    if isinstance(data, tuple):
        return len(data[0])
    return len(data)  # type: ignore[arg-type]


def _subset(data: Dataset | tuple[Any, ...], idx: np.ndarray) -> Dataset | tuple[Any, ...]:
    if isinstance(data, tuple):
        return tuple(
            a[torch.as_tensor(idx)] if isinstance(a, torch.Tensor) else np.asarray(a)[idx]
            for a in data
        )
    return Subset(data, idx.tolist())


# --------------------------------------------------------------------------- rendering


def heatmap_figure(
    expl: Explanations,
    train_labels: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    flipped: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> Any:
    """A matplotlib Figure of ``expl.heatmap`` (rows: training samples, columns: test
    points), diverging colours centred at 0 (blue = helpful, red = harmful). Rows of
    known-flipped samples are marked with ``*``."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    H = expl.heatmap
    r, m = H.shape
    fig = Figure(figsize=(1.6 + 0.55 * m, 1.4 + 0.28 * max(r, 1)))
    ax = fig.add_subplot()
    bound = float(np.nanmax(np.abs(H))) if H.size else 1.0
    bound = bound if bound > 0 else 1.0
    im = ax.imshow(
        H, aspect="auto", cmap="RdBu", norm=TwoSlopeNorm(0.0, -bound, bound), interpolation="none"
    )
    flip = set(np.asarray(flipped if flipped is not None else [], dtype=np.int64).tolist())

    def name(y: Any) -> str:
        return str(class_names[int(y)]) if class_names is not None else str(int(y))

    ax.set_yticks(range(r))
    ax.set_yticklabels(
        [
            f"{'*' if i in flip else ''}#{i}"
            + (f" ({name(train_labels[i])})" if train_labels is not None else "")
            for i in expl.heatmap_rows
        ],
        fontsize=7,
    )
    ax.set_xticks(range(m))
    ax.set_xticklabels(
        [
            f"#{t}" + (f"\n({name(test_labels[t])})" if test_labels is not None else "")
            for t in expl.test_indices
        ],
        fontsize=7,
    )
    ax.set_xlabel("test point (true label)")
    ax.set_ylabel("training sample (given label; * = flipped)")
    fig.colorbar(im, ax=ax, label="influence (positive = helpful)")
    fig.tight_layout()
    return fig


def add_explanations(
    report: Any,
    expl: Explanations,
    train: Any,
    test: Any,
    kind: str = "tabular",
    image_shape: tuple[int, ...] | None = None,
    feature_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    test_predicted: np.ndarray | None = None,
    title: str = "Explanations",
) -> Any:
    """Add a section to ``report`` (:class:`gradsift.report.html.Report`) and return it.

    ``train`` / ``test`` are :class:`~gradsift.experiments.datasets.Split`-like objects (``X``, ``y``,
    optional ``X_raw``, ``flipped``, ``y_clean``); images are drawn from ``X_raw`` when
    present. Per test point: a gallery with the test sample, its most helpful and most
    harmful training samples (flipped ones framed in red), then the score table and the
    heatmap of all test points.
    """
    from gradsift.report.gallery import sample_items

    section = report.add_section(
        title,
        f"Training samples that most helped (positive influence) and most hurt (negative) "
        f"each test point, by {expl.method}. Positive = removing the sample would raise "
        "the test point's loss.",
    )
    X_train = _render_rows(train)
    X_test = _render_rows(test)
    flipped = getattr(train, "flipped", None)
    y_clean = getattr(train, "y_clean", None)
    hints = {"image_shape": image_shape, "feature_names": feature_names, "class_names": class_names}
    for b, t in enumerate(expl.test_indices):
        cards = sample_items(
            X_test,
            test.y,
            [int(t)],
            kind,
            predicted=test_predicted,
            **hints,  # type: ignore[arg-type]
        )
        cards[0].title = f"test #{int(t)}"
        for label, idx, val in (
            ("helpful", expl.helpful_indices[b], expl.helpful_scores[b]),
            ("harmful", expl.harmful_indices[b], expl.harmful_scores[b]),
        ):
            keep = idx >= 0
            scores = np.full(len(train.y), np.nan)
            scores[idx[keep]] = val[keep]
            items = sample_items(
                X_train,
                train.y,
                idx[keep],
                kind,
                scores=scores,
                flipped=flipped,
                y_true=y_clean,
                score_name="influence",
                **hints,  # type: ignore[arg-type]
            )
            for rank, item in enumerate(items, start=1):
                item.title = f"{label} {rank}: #{int(idx[keep][rank - 1])}"
            cards += items
        section.add_gallery(
            cards,
            caption=f"Test point #{int(t)}: the test sample, its {expl.top} most helpful, "
            f"then its {expl.top} most harmful training samples",
        )
    frame = expl.to_frame()
    if flipped is not None:
        frame["flipped"] = np.isin(frame["train_index"].to_numpy(), flipped)
    section.add_table(frame, caption="Scores (positive = helpful)", float_format="{:.4g}")
    if expl.heatmap.size:
        fig = heatmap_figure(
            expl,
            train_labels=train.y,
            test_labels=test.y,
            flipped=flipped,
            class_names=class_names,
        )
        section.add_figure(
            fig,
            caption="Train × test influence: each row is a training sample among the top "
            "helpful or harmful of some test point, each column a test point.",
        )
    return section


def _render_rows(split: Any) -> Any:
    raw = getattr(split, "X_raw", None)
    return raw if raw is not None else split.X
