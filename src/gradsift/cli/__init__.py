"""The ``gradsift`` command line (typer + rich): one module per command.

Every command parses its options, calls the library (everything it does is available from
Python), and renders tables, JSON (``--json``) or an HTML report (``--report``).
"""

from gradsift.cli import augment, demo, detect, explain, extract, score, trim, validate  # noqa: F401  (registers)
from gradsift.cli.app import app

__all__ = ["app"]
