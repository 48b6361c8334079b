"""Influence functions: curvature operators, inverse-HVP solvers, scores, FastIF, explanations.

- :mod:`.curvature`: the :class:`CurvatureOperator` interface (``C = (1/n) Σ C_i +
  weight_decay·I`` over the tracked parameters; products on ``[m, D]`` rows, ``dense``,
  ``top_eigenvalue``, block-diagonal restriction) and :class:`CurvatureBase`, which
  implements it from per-part products.
- :mod:`.hessian`: :class:`HessianOperator` (the training-loss Hessian, products via
  ``torch.func``); :mod:`.fisher`: :class:`GradientFisherOperator` (the empirical Fisher
  of stored gradients); :mod:`.ggn`: :class:`GGNOperator` (the generalised Gauss–Newton
  ``(1/n) Σ J_iᵀ H_out J_i``); :mod:`.kfac`: :class:`KFACOperator` (K-FAC / EK-FAC) and
  :class:`KFACSolver` / :class:`EKFACSolver`, its exact damped inverse.
- :mod:`.solvers`: :class:`InverseHVP` operators ``solve(V [m, D]) → (C + λI)⁻¹ V`` on any
  curvature operator — identity, exact, CG, LiSSA, DataInf (and ``kfac`` / ``ekfac``,
  registered by :mod:`.kfac`).
- :mod:`.scores`: :class:`InfluenceScorer` — pairwise scores, streamed top-k (helpful and
  harmful) and self-influence for ``dot``, ``cosine``, ``tracin``, ``if-exact``, ``if-cg``,
  ``if-lissa``, ``datainf``. Positive = helpful.
- :mod:`.fastif`: :class:`FastIF` (influence on nearest-neighbour candidates);
  :mod:`.neighbors`: the nearest-neighbour indexes; :mod:`.explain`:
  :func:`~gradsift.influence.explain.explain` (top helpful / harmful training samples and
  the train × test heatmap).

FastIF, the index and explanation names load on first use (they import faiss and pandas).
The self-influence detectors built on these solvers live in
:mod:`gradsift.detect.self_influence`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradsift.influence.curvature import CurvatureBase, CurvatureOperator
from gradsift.influence.fisher import GradientFisherOperator
from gradsift.influence.ggn import GGNOperator
from gradsift.influence.hessian import BatchSource, HessianOperator
from gradsift.influence.kfac import EKFACSolver, KFACOperator, KFACSolver, fit_kfac_factors
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

#: Names loaded on first access, and their modules.
_LAZY: dict[str, str] = {
    "FastIF": "gradsift.influence.fastif",
    "FastIFConfig": "gradsift.influence.fastif",
    "FastIFResult": "gradsift.influence.fastif",
    "FastIFComparison": "gradsift.influence.fastif",
    "compare_with_full": "gradsift.influence.fastif",
    "full_influence": "gradsift.influence.fastif",
    "IndexConfig": "gradsift.influence.neighbors",
    "NeighborIndex": "gradsift.influence.neighbors",
    "build_index": "gradsift.influence.neighbors",
    "recall_at_k": "gradsift.influence.neighbors",
    "Explanations": "gradsift.influence.explain",
    "add_explanations": "gradsift.influence.explain",
}

__all__ = [
    "METHODS",
    "SOLVERS",
    "BatchSource",
    "CGSolver",
    "ConvergenceWarning",
    "CurvatureBase",
    "CurvatureOperator",
    "DataInfSolver",
    "EKFACSolver",
    "ExactSolver",
    "GGNOperator",
    "GradientFisherOperator",
    "HessianOperator",
    "IdentitySolver",
    "InfluenceMethod",
    "InfluenceScorer",
    "InverseHVP",
    "KFACOperator",
    "KFACSolver",
    "LiSSASolver",
    "SolverDiagnostics",
    "TopKInfluence",
    "fit_kfac_factors",
    "make_solver",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradsift.influence' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names resolve lazily
    from gradsift.influence.explain import Explanations, add_explanations  # noqa: F401
    from gradsift.influence.fastif import (  # noqa: F401
        FastIF,
        FastIFComparison,
        FastIFConfig,
        FastIFResult,
        compare_with_full,
        full_influence,
    )
    from gradsift.influence.neighbors import (  # noqa: F401
        IndexConfig,
        NeighborIndex,
        build_index,
        recall_at_k,
    )
