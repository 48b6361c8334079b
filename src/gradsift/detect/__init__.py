"""Outlier detectors in per-sample gradient space (higher score = more suspicious).

Registered names: ``l1``, ``l2``, ``loss``, ``random``, ``iforest``, ``ecod``, ``knn``,
``lof``; any other pyod model as ``"pyod:<model>"`` (e.g. ``"pyod:copod"``)::

    from gradsift.detect import get_detector
    scores = get_detector("iforest", seed=0).fit_score(G)   # float64 [n]

Self-influence detectors (``self-dot``, ``self-datainf``, ``self-if-exact``, ``self-if-cg``,
``self-if-lissa``, ``self-tracin``) are ordinary detectors that read the model, task and
training data from a :class:`DetectionContext`::

    ctx = DetectionContext(G, losses, model=model, task=task, data=(X, y))
    scores = get_detector("self-if-cg", damping=1e-3).fit_score(context=ctx)

Checkpoint ensembles (TracIn-style learning-rate weighting): :func:`ensemble_scores`.
"""

from . import self_influence, training_dynamics  # noqa: F401  (register self-*, aum, forgetting)
from .base import Detector, NotFittedError, check_gradients, check_losses
from .context import DetectionContext
from .ensemble import ensemble_scores
from .fitted import (
    ECODDetector,
    IsolationForestDetector,
    KNNDetector,
    LOFDetector,
    ProjectedDetector,
    PyODDetector,
    resolve_pyod_model,
)
from .norms import L1Norm, L2Norm, LossDetector, RandomDetector
from .registry import available_detectors, get_detector, register

__all__ = [
    "DetectionContext",
    "Detector",
    "ECODDetector",
    "IsolationForestDetector",
    "KNNDetector",
    "L1Norm",
    "L2Norm",
    "LOFDetector",
    "LossDetector",
    "NotFittedError",
    "ProjectedDetector",
    "PyODDetector",
    "RandomDetector",
    "available_detectors",
    "check_gradients",
    "check_losses",
    "ensemble_scores",
    "get_detector",
    "register",
    "resolve_pyod_model",
]
