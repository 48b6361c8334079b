"""Defaults of :class:`~gradsift.influence.scores.InfluenceScorer` that depend on the model
(issue 13): which parameters to track (:func:`choose_tracked`) and damping relative to
the curvature (:data:`RELATIVE_DAMPING` × :func:`mean_eigenvalue`)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from gradsift.errors import GradsiftError
from gradsift.grads.capture import tracked_layers
from gradsift.grads.kronecker import FACTORABLE
from gradsift.influence.curvature import CurvatureOperator
from gradsift.influence.solvers import InverseHVP
from gradsift.task import Task, TrackSpec

__all__ = [
    "AUTO_TRACK_LIMITS",
    "RELATIVE_DAMPING",
    "SOLVER_OF",
    "choose_tracked",
    "mean_eigenvalue",
]

log = logging.getLogger("gradsift")

#: The solver behind each Hessian method of the scorer.
SOLVER_OF = {
    "if-exact": "exact",
    "if-cg": "cg",
    "if-lissa": "lissa",
    "datainf": "datainf",
    "if-kfac": "kfac",
    "if-ekfac": "ekfac",
}
#: ``tracked="auto"``: the largest model (parameter count) tracked in full, per solver.
AUTO_TRACK_LIMITS: dict[str, int] = {
    "exact": 5000,
    "cg": 200_000,
    "lissa": 200_000,
    "datainf": 50_000,
    "kfac": 50_000_000,  # factors per layer: memory grows with layer widths, not with D
    "ekfac": 50_000_000,
}
#: ``damping=None``: ``λ`` as a fraction of the mean eigenvalue ``tr(H)/D``.
RELATIVE_DAMPING: float = 1e-2


def mean_eigenvalue(op: CurvatureOperator, probes: int = 32, seed: int = 0) -> float:
    """``tr(C)/D`` of a curvature operator by Hutchinson's estimator: seeded Rademacher
    probes ``z`` (float64 draw), ``mean zᵀ C z / D``, one batched pass over the data."""
    g = torch.Generator().manual_seed(seed)
    Z = (torch.randint(0, 2, (probes, op.dim), generator=g) * 2 - 1).to(op.device, op.dtype)
    return float((Z * op.matvec(Z)).sum(dim=1).mean()) / op.dim


def choose_tracked(
    model: nn.Module,
    task: Task,
    method: str,
    solver: InverseHVP | None,
    tracked: TrackSpec | str,
) -> tuple[Task, str]:
    """The task to score with and a sentence saying why (``settings()["tracked_choice"]``)."""
    if tracked == "task":
        return task, f"the task's ({task.tracked!r})"
    if tracked != "auto":
        return task.with_tracked(tracked), f"given ({tracked!r})"  # type: ignore[arg-type]
    if method not in SOLVER_OF or solver is not None or task.tracked != "last_linear":
        return task, f"the task's ({task.tracked!r})"
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    limit = AUTO_TRACK_LIMITS[SOLVER_OF[method]]
    if SOLVER_OF[method] in ("kfac", "ekfac") and not _all_factorable(model, task):
        return task, "last_linear: not every parameter is in an nn.Linear/nn.Conv2d (auto)"
    if total <= limit:
        log.info(
            "%s: tracking all %d parameters (at most %d for this solver)", method, total, limit
        )
        return task.with_tracked("all"), f"all: {total} parameters <= {limit} (auto)"
    log.warning(
        "%s: the model has %d parameters (> %d for this solver): tracking only the last "
        "linear layer; pass tracked='all' to override",
        method,
        total,
        limit,
    )
    return task, f"last_linear: {total} parameters > {limit} (auto)"


def _all_factorable(model: nn.Module, task: Task) -> bool:
    """Whether every trainable parameter is a weight/bias of an ``nn.Linear``/``nn.Conv2d``
    (what K-FAC needs to track ``"all"``)."""
    try:
        tracked_layers(
            model, task.with_tracked("all").tracked_parameters(model), FACTORABLE, "K-FAC"
        )
    except GradsiftError:
        return False
    return True
