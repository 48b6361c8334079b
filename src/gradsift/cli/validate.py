"""``gradsift validate``: how well attribution scores predict retraining (LDS, LOO).

Works from saved arrays, so the retraining can run anywhere (e.g. with
:func:`gradsift.evaluate.linear_datamodeling_score` and your training function):

- ``--scores S.npy`` float ``[n, m]`` pairwise scores (positive = helpful);
- LDS: ``--masks masks.npy`` bool ``[M, n]`` and ``--outputs outputs.npy`` ``[M, m]``
  (outputs helpful samples raise, e.g. ``−loss``);
- LOO: ``--loo-changes changes.npy`` ``[n, m]`` actual test-loss changes when row ``i`` is
  removed (predicted: ``score / n``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from gradsift.cli.app import app, check_output, emit_json, fail, out, user_errors, write_atomically
from gradsift.evaluate import lds_from_outputs, loo_agreement


@app.command("validate")
def validate_cmd(
    scores: Path = typer.Option(..., help="Pairwise scores .npy [n_train, n_test]."),
    masks: Path | None = typer.Option(None, help="LDS subset masks .npy bool [M, n_train]."),
    outputs: Path | None = typer.Option(None, help="LDS retrained outputs .npy [M, n_test]."),
    loo_changes: Path | None = typer.Option(
        None, help="Actual leave-one-out test-loss changes .npy [n_train, n_test]."
    ),
    report: Path | None = typer.Option(None, help="Write an HTML report here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Linear datamodeling score and/or leave-one-out agreement of saved scores."""
    check_output(report, "--report", overwrite)
    if (masks is None) != (outputs is None):
        fail("--masks and --outputs go together (LDS)")
    if masks is None and loo_changes is None:
        fail("nothing to validate: give --masks/--outputs (LDS) and/or --loo-changes (LOO)")
    with user_errors():
        S = np.load(scores)
        lds = loo = None
        if masks is not None and outputs is not None:
            lds = lds_from_outputs(S, np.load(masks).astype(bool), np.load(outputs))
        if loo_changes is not None:
            loo = loo_agreement(S / S.shape[0], np.load(loo_changes))
    payload = {
        "lds": None if lds is None else lds.score,
        "lds_per_test": None if lds is None else lds.per_test.tolist(),
        "loo_pearson": None if loo is None else loo.pearson,
        "loo_spearman": None if loo is None else loo.spearman,
    }
    if json_out:
        emit_json(payload)
    else:
        if lds is not None:
            out.print(f"LDS {lds.score:.3f} over {lds.masks.shape[0]} subset models")
        if loo is not None:
            out.print(f"LOO Pearson {loo.pearson:.3f}, Spearman {loo.spearman:.3f}")
    if report is not None:
        from gradsift.report.html import Report
        from gradsift.report.validation import validation_section

        page = validation_section(Report("gradsift validate"), lds, loo)
        write_atomically(report, page.save)
