"""Explanations against the full influence matrix, and their HTML rendering."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
import torch

from gradsift.errors import GradsiftError
from gradsift.evaluate.simulatability import explanation_simulatability, random_selection
from gradsift.experiments.datasets import load_digits
from gradsift.experiments.explain_run import run_explain
from gradsift.experiments.models import mlp
from gradsift.experiments.training import TrainConfig, train_classifier
from gradsift.influence import ExactSolver
from gradsift.influence.explain import add_explanations, explain, heatmap_figure
from gradsift.influence.fastif import FastIFConfig
from gradsift.influence.scores import InfluenceScorer
from gradsift.report.html import Report
from gradsift.task import ClassificationTask


@pytest.fixture(scope="module")
def digits():
    data = load_digits(seed=1, noise=0.1)
    model = mlp(64, 10, hidden=(8,), seed=1)
    train_classifier(
        model, data.train.X, data.train.y, TrainConfig(epochs=8, weight_decay=1e-3), progress=False
    )
    model.eval()
    train = (torch.as_tensor(data.train.X), torch.as_tensor(data.train.y))
    test = (torch.as_tensor(data.test.X), torch.as_tensor(data.test.y))
    return data, model, train, test


def test_matches_full_influence_matrix(digits):
    data, model, train, test = digits
    task = ClassificationTask()
    picks = [3, 0, 17, 40]
    # reference: every (train, test) score of the full method, from InfluenceScorer; the
    # fitted solver is shared (explain skips fitting a fitted solver)
    solver = ExactSolver(damping=1e-2).fit(model, task, train, weight_decay=1e-3)
    scorer = InfluenceScorer(model, task, "if-exact", solver=solver, weight_decay=1e-3).fit(train)
    full = scorer.scores(train, (test[0][picks], test[1][picks]))  # [n, 4]
    n = len(data.train)
    for method, kw in (("fastif", {"fastif_config": FastIFConfig(k=n)}), ("if-exact", {})):
        expl = explain(
            model,
            task,
            train,
            test,
            picks,
            method=method,
            top=6,
            heatmap_top=2,
            solver=solver,
            weight_decay=1e-3,
            **kw,
        )
        assert np.array_equal(expl.test_indices, picks)
        order = np.argsort(-full, axis=0, kind="stable").T  # [4, n], most helpful first
        assert np.array_equal(expl.helpful_indices, order[:, :6])
        assert np.array_equal(expl.harmful_indices, order[:, ::-1][:, :6])
        assert np.allclose(
            expl.helpful_scores, np.take_along_axis(full.T, order[:, :6], 1), rtol=1e-4
        )
        expected_rows = list(
            dict.fromkeys(i for b in range(4) for i in (*order[b, :2], *order[b, ::-1][:2]))
        )
        assert expl.heatmap_rows.tolist() == expected_rows
        assert np.allclose(expl.heatmap, full[expected_rows], rtol=1e-4, atol=1e-6)
        assert (expl.helpful_scores > 0).all() and (expl.harmful_scores < 0).all()
        frame = expl.to_frame()
        assert len(frame) == 4 * 12 and set(frame["kind"]) == {"helpful", "harmful"}
        assert frame.query("kind == 'helpful' and rank == 1")["score"].tolist() == pytest.approx(
            expl.helpful_scores[:, 0].tolist()
        )


def test_dot_method_and_bad_input(digits):
    data, model, train, test = digits
    task = ClassificationTask()
    expl = explain(model, task, train, test, [5], method="dot", top=3, heatmap_top=0)
    assert expl.heatmap.shape == (0, 1) and expl.helpful_indices.shape == (1, 3)
    with pytest.raises(GradsiftError, match="unknown method"):
        explain(model, task, train, test, [0], method="magic")
    with pytest.raises(GradsiftError, match=r"\[0, 359\)"):
        explain(model, task, train, test, [1000], method="dot")
    with pytest.raises(GradsiftError, match="heatmap_top"):
        explain(model, task, train, test, [0], method="dot", top=2, heatmap_top=3)


def test_report_section_images_and_heatmap(digits, tmp_path):
    data, model, train, test = digits
    expl = explain(
        model,
        ClassificationTask(),
        train,
        test,
        [1, 2],
        method="fastif",
        top=4,
        heatmap_top=2,
        solver=ExactSolver(damping=1e-2),
        fastif_config=FastIFConfig(k=300),
    )
    report = Report("explain test")
    section = add_explanations(
        report,
        expl,
        data.train,
        data.test,
        "image",
        data.image_shape,
        class_names=data.class_names,
    )
    html = report.save(tmp_path / "r.html").read_text()
    # two galleries of 1 test + 4 helpful + 4 harmful cards, one heatmap, one table
    assert html.count('class="gallery"') == 2
    assert html.count('<div class="card') == 2 * 9
    assert len(re.findall(r"data:image/png;base64,", html)) == 2 * 9 + 1
    assert "Train × test influence" in html and len(section.blocks) == 4
    shown = set(expl.helpful_indices.ravel()) | set(expl.harmful_indices.ravel())
    n_flipped_cards = html.count('<div class="card flipped')
    assert n_flipped_cards == sum(
        int(i in set(data.train.flipped))
        for i in np.concatenate([expl.helpful_indices.ravel(), expl.harmful_indices.ravel()])
    )
    assert len(shown) >= 4
    fig = heatmap_figure(expl, data.train.y, data.test.y, data.train.flipped)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == len(expl.heatmap_rows)
    assert all(
        lab.startswith("*") == (int(r) in set(data.train.flipped))
        for lab, r in zip(labels, expl.heatmap_rows, strict=True)
    )


def test_run_explain_result_renders_report_and_csv(tmp_path):
    from gradsift.report.pages import explain_report

    run = run_explain(
        dataset="half_moons",
        noise=0.0,
        epochs=5,
        hidden=8,
        n_auto=2,
        top=3,
        k=100,
    )
    html = explain_report(run).save(tmp_path / "e.html").read_text()
    assert '<table class="sample">' in html  # tabular rows rendered as tables
    assert "Content-Security-Policy" in html
    run.explanations.to_frame().to_csv(tmp_path / "e.csv", index=False)
    csv = (tmp_path / "e.csv").read_text().splitlines()
    assert csv[0] == "test_index,kind,rank,train_index,score"
    assert len(csv) - 1 == len(run.info["test_indices"]) * 2 * 3
    json.dumps(run.info)  # JSON-serialisable for the CLI's --json


def _vote_by_hand(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Majority label of each row's shown samples; ties to the label shown first."""
    out = []
    for row in rows:
        seen = [int(labels[i]) for i in row if i >= 0]
        counts = Counter(seen)
        best = max(counts.values())
        out.append(next(lab for lab in seen if counts[lab] == best))
    return np.array(out)


def test_run_explain_reports_simulatability(tmp_path):
    from gradsift.report.pages import explain_report

    run = run_explain(
        dataset="digits", noise=0.1, epochs=5, hidden=16, n_auto=6, top=5, method="dot"
    )
    sim = run.info["simulatability"]
    expl, labels = run.explanations, run.data.train.y
    pred = run.predicted[expl.test_indices]
    direct = explanation_simulatability(expl, labels, pred, seed=0)
    assert sim == {kind: acc.to_dict() for kind, acc in direct.items()}
    assert set(sim) == {"helpful", "harmful", "random"}
    # independent count for the helpful and random samples (same seed for the control)
    random_rows = random_selection(len(labels), len(pred), expl.top, seed=0)
    for kind, rows in (("helpful", expl.helpful_indices), ("random", random_rows)):
        correct = int((_vote_by_hand(rows, labels) == pred).sum())
        assert sim[kind]["correct"] == correct and sim[kind]["n"] == len(pred) == 12
        assert sim[kind]["accuracy"] == pytest.approx(correct / len(pred))
        assert sim[kind]["low"] <= sim[kind]["accuracy"] <= sim[kind]["high"]
    html = explain_report(run).save(tmp_path / "e.html").read_text()
    assert "Quality: do the shown samples explain the predictions?" in html
    assert f"{sim['helpful']['correct']} / 12" in html and "Simulatability:" in html


def test_cli_explain_json_and_bad_input(tmp_path):
    from typer.testing import CliRunner

    from gradsift.cli import app

    runner = CliRunner()
    args = ["explain", "--dataset", "half_moons", "--noise", "0", "--epochs", "3"]
    args += ["--hidden", "8", "--test", "4,9", "--top", "2", "--k", "50"]
    result = runner.invoke(app, [*args, "--report", str(tmp_path / "r.html"), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["info"]["test_indices"] == [4, 9]
    assert payload["info"]["simulatability"]["helpful"]["n"] == 2
    assert len(payload["scores"]) == 2 * 2 * 2 and (tmp_path / "r.html").exists()
    text = runner.invoke(app, [*args, "--report", str(tmp_path / "t.html")])
    assert text.exit_code == 0, text.output
    sim = payload["info"]["simulatability"]["helpful"]
    flat = " ".join(text.output.split())  # rich wraps long lines
    assert f"helpful {sim['accuracy']:.0%} [{sim['low']:.0%}, {sim['high']:.0%}]" in flat
    bad = runner.invoke(app, ["explain", "--dataset", "half_moons", "--noise", "0.2"])
    assert bad.exit_code == 2 and "has its own fixed label noise; drop --noise" in bad.output
