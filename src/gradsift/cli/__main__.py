"""``python -m gradsift.cli`` runs the command-line app."""

from gradsift.cli import app

app()
