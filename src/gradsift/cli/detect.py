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
    tracked: str = typer.Option(
        "last_linear",
        help="With --model: tracked parameters: last_linear, all, or comma-separated module names.",
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
    from gradsift.detect.oga import OGAConfig

    names = split_names(detectors)
    budget_value: float | int = int(budget) if budget >= 1 else budget
    config = OGAConfig(detectors=names, budget=budget_value, checkpoint=checkpoint, seed=seed)
    try:
        if model:
            frame, info = _detect_user_model(model, tracked, config)
        elif data is not None:
            frame, info = _detect_table(
                data, label_column, x_key, y_key, classifier, hidden, epochs, lr, seed, config
            )
        else:
            fail("give a data file (CSV/NPZ) or --model package.module:factory")
    except ValueError as err:
        fail(str(err))
    frame.to_csv(output)
    if report is not None:
        from gradsift.report.sections import detect_report_for_cli

        detect_report_for_cli(
            frame,
            names,
            info,
            data if not model else None,
            label_column,
            x_key,
            y_key,
            budget_value,
        ).save(report)
    primary = names[0]
    ranked = frame.sort_values(f"{primary}_rank").head(top)
    flagged = {n: int(frame[f"{n}_is_issue"].sum()) for n in names}
    summary = {
        **info,
        "detectors": names,
        "flagged": flagged,
        "scores_csv": str(output),
        "top": ranked.reset_index().to_dict(orient="records"),
    }
    if as_json:
        emit_json(summary)
        return
    out.print(
        f"[bold]{info['n']}[/] rows scored; flagged per detector at budget {budget_value}: {flagged}"
    )
    table = Table(title=f"Most suspicious rows by {primary} (higher score = more suspicious)")
    for col in ("row", "label", "predicted", "score", *(f"{n} rank" for n in names[1:])):
        table.add_column(col, justify="right")
    for index, row in ranked.iterrows():
        ranks = [str(int(row[f"{n}_rank"])) for n in names[1:]]
        table.add_row(
            str(index),
            str(row["label"]),
            str(row.get("predicted", "")),
            f"{row[f'{primary}_score']:.4g}",
            *ranks,
        )
    out.print(table)
    out.print(f"per-row scores, ranks and flags: [bold]{output}[/]")
    if report is not None:
        out.print(f"report: [bold]{report}[/]")


def _detect_table(data, label_column, x_key, y_key, classifier, hidden, epochs, lr, seed, config):
    from gradsift.experiments.tabular import detect_table, read_table
    from gradsift.experiments.training import TrainConfig

    if classifier not in ("logreg", "mlp"):
        fail(f"--classifier must be logreg or mlp, got {classifier!r}")
    table = read_table(data, label_column, x_key, y_key)
    result = detect_table(
        table, classifier, TrainConfig(epochs=epochs, lr=lr, seed=seed), config, hidden=(hidden,)
    )
    frame = result.oga.scores_frame()
    names = table.class_names
    frame.insert(0, "label", [names[v] for v in table.y] if names else table.y)
    frame.insert(
        1, "predicted", [names[v] for v in result.predicted] if names else result.predicted
    )
    return frame, {**result.info, "source": str(data)}


def _detect_user_model(spec, tracked, config):
    from gradsift.detect.oga import OutlierGradientAnalysis
    from gradsift.factory import load_factory

    setup = load_factory(spec)
    if tracked not in ("last_linear", "all", "lora"):
        setup.task.tracked = split_names(tracked)
    elif tracked != "last_linear":
        setup.task.tracked = tracked
    setup.model.eval()
    result = OutlierGradientAnalysis(setup.model, setup.task, config).run(setup.dataset)
    frame = result.scores_frame()
    return frame, {"n": len(frame), "source": spec, "checkpoint": "the model as given"}
