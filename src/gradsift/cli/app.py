"""The shared pieces of the command line: the typer app, the consoles, JSON output, tables, errors.

Each command lives in its own module of :mod:`gradsift.cli`; a command parses its options,
calls the library, and renders the result. No command holds logic of its own."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="gradsift: find training samples that hurt your model (Outlier Gradient Analysis) "
    "and the samples behind a prediction (influence).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)
out = Console() if sys.stdout.isatty() else Console(width=120)  # pipes: wide enough for tables

METRIC_COLUMNS = (
    "auroc",
    "average_precision",
    "precision_at_m",
    "recall_at_10pct",
    "recall_at_20pct",
)


@app.callback()
def main() -> None:
    """gradsift: training-data attribution and cleaning for PyTorch."""


def emit_json(payload: Any) -> None:
    print(json.dumps(payload, indent=1, default=json_default))


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def split_names(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def metrics_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("checkpoint", "epochs", "detector", "AUROC", "AP", "P@m", "R@10%", "R@20%", "s"):
        table.add_column(
            col, justify="left" if col in ("checkpoint", "detector", "epochs") else "right"
        )
    best = {}
    for row in rows:
        best[row["checkpoint"]] = max(best.get(row["checkpoint"], 0.0), row["auroc"])
    for row in rows:
        cells = [f"{row[c]:.3f}" for c in METRIC_COLUMNS]
        if row["auroc"] == best[row["checkpoint"]]:
            cells[0] = f"[bold green]{cells[0]}[/]"
        table.add_row(
            row["checkpoint"],
            ",".join(map(str, row["epochs"])),
            row["detector"],
            *cells,
            f"{row['seconds']:.2f}",
        )
    return table


def timings_table(timings: dict[str, float]) -> Table:
    table = Table(title="Time per step")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, seconds in timings.items():
        table.add_row(step, f"{seconds:.2f}")
    return table
