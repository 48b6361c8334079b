"""The tail every benchmark shares: print its markdown, and save it where ``--out`` says."""

from __future__ import annotations

from pathlib import Path


def emit(lines: list[str], out: str | None) -> None:
    """Print ``lines`` joined as one markdown text; also write it to ``out`` (parents
    created) when given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
