"""Influence functions: Hessian-free scores and inverse-Hessian–vector-product solvers.

- :mod:`.hessian`: :class:`HessianOperator` (``H = (1/n) Σ ∇²ℓ_i + weight_decay·I`` over the
  tracked parameters, products via ``torch.func``; power iteration; block-diagonal mode).
- :mod:`.solvers`: :class:`InverseHVP` operators ``solve(V [m, D]) → (H + λI)⁻¹ V`` —
  identity, exact, CG, LiSSA, DataInf.
- :mod:`.scores`: :class:`InfluenceScorer` — pairwise scores, streamed top-k (helpful and
  harmful) and self-influence for ``dot``, ``cosine``, ``tracin``, ``if-exact``, ``if-cg``,
  ``if-lissa``, ``datainf``. Positive = helpful.

Importing this package also registers the self-influence detectors
(:mod:`gradsift.detect.self_influence`: ``self-dot``, ``self-datainf``, ``self-if-exact``,
``self-if-cg``, ``self-if-lissa``, ``self-tracin``).
"""

from gradsift.influence.hessian import BatchSource, HessianOperator
from gradsift.influence.scores import METHODS, InfluenceMethod, InfluenceScorer, TopKInfluence
from gradsift.influence.solvers import (
    SOLVERS,
    CGSolver,
    ConvergenceWarning,
    DataInfSolver,
    ExactSolver,
    IdentitySolver,
    InverseHVP,
    LiSSASolver,
    SolverDiagnostics,
    make_solver,
)

__all__ = [
    "METHODS",
    "SOLVERS",
    "BatchSource",
    "CGSolver",
    "ConvergenceWarning",
    "DataInfSolver",
    "ExactSolver",
    "HessianOperator",
    "IdentitySolver",
    "InfluenceMethod",
    "InfluenceScorer",
    "InverseHVP",
    "LiSSASolver",
    "SolverDiagnostics",
    "TopKInfluence",
    "make_solver",
]
