"""gradsift: training-data attribution and cleaning for PyTorch.

The public nouns, importable from ``gradsift`` directly::

    from gradsift import ClassificationTask, CheckpointRecorder, OGAConfig, OutlierGradientAnalysis

- *Which training samples hurt my model?* :class:`OutlierGradientAnalysis` (OGA): per-sample
  gradients → an outlier detector from the registry (:func:`get_detector`) →
  :class:`DetectionResult` (score, rank, ``is_issue``; higher score = more suspicious).
- *Which training samples are behind this prediction?* :class:`InfluenceScorer` (dot, cosine,
  TracIn, influence functions with an inverse-HVP solver from :func:`make_solver`) and
  :class:`FastIF`; positive influence = helpful.
- Shared parts: :class:`Task` (model, loss, tracked parameters), :class:`GradientComputer`,
  :class:`Projector`, :class:`GradientStore` (on-disk, resumable), :func:`extract`.

Names resolve lazily (PEP 562), so ``import gradsift`` stays cheap and a command-line
``--help`` does not import scikit-learn or faiss. ``docs/ARCHITECTURE.md`` has the module map.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name → module that defines it
_EXPORTS: dict[str, str] = {
    # errors and defaults
    "GradsiftError": "gradsift.errors",
    "GradientError": "gradsift.errors",
    "StoreError": "gradsift.errors",
    "DEFAULT_DAMPING": "gradsift.config",
    # the task and checkpoints
    "Task": "gradsift.task",
    "ClassificationTask": "gradsift.task",
    "BinaryClassificationTask": "gradsift.task",
    "Checkpoint": "gradsift.checkpoints",
    "CheckpointRecorder": "gradsift.checkpoints",
    # gradients, projection, store
    "GradientComputer": "gradsift.grads.computer",
    "ProjectionConfig": "gradsift.grads.projection",
    "Projector": "gradsift.grads.projection",
    "ExtractConfig": "gradsift.grads.extract",
    "extract": "gradsift.grads.extract",
    "compute_gradients": "gradsift.grads.extract",
    "GradientStore": "gradsift.store.gradient_store",
    # detection
    "Detector": "gradsift.detect.base",
    "DetectionContext": "gradsift.detect.context",
    "get_detector": "gradsift.detect.registry",
    "available_detectors": "gradsift.detect.registry",
    "OGAConfig": "gradsift.detect.oga",
    "OGAResult": "gradsift.detect.oga",
    "OutlierGradientAnalysis": "gradsift.detect.oga",
    "DetectionResult": "gradsift.detect.result",
    "detection_metrics": "gradsift.detect.metrics",
    # influence
    "InfluenceScorer": "gradsift.influence.scores",
    "HessianOperator": "gradsift.influence.hessian",
    "make_solver": "gradsift.influence.solvers",
    "FastIF": "gradsift.influence.fastif",
    "FastIFConfig": "gradsift.influence.fastif",
    "explain": "gradsift.influence.explain",
    # reports
    "Report": "gradsift.report.html",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradsift' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names resolve lazily
    from gradsift.checkpoints import Checkpoint, CheckpointRecorder  # noqa: F401
    from gradsift.config import DEFAULT_DAMPING  # noqa: F401
    from gradsift.detect.base import Detector  # noqa: F401
    from gradsift.detect.context import DetectionContext  # noqa: F401
    from gradsift.detect.metrics import detection_metrics  # noqa: F401
    from gradsift.detect.oga import OGAConfig, OGAResult, OutlierGradientAnalysis  # noqa: F401
    from gradsift.detect.registry import available_detectors, get_detector  # noqa: F401
    from gradsift.detect.result import DetectionResult  # noqa: F401
    from gradsift.errors import GradientError, GradsiftError, StoreError  # noqa: F401
    from gradsift.grads.computer import GradientComputer  # noqa: F401
    from gradsift.grads.extract import ExtractConfig, compute_gradients, extract  # noqa: F401
    from gradsift.grads.projection import ProjectionConfig, Projector  # noqa: F401
    from gradsift.influence.explain import explain  # noqa: F401
    from gradsift.influence.fastif import FastIF, FastIFConfig  # noqa: F401
    from gradsift.influence.hessian import HessianOperator  # noqa: F401
    from gradsift.influence.scores import InfluenceScorer  # noqa: F401
    from gradsift.influence.solvers import make_solver  # noqa: F401
    from gradsift.report.html import Report  # noqa: F401
    from gradsift.store.gradient_store import GradientStore  # noqa: F401
    from gradsift.task import BinaryClassificationTask, ClassificationTask, Task  # noqa: F401
