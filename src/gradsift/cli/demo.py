"""``gradsift demo``: OGA on digits with flipped labels, scored against the known flips."""

from __future__ import annotations

from pathlib import Path

import typer

from gradsift.cli.app import (
    app,
    check_output,
    emit_json,
    metrics_table,
    out,
    shown,
    split_names,
    timings_table,
    user_errors,
    write_atomically,
)
from gradsift.config import DEFAULT_DETECTORS


@app.command()
def demo(
    noise: float = typer.Option(
        0.2, help="Fraction of training labels flipped (symmetric, seeded)."
    ),
    seed: int = typer.Option(0, help="Seed for the split, the noise, training and the detectors."),
    epochs: int = typer.Option(
        100, help="Training epochs (enough for the MLP to memorise the noise)."
    ),
    detectors: str = typer.Option(
        ",".join(DEFAULT_DETECTORS),
        help="Comma-separated detector names.",
    ),
    checkpoints: str = typer.Option(
        "best,final,ensemble",
        help="Checkpoint modes to compare: best (early stopping), final, ensemble.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the results as JSON instead of tables."
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Also write a self-contained HTML report here."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --report file."),
) -> None:
    """Digits with flipped labels: train, run OGA with every detector, score against the known flips."""
    from gradsift.experiments.demo import run_demo

    check_output(report, "--report", overwrite)
    with user_errors():
        result = run_demo(
            noise=noise,
            seed=seed,
            epochs=epochs,
            detectors=split_names(detectors),
            modes=split_names(checkpoints),
        )
        if report is not None:
            from gradsift.report.pages import demo_report

            write_atomically(report, demo_report(result).save)
    if as_json:
        emit_json({"info": result.info, "rows": result.rows, "timings": result.timings})
        return
    info = result.info
    out.print(
        f"[bold]digits[/]: {info['n_train']} training samples, {info['n_flipped']} labels flipped; MLP trained "
        f"{info['epochs']} epochs (train accuracy on the noisy labels {info['train_accuracy_on_noisy_labels']:.3f}, "
        f"test {info['test_accuracy']:.3f}); best validation epoch {info['best_epoch']}."
    )
    out.print(
        metrics_table(
            result.rows, "Detection of the flipped labels (higher is better; random ≈ chance)"
        )
    )
    out.print(timings_table(result.timings))
    if report is not None:
        out.print(f"report: [bold]{shown(report)}[/]")
