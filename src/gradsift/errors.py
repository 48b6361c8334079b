"""Exceptions that gradsift raises for bad input; each message says what to do."""

from __future__ import annotations


class GradsiftError(ValueError):
    """Base class: bad input or unsupported settings."""


class GradientError(GradsiftError):
    """Bad input or unsupported model for per-sample gradients (the message says why).

    ``positions`` holds the offending sample indices when the error is about samples.
    """

    def __init__(self, message: str, positions: list[int] | None = None) -> None:
        if positions is not None:
            message = f"{message} at sample indices {positions[:10]}" + (
                f" (and {len(positions) - 10} more)" if len(positions) > 10 else ""
            )
        super().__init__(message)
        self.base_message = message.split(" at sample indices")[0]
        self.positions = positions


class StoreError(GradsiftError):
    """A gradient store is missing, partial, corrupted, written by another process right
    now, or was made with other settings (the message says what to do)."""
