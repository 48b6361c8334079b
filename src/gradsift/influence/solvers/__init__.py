"""Inverse-Hessian–vector products as small composable operators.

Stable interface (FastIF and :mod:`gradsift.influence.scores` build on it)::

    solver = CGSolver(damping=DEFAULT_DAMPING).fit(model, task, (X_train, y_train), weight_decay=wd)
    S = solver.solve(V)      # V: torch.Tensor [m, D] → S [m, D], row j = (H + λI)⁻¹ v_j
    solver.diagnostics       # SolverDiagnostics of the last solve()

- ``D`` is the number of tracked scalars, rows in the layout of
  :class:`~gradsift.grads.computer.GradientComputer` (``solver.layout``, ``solver.dim``).
- ``H = (1/n) Σ_i ∇²ℓ_i + weight_decay·I`` over the training data given to :meth:`fit`
  (see :mod:`gradsift.influence.hessian`); ``λ = damping`` (for LiSSA the *effective*
  damping ``d·s``). ``solve`` returns a tensor with ``V``'s dtype and device; it computes
  in the tracked parameters' dtype. ``H`` is symmetric, so solving the test gradients
  once and dotting with train gradients gives ``g_tᵀ (H+λI)⁻¹ g_i`` (positive = helpful).
- ``fit_operator(op)`` fits on any :class:`~gradsift.influence.curvature.CurvatureOperator`:
  a :class:`~gradsift.influence.hessian.HessianOperator` (share one between solvers, or
  pass ``block_diagonal=True`` to the operator), a
  :class:`~gradsift.influence.fisher.GradientFisherOperator`, or your own (K-FAC, …).
  ``H`` below is then that operator's matrix.
- ``diagnostics.residual_max`` / ``residual_mean`` are the relative residuals
  ``‖(H+λI)x − v‖ / ‖v‖`` over the rows (None where not computed); iterative solvers warn
  with :class:`ConvergenceWarning` when the residual stays above their tolerance.

Solvers (also by name through :func:`make_solver`):

- ``identity`` :class:`IdentitySolver` — ``H = I``: ``v / (1 + λ)``; influence becomes the
  gradient dot product.
- ``exact`` :class:`ExactSolver` — explicit ``H`` + Cholesky; refuses ``D > max_dim``.
- ``cg`` :class:`CGSolver` — batched conjugate gradient with Hessian–vector products.
- ``lissa`` :class:`LiSSASolver` — the FastIF recursion, scale from power iteration.
  :meth:`LiSSASolver.run_chain` runs one seeded chain, for parallel repetitions.
- ``datainf`` :class:`DataInfSolver` — closed form from per-sample per-layer gradients.

One module per solver (:mod:`.base` holds the interface, :mod:`.registry` the names).
"""

from gradsift.influence.solvers.base import ConvergenceWarning, InverseHVP, SolverDiagnostics
from gradsift.influence.solvers.cg import CGSolver
from gradsift.influence.solvers.datainf import DataInfSolver
from gradsift.influence.solvers.exact import ExactSolver
from gradsift.influence.solvers.identity import IdentitySolver
from gradsift.influence.solvers.lissa import LiSSASolver
from gradsift.influence.solvers.registry import SOLVERS, make_solver

__all__ = [
    "CGSolver",
    "ConvergenceWarning",
    "DataInfSolver",
    "ExactSolver",
    "IdentitySolver",
    "InverseHVP",
    "LiSSASolver",
    "SolverDiagnostics",
    "SOLVERS",
    "make_solver",
]
