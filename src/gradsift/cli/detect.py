"""``gradsift detect``: score every row of a table, or of your own model's data set (OGA)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from gradsift.cli.app import (
    app,
    emit_json,
    fail,
    out,
    split_names,
)


@app.command()
def detect(
    data: Path = typer.Argument(
        None,
        help="CSV (numeric feature columns + a label column) or NPZ (arrays X, y). Not needed with --model.",
    ),
    label_column: str = typer.Option("label", help="CSV: the label column."),
    x_key: str = typer.Option("X", help="NPZ: the feature array's key."),
    y_key: str = typer.Option("y", help="NPZ: the label array's key."),
    classifier: str = typer.Option("mlp", help="Classifier trained on the table: logreg or mlp."),
    hidden: int = typer.Option(128, help="MLP hidden width."),
    epochs: int = typer.Option(
        50, help="Maximum epochs; the early-stopping epoch is chosen on a validation split."
    ),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    model: str = typer.Option(
        None,
        "--model",
        help="Your own trained model and data: 'package.module:factory' or 'file.py:factory' returning (model, dataset[, task]).",
    ),
    tracked: str | None = typer.Option(
        None,
        help="With --model: tracked parameters: last_linear, all, lora, or comma-separated module names (default: the task's own).",
    ),
    detectors: str = typer.Option(
        "l2,l1,iforest,knn,lof,ecod,loss",
        help="Comma-separated detectors; the first one ranks the summary.",
    ),
    budget: float = typer.Option(0.1, help="Flag this fraction (< 1) or count (>= 1) of rows."),
    checkpoint: str = typer.Option("best", help="best (early stopping), final, or ensemble."),
    seed: int = typer.Option(0, help="Seed for splits, training and detectors."),
    output: Path = typer.Option(
        Path("gradsift-scores.csv"), "--out", help="Where to write per-row scores, ranks and flags."
    ),
    top: int = typer.Option(10, help="Rows to show in the summary."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    report: Path | None = typer.Option(
        None, "--report", help="Also write a self-contained HTML report here."
    ),
) -> None:
    """Score every training row of your data; the highest scores are the likeliest mislabeled."""
    from gradsift.config import parse_budget
    from gradsift.detect.oga import OGAConfig
    from gradsift.experiments.detect_run import detect_file, detect_user_model
    from gradsift.experiments.training import TrainConfig
    from gradsift.task import parse_tracked

    try:
        config = OGAConfig(
            detectors=split_names(detectors),
            budget=parse_budget(budget),
            checkpoint=checkpoint,
            seed=seed,
        )
        if model:
            tracked_spec = parse_tracked(tracked) if tracked else None
            run = detect_user_model(model, config, tracked_spec)
        elif data is not None:
            train = TrainConfig(epochs=epochs, lr=lr, seed=seed)
            run = detect_file(data, label_column, x_key, y_key, classifier, hidden, train, config)
        else:
            fail("give a data file (CSV/NPZ) or --model package.module:factory")
    except ValueError as err:
        fail(str(err))
    run.scores.to_csv(output)
    if report is not None:
        from gradsift.report.pages import detect_report

        detect_report(run).save(report)
    names = run.detectors
    ranked = run.most_suspicious(top)
    flagged = run.flagged()
    if as_json:
        emit_json(
            {
                **run.info,
                "detectors": names,
                "flagged": flagged,
                "scores_csv": str(output),
                "top": ranked.reset_index().to_dict(orient="records"),
            }
        )
        return
    primary = names[0]
    out.print(
        f"[bold]{run.info['n']}[/] rows scored; flagged per detector at budget {config.budget}: {flagged}"
    )
    table = Table(title=f"Most suspicious rows by {primary} (higher score = more suspicious)")
    for col in ("row", "label", "predicted", "score", *(f"{n} rank" for n in names[1:])):
        table.add_column(col, justify="right")
    for index, row in ranked.iterrows():
        ranks = [str(int(row[f"{n}_rank"])) for n in names[1:]]
        table.add_row(
            str(index),
            str(row.get("label", "")),
            str(row.get("predicted", "")),
            f"{row[f'{primary}_score']:.4g}",
            *ranks,
        )
    out.print(table)
    out.print(f"per-row scores, ranks and flags: [bold]{output}[/]")
    if report is not None:
        out.print(f"report: [bold]{report}[/]")
