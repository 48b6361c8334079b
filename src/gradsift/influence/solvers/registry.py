"""Solvers by name: :data:`SOLVERS` and :func:`make_solver`."""

from __future__ import annotations

from typing import Any

from gradsift.errors import GradsiftError
from gradsift.influence.solvers.base import InverseHVP
from gradsift.influence.solvers.cg import CGSolver
from gradsift.influence.solvers.datainf import DataInfSolver
from gradsift.influence.solvers.exact import ExactSolver
from gradsift.influence.solvers.identity import IdentitySolver
from gradsift.influence.solvers.lissa import LiSSASolver

__all__ = ["SOLVERS", "make_solver"]

#: Solver classes by name (``kfac`` and ``ekfac`` are added by
#: :mod:`gradsift.influence.kfac.solver`, imported with :mod:`gradsift.influence`).
SOLVERS: dict[str, type[InverseHVP]] = {
    "identity": IdentitySolver,
    "exact": ExactSolver,
    "cg": CGSolver,
    "lissa": LiSSASolver,
    "datainf": DataInfSolver,
}


def make_solver(name: str, **kwargs: Any) -> InverseHVP:
    """A solver by name (``identity``, ``exact``, ``cg``, ``lissa``, ``datainf``); keyword
    arguments go to its constructor."""
    key = name.lower().removeprefix("if-")
    if key not in SOLVERS:
        raise GradsiftError(f"unknown solver {name!r}; available: {', '.join(SOLVERS)}")
    return SOLVERS[key](**kwargs)
