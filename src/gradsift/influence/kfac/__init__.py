"""K-FAC and EK-FAC curvature over the tracked ``nn.Linear`` / ``nn.Conv2d`` layers.

- :mod:`.likelihood`: output-space Hessians, their square roots and sampled labels
  (softmax cross-entropy, BCE, half squared error).
- :mod:`.statistics`: per-batch augmented inputs ``ã`` and output gradients ``δ``
  (``fisher="auto"``: the exact Fisher for ≤ 16 output columns, else sampled; or empirical).
- :mod:`.factors`: :func:`fit_kfac_factors` — streamed ``A``, ``S``, eigenbases, EK-FAC
  eigenvalue correction; checkpointed, resumable, all-reduced under torchrun.
- :mod:`.storage`: the factor directory (manifest with the model fingerprint).
- :mod:`.operator`: :class:`KFACOperator`, a
  :class:`~gradsift.influence.curvature.CurvatureOperator` with an exact damped inverse.
- :mod:`.solver`: :class:`KFACSolver` / :class:`EKFACSolver` (``make_solver("kfac")``,
  ``make_solver("ekfac")``).
"""

from gradsift.influence.kfac.factors import KFACFactors, LayerFactors, fit_kfac_factors
from gradsift.influence.kfac.operator import KFACOperator
from gradsift.influence.kfac.solver import EKFACSolver, KFACSolver

__all__ = [
    "EKFACSolver",
    "KFACFactors",
    "KFACOperator",
    "KFACSolver",
    "LayerFactors",
    "fit_kfac_factors",
]
