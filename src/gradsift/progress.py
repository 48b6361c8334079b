"""Progress bars for long work (rich), shared by every module.

Bars are shown on a terminal and hidden when ``GRADSIFT_PROGRESS=0`` or when
stderr is not a TTY and ``GRADSIFT_PROGRESS`` is not ``1``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def progress_enabled() -> bool:
    flag = os.environ.get("GRADSIFT_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def track(iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar (elapsed, remaining, count) on stderr."""
    if not progress_enabled():
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    columns = (
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task_id = bar.add_task(description, total=total)
        for item in iterable:
            yield item
            bar.advance(task_id)
