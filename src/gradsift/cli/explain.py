"""``gradsift explain``: the training samples behind test predictions, as an HTML report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from gradsift.cli.app import (
    app,
    check_output,
    emit_json,
    fail,
    out,
    shown,
    split_names,
    user_errors,
    write_atomically,
)
from gradsift.config import DEFAULT_DAMPING


@app.command("explain")
def explain_command(
    dataset: str = typer.Option("digits", help="Built-in data set: digits, half_moons or mnist."),
    noise: float = typer.Option(
        0.1, help="Fraction of training labels flipped (train split only; 0 for half_moons)."
    ),
    test: str = typer.Option(
        "", help="Comma-separated test-set indices (default: 3 misclassified and 3 correct)."
    ),
    top: int = typer.Option(5, help="Most helpful and most harmful training samples per point."),
    method: str = typer.Option(
        "fastif", help="fastif, if-exact, if-cg, if-lissa, datainf, dot or cosine."
    ),
    k: int = typer.Option(1000, help="FastIF: candidates (nearest training samples) per point."),
    space: str = typer.Option("features", help="FastIF search space: features or gradients."),
    epochs: int = typer.Option(30, help="Training epochs of the MLP."),
    hidden: int = typer.Option(64, help="Hidden units of the MLP."),
    n_train: int | None = typer.Option(None, help="Subsample the training split (mnist)."),
    damping: float = typer.Option(DEFAULT_DAMPING, help="λ of the inverse Hessian (H + λI)⁻¹."),
    workers: int = typer.Option(1, help="FastIF worker processes (LiSSA chains, scoring)."),
    seed: int = typer.Option(0, help="Seed of the split, the noise and training."),
    report: Path = typer.Option(Path("explain.html"), help="Self-contained HTML report."),
    csv: Path | None = typer.Option(None, help="Also write every score as CSV."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace existing --report / --csv files."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Explain test predictions by their most helpful and harmful training samples (HTML report with images and a train × test influence heatmap)."""
    from gradsift.experiments.explain_run import run_explain
    from gradsift.report.pages import explain_report

    check_output(report, "--report", overwrite)
    check_output(csv, "--csv", overwrite)
    try:
        test_indices = [int(t) for t in split_names(test)] or None
    except ValueError:
        fail(f"--test must be comma-separated test-set indices, got {test!r}")
    with user_errors():
        run = run_explain(
            dataset=dataset,
            noise=noise,
            seed=seed,
            hidden=hidden,
            epochs=epochs,
            test_indices=test_indices,
            method=method,
            top=top,
            k=k,
            space=space,
            damping=damping,
            workers=workers,
            n_train=n_train,
        )
        frame = run.explanations.to_frame()
        write_atomically(report, explain_report(run).save)
        if csv is not None:
            write_atomically(csv, lambda tmp: frame.to_csv(tmp, index=False))
    if as_json:
        emit_json(
            {
                "info": run.info,
                "report": str(report),
                "csv": None if csv is None else str(csv),
                "scores": frame.to_dict("records"),
            }
        )
        return
    table = Table(
        title=f"Strongest training samples per test point ({shown(method)}; positive = helpful)"
    )
    for col in ("test", "most helpful", "score", "most harmful", "score "):
        table.add_column(col, justify="right")
    for t, rows in frame[frame["rank"] == 1].groupby("test_index"):
        best = {r.kind: r for r in rows.itertuples()}
        table.add_row(
            str(t),
            f"#{best['helpful'].train_index}",
            f"{best['helpful'].score:.3g}",
            f"#{best['harmful'].train_index}",
            f"{best['harmful'].score:.3g}",
        )
    out.print(table)
    out.print(
        f"{run.info['n_train']} training samples ({run.info['n_flipped']} flipped); flipped among "
        f"the shown helpful {run.info['flipped_among_helpful']:.0%}, harmful "
        f"{run.info['flipped_among_harmful']:.0%}. Report: {shown(report)}"
    )
    sim = run.info["simulatability"]
    out.print(
        f"Simulatability (label vote of the {sim['helpful']['k']} shown samples reproduces the "
        f"prediction, {sim['helpful']['n']} points, 95% interval): "
        + ", ".join(
            f"{kind} {v['accuracy']:.0%} [{v['low']:.0%}, {v['high']:.0%}]"
            for kind, v in sim.items()
        )
    )


if __name__ == "__main__":
    app()
