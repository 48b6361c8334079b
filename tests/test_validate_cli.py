"""``gradsift validate`` on saved arrays: LDS and LOO against direct computation."""

from __future__ import annotations

import json

import numpy as np
from scipy.stats import pearsonr, spearmanr
from typer.testing import CliRunner

from gradsift.cli import app
from gradsift.evaluate import subset_masks


def test_validate_lds_and_loo_json_and_report(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(30, 4))
    scores = truth + rng.normal(scale=0.5, size=truth.shape)
    masks = subset_masks(30, 20, seed=1)
    outputs = masks.astype(float) @ truth
    for name, arr in {"s": scores, "m": masks, "o": outputs, "l": truth / 30}.items():
        np.save(tmp_path / f"{name}.npy", arr)
    report = tmp_path / "v.html"
    args = ["validate", "--scores", str(tmp_path / "s.npy"), "--masks", str(tmp_path / "m.npy")]
    args += ["--outputs", str(tmp_path / "o.npy"), "--loo-changes", str(tmp_path / "l.npy")]
    res = CliRunner().invoke(app, [*args, "--json", "--report", str(report)])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    lds = np.mean([spearmanr(masks @ scores[:, t], outputs[:, t])[0] for t in range(4)])
    loo = np.mean([pearsonr(scores[:, t], truth[:, t])[0] for t in range(4)])
    assert np.isclose(got["lds"], lds) and np.isclose(got["loo_pearson"], loo)
    assert "Validation" in report.read_text()
    res = CliRunner().invoke(app, ["validate", "--scores", str(tmp_path / "s.npy")])
    assert res.exit_code == 2 and "nothing to validate" in res.output
