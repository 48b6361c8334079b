"""The command line, run as a user would (typer's runner and a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from gradsift.cli import app

runner = CliRunner()
FACTORY = Path(__file__).parent / "fixtures" / "user_factory.py"


def noisy_csv(tmp_path, n_flip=12):
    from sklearn.datasets import load_wine

    d = load_wine(as_frame=True)
    frame = d.frame.rename(columns={"target": "label"})
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(frame), n_flip, replace=False)
    frame.loc[flipped, "label"] = (frame.loc[flipped, "label"] + 1) % 3
    path = tmp_path / "wine.csv"
    frame.to_csv(path, index=False)
    return path, flipped


def test_help_on_every_command():
    for args in ([], ["demo"], ["detect"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_detect_csv_writes_scores_and_json(tmp_path):
    path, flipped = noisy_csv(tmp_path)
    out_csv = tmp_path / "scores.csv"
    result = runner.invoke(
        app,
        [
            "detect",
            str(path),
            "--detectors",
            "l2,loss",
            "--epochs",
            "30",
            "--out",
            str(out_csv),
            "--json",
            "--budget",
            "12",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["flagged"] == {"l2": 12, "loss": 12} and summary["n"] == 178
    scores = pd.read_csv(out_csv, index_col="index")
    assert len(scores) == 178 and {
        "l2_score",
        "l2_rank",
        "l2_is_issue",
        "label",
        "predicted",
    } <= set(scores.columns)
    from sklearn.metrics import roc_auc_score

    truth = np.isin(np.arange(178), flipped)
    auroc = roc_auc_score(truth, scores["l2_score"])
    assert auroc > 0.8  # measured 1.00 (12 flips of 178); chance is 0.5


def test_detect_errors_are_clear(tmp_path):
    path, _ = noisy_csv(tmp_path)
    result = runner.invoke(app, ["detect", str(path), "--label-column", "target"])
    assert result.exit_code == 2 and "no column 'target'" in result.output
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"a": [1.0, np.nan, 2.0, 3.0], "label": [0, 1, 0, 1]}).to_csv(bad, index=False)
    result = runner.invoke(app, ["detect", str(bad)])
    assert result.exit_code == 2 and "rows [1]" in result.output
    result = runner.invoke(app, ["detect", "--model", f"{FACTORY}:not_a_setup"])
    assert result.exit_code == 2 and "returned int" in result.output


def test_detect_user_model_from_factory(tmp_path):
    out_csv = tmp_path / "s.csv"
    result = runner.invoke(
        app,
        [
            "detect",
            "--model",
            f"{FACTORY}:make",
            "--detectors",
            "l2",
            "--budget",
            "6",
            "--out",
            str(out_csv),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(out_csv)
    assert set(np.flatnonzero(scores["l2_is_issue"])) & set(
        range(6)
    )  # flips land in the flagged set


def test_demo_runs_as_a_subprocess_and_prints_json():
    cmd = [
        sys.executable,
        "-m",
        "gradsift.cli",
        "demo",
        "--epochs",
        "15",
        "--detectors",
        "l2,loss,random",
        "--checkpoints",
        "best,final",
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    rows = {(r["checkpoint"], r["detector"]): r for r in payload["rows"]}
    assert len(rows) == 6
    assert rows[("best", "l2")]["auroc"] > rows[("best", "random")]["auroc"] + 0.3
