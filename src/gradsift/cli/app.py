"""The shared pieces of the command line: the typer app, the consoles, JSON output, tables, errors.

Each command lives in its own module of :mod:`gradsift.cli`; a command parses its options,
calls the library, and renders the result. No command holds logic of its own.

Conventions every command keeps:

* Bad input is one sentence on stderr (``error: ...``, exit code 2), never a traceback;
  every user string is printed escaped (a path like ``wine[red].csv`` prints as given).
* Help texts are plain text (``rich_markup_mode=None``): ``[m, D]`` stays visible and
  flags such as ``--json`` show as flags.
* Output files (``--out``, ``--report``, ``--csv``) are checked before any work starts
  (their folder must exist) and written atomically; an existing file is never replaced
  unless ``--overwrite`` is given, so a failed or refused run leaves no partial output.
* Ranks shown to people (tables, CSV, JSON, reports) are 1-based: rank 1 = most
  suspicious.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="gradsift: find training samples that hurt your model (Outlier Gradient Analysis) "
    "and the samples behind a prediction (influence).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # help is plain text: brackets in it are not markup
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
    """Print ``error: <message>`` as one line on stderr (escaped, never wrapped); exit 2."""
    text = " ".join(str(message).split())
    console.print(f"[bold red]error:[/] {escape(text)}", soft_wrap=True)
    raise typer.Exit(2)


def notice(message: str) -> None:
    """One escaped line on stderr that does not stop the command (e.g. a dropped column)."""
    console.print(f"[yellow]note:[/] {escape(message)}", soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's bad-input errors (:class:`~gradsift.errors.GradsiftError` is a
    ``ValueError``) and file-system errors into :func:`fail`'s one line."""
    try:
        yield
    except (ValueError, OSError) as err:
        fail(str(err) or type(err).__name__)


def check_output(path: Path | None, option: str, overwrite: bool) -> None:
    """Refuse an output path before any work: its folder must exist, it must not be a
    folder, and an existing file is replaced only with ``--overwrite``."""
    if path is None:
        return
    if path.is_dir():
        fail(f"{option} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        fail(f"{option} {path}: the folder {path.parent} does not exist; create it first")
    if path.exists() and not overwrite:
        fail(f"{option} {path} exists; pass --overwrite to replace it or choose another name")


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a temporary file next to ``path``, then rename it to ``path``
    (a crash or an error leaves no partial file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def shown(value: Any) -> str:
    """``value`` as text for rich output (markup escaped)."""
    return escape(str(value))


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
            escape(str(row["checkpoint"])),
            ",".join(map(str, row["epochs"])),
            escape(str(row["detector"])),
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
