"""``gradsift detect``: score every row of a table, or of your own model's data set (OGA)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from gradsift.cli.app import (
    app,
    check_output,
    emit_json,
    fail,
    notice,
    out,
    shown,
    split_names,
    user_errors,
    write_atomically,
)

#: Default detectors of ``detect`` on a table; ``aum`` reads the checkpoints of its
#: training run, so a user model (``--model``) gets the others.
TABLE_DETECTORS = "l2,aum,l1,iforest,knn,lof,ecod,loss"


def default_detectors(model: str | None) -> str:
    """The detectors ``detect`` runs when ``--detectors`` is not given."""
    return TABLE_DETECTORS.replace("aum,", "") if model else TABLE_DETECTORS


def parse_checkpoint(value: str) -> str | list[int]:
    """``best``, ``final``, ``ensemble`` or comma-separated epochs (``"3,7"``)."""
    if value in ("best", "final", "ensemble"):
        return value
    try:
        epochs = [int(e) for e in split_names(value)]
    except ValueError:
        epochs = []
    if not epochs:
        fail(f"--checkpoint must be best, final, ensemble or comma-separated epochs, got {value!r}")
    return epochs


@app.command()
def detect(
    data: Path = typer.Argument(
        None,
        help="CSV/TSV (numeric feature columns + a label column) or NPZ (arrays X, y). Not needed with --model.",
    ),
    label_column: str = typer.Option("label", help="CSV: the label column."),
    id_column: str | None = typer.Option(
        None,
        help="CSV/NPZ: a column of row IDs (text or numbers): not a feature, kept in the scores CSV, report and JSON.",
    ),
    sep: str | None = typer.Option(
        None, help="CSV column separator, e.g. ';' or 'tab' (default: tab for .tsv, else ',')."
    ),
    x_key: str = typer.Option("X", help="NPZ: the feature array's key."),
    y_key: str = typer.Option("y", help="NPZ: the label array's key."),
    classifier: str = typer.Option("mlp", help="Classifier trained on the table: logreg or mlp."),
    hidden: int = typer.Option(128, help="MLP hidden width."),
    epochs: int = typer.Option(
        50,
        help="Maximum epochs; the epochs to take gradients at are chosen on a validation "
        "split, then the model is retrained on all rows up to the last of them.",
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
    detectors: str | None = typer.Option(
        None,
        help="Comma-separated detectors; the first one ranks the summary (default: "
        f"{TABLE_DETECTORS} for a table; without aum, which needs the training run, for --model).",
    ),
    budget: float = typer.Option(0.1, help="Flag this fraction (< 1) or count (>= 1) of rows."),
    checkpoint: str = typer.Option(
        "best",
        help="best: the epochs around the lowest (noisy) validation loss, scores summed; "
        "final: the last of those epochs; ensemble; or comma-separated epochs.",
    ),
    seed: int = typer.Option(0, help="Seed for splits, training and detectors."),
    output: Path = typer.Option(
        Path("gradsift-scores.csv"),
        "--out",
        help="Where to write per-row scores, 1-based ranks (1 = most suspicious) and flags.",
    ),
    top: int = typer.Option(10, help="Rows to show in the summary."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    report: Path | None = typer.Option(
        None, "--report", help="Also write a self-contained HTML report here."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace existing --out / --report files."
    ),
) -> None:
    """Score every training row of your data; the highest scores are the likeliest mislabeled."""
    from gradsift.config import parse_budget
    from gradsift.detect.oga import OGAConfig
    from gradsift.experiments.detect_run import detect_file, detect_user_model
    from gradsift.experiments.training import TrainConfig
    from gradsift.task import parse_tracked

    if not model and data is None:
        fail("give a data file (CSV/TSV/NPZ) or --model package.module:factory")
    check_output(output, "--out", overwrite)
    check_output(report, "--report", overwrite)
    if report is not None and report.resolve() == output.resolve():
        fail("--out and --report name the same file")
    with user_errors():
        config = OGAConfig(
            detectors=split_names(default_detectors(model) if detectors is None else detectors),
            budget=parse_budget(budget),
            checkpoint=parse_checkpoint(checkpoint),  # type: ignore[arg-type]
            seed=seed,
        )
        if model:
            tracked_spec = parse_tracked(tracked) if tracked else None
            run = detect_user_model(model, config, tracked_spec)
        else:
            train = TrainConfig(epochs=epochs, lr=lr, seed=seed)
            run = detect_file(
                data,
                label_column,
                x_key,
                y_key,
                classifier,  # type: ignore[arg-type]
                hidden,
                train,
                config,
                id_column=id_column,
                sep=sep,
            )
        page = None
        if report is not None:
            from gradsift.report.pages import detect_report

            page = detect_report(run)
        write_atomically(output, run.scores.to_csv)
        if page is not None:
            write_atomically(report, page.save)
    for line in run.info.get("notices", []):
        notice(line)
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
                "report": None if report is None else str(report),
                "top": ranked.reset_index().to_dict(orient="records"),
            }
        )
        return
    primary = names[0]
    out.print(
        f"[bold]{run.info['n']}[/] rows scored; flagged per detector at budget "
        f"{config.budget}: {shown(flagged)}"
    )
    if "checkpoint" in run.info:
        out.print(f"checkpoint: {shown(run.info['checkpoint'])}")
    id_col = run.info.get("id_column")
    table = Table(
        title=f"Most suspicious rows by {shown(primary)} (higher score = more suspicious; "
        "ranks 1-based)"
    )
    columns = ["row", *([shown(id_col)] if id_col else []), "label", "predicted", "score"]
    for col in (*columns, *(f"{shown(n)} rank" for n in names[1:])):
        table.add_column(col, justify="right")
    for index, row in ranked.iterrows():
        ranks = [str(int(row[f"{n}_rank"])) for n in names[1:]]
        table.add_row(
            str(index),
            *([shown(row[id_col])] if id_col else []),
            shown(row.get("label", "")),
            shown(row.get("predicted", "")),
            f"{row[f'{primary}_score']:.4g}",
            *ranks,
        )
    out.print(table)
    out.print(f"per-row scores, ranks and flags: [bold]{shown(output)}[/]")
    if report is not None:
        out.print(f"report: [bold]{shown(report)}[/]")
