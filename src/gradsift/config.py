"""Defaults shared across gradsift, each stated once.

Every knob of a component lives in that component's typed dataclass (``ProjectionConfig``,
``ExtractConfig``, ``OGAConfig``, ``FastIFConfig``, ``IndexConfig``, ``TrainConfig``,
``TrimConfig``); a default that several of them share is defined here and imported, never
repeated as a literal.
"""

from __future__ import annotations

#: λ in ``(H + λI)⁻¹``: the damping every inverse-Hessian solver adds by default.
DEFAULT_DAMPING: float = 1e-3

#: The detectors OGA runs when none are named (``gradsift detect``, ``OGAConfig``).
DEFAULT_DETECTORS: tuple[str, ...] = ("l1", "l2", "iforest", "ecod", "knn", "lof", "loss", "random")


def parse_budget(value: float) -> float | int:
    """A flagging budget from its command-line number (the one parser for ``--budget``).

    Below 1 it is a fraction of the rows (float); from 1 on a count of rows (int, truncated).
    See :func:`gradsift.detect.result.budget_to_count`.
    """
    return int(value) if value >= 1 else float(value)
