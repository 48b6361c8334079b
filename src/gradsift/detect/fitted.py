"""Fitted detectors: scikit-learn Isolation Forest and pyod models, with automatic projection.

Automatic sparse random projection (as in the OGA paper): when ``D > project_above``
(default 5000), ``X`` is first mapped by a scikit-learn ``SparseRandomProjection`` to
``n_components = min(D, johnson_lindenstrauss_min_dim(n, eps))`` dimensions (or
``min(D, n_components)`` when given). The projection is seeded, drawn in :meth:`fit`,
reused by :meth:`score`, applied in row blocks, and recorded in :meth:`settings`.

In-sample scores: :meth:`Detector.fit_score` returns the scores of the training rows
as the model sees them while fitting. For pyod models this is ``decision_scores_``
(e.g. KNN excludes the sample itself from its neighbours; ECOD does not count the
sample twice), which differs from ``decision_function`` on the training rows.
:meth:`Detector.score` always uses ``decision_function`` (out-of-sample scoring).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.random_projection import SparseRandomProjection, johnson_lindenstrauss_min_dim

from .base import Detector, iter_row_blocks
from .registry import register, register_prefix

__all__ = [
    "ECODDetector",
    "IsolationForestDetector",
    "KNNDetector",
    "LOFDetector",
    "ProjectedDetector",
    "PyODDetector",
    "resolve_pyod_model",
]

DEFAULT_PROJECT_ABOVE = 5000


def _jsonable(value: Any) -> Any:
    """Best-effort JSON-serialisable copy of a parameter value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


class ProjectedDetector(Detector):
    """Base for fitted detectors: seeded automatic sparse random projection, then a model.

    Args:
        seed: seeds the projection and the model (``random_state``).
        project_above: project when ``D > project_above``; None disables projection.
        eps: Johnson–Lindenstrauss distortion used to pick the dimension.
        n_components: explicit projected dimension (capped at ``D``); overrides ``eps``.
    """

    requires_fit = True

    def __init__(
        self,
        seed: int = 0,
        project_above: int | None = DEFAULT_PROJECT_ABOVE,
        eps: float = 0.1,
        n_components: int | None = None,
    ) -> None:
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if n_components is not None and n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.seed = int(seed)
        self.project_above = project_above
        self.eps = float(eps)
        self.n_components = n_components
        self.projection_: SparseRandomProjection | None = None
        self._projection_info: dict[str, Any] | None = None

    # ------------------------------------------------------------ model hooks

    @abstractmethod
    def _fit_model(self, Z: np.ndarray) -> np.ndarray | None:
        """Fit on (projected) ``Z``; may return its in-sample scores ``[n]`` (else None)."""

    @abstractmethod
    def _score_model(self, Z: np.ndarray) -> np.ndarray:
        """Scores ``[n]`` of (projected) ``Z``, higher = more suspicious."""

    def _model_settings(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------ projection

    def projected_dim(self, n: int, d: int) -> int | None:
        """Dimension X will be projected to for ``n`` samples of dimension ``d`` (None: no projection)."""
        if self.project_above is None or d <= self.project_above:
            return None
        k = self.n_components
        if k is None:
            k = int(johnson_lindenstrauss_min_dim(n_samples=n, eps=self.eps))
        return int(min(d, k))

    def _fit_projection(self, X: np.ndarray) -> None:
        n, d = X.shape
        k = self.projected_dim(n, d)
        if k is None:
            self.projection_, self._projection_info = None, None
            return
        proj = SparseRandomProjection(n_components=k, random_state=self.seed, dense_output=True)
        proj.fit(np.asarray(X[:1]))  # only the shape matters
        self.projection_ = proj
        self._projection_info = {
            "kind": "sparse_random",
            "input_dim": int(d),
            "n_components": int(k),
            "eps": self.eps,
            "density": float(proj.density_),
            "seed": self.seed,
        }

    def _transform(self, X: np.ndarray) -> np.ndarray:
        if self.projection_ is None:
            return np.asarray(X)
        blocks = [self.projection_.transform(b) for _, b in iter_row_blocks(X)]
        return np.concatenate(blocks, axis=0)

    # ------------------------------------------------------------ Detector hooks

    def _fit(self, X: np.ndarray | None, losses: np.ndarray | None) -> None:
        assert X is not None
        self._fit_projection(X)
        self._fit_model(self._transform(X))

    def _fit_score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        assert X is not None
        self._fit_projection(X)
        Z = self._transform(X)
        in_sample = self._fit_model(Z)
        return self._score_model(Z) if in_sample is None else in_sample

    def _score(self, X: np.ndarray | None, losses: np.ndarray | None) -> np.ndarray:
        assert X is not None
        return self._score_model(self._transform(X))

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            **self._model_settings(),
            "seed": self.seed,
            "project_above": self.project_above,
            "eps": self.eps,
            "n_components": self.n_components,
            "projection": self._projection_info,
        }


@register("iforest")
class IsolationForestDetector(ProjectedDetector):
    """scikit-learn ``IsolationForest``; ``score = -score_samples(X)`` (higher = more isolated).

    Args:
        n_estimators: number of trees (default 100).
        max_samples: samples per tree (``"auto"`` = min(256, n)).
        seed, project_above, eps, n_components: see :class:`ProjectedDetector`.
        **kwargs: other ``IsolationForest`` arguments (e.g. ``max_features``).
    """

    def __init__(
        self,
        n_estimators: int = 100,
        max_samples: int | float | str = "auto",
        *,
        seed: int = 0,
        project_above: int | None = DEFAULT_PROJECT_ABOVE,
        eps: float = 0.1,
        n_components: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(seed, project_above, eps, n_components)
        self.n_estimators = int(n_estimators)
        self.max_samples = max_samples
        self.kwargs = kwargs
        self.model_: IsolationForest | None = None

    def _fit_model(self, Z: np.ndarray) -> np.ndarray | None:
        self.model_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=self.max_samples,
            random_state=self.seed,
            **self.kwargs,
        ).fit(Z)
        return None

    def _score_model(self, Z: np.ndarray) -> np.ndarray:
        assert self.model_ is not None
        return -self.model_.score_samples(Z)

    def _model_settings(self) -> dict[str, Any]:
        return {
            "n_estimators": self.n_estimators,
            "max_samples": _jsonable(self.max_samples),
            **{k: _jsonable(v) for k, v in self.kwargs.items()},
        }


# --------------------------------------------------------------------------- pyod


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def resolve_pyod_model(model: str) -> type:
    """Find a pyod detector class by its module or class name (case-insensitive).

    ``"copod"``, ``"COPOD"``, ``"auto_encoder"``, ``"AutoEncoder"`` and ``"IForest"`` all
    work: the name is matched to a module of ``pyod.models`` ignoring case and
    underscores, and the detector class defined there is returned.

    Raises:
        ImportError: pyod (or the model's optional dependency) is not installed.
        ValueError: no pyod module matches ``model``.
    """
    import pyod.models
    from pyod.models.base import BaseDetector

    key = _norm(model)
    modules = [m.name for m in pkgutil.iter_modules(pyod.models.__path__)]
    matches = [m for m in modules if _norm(m) == key]
    if not matches:
        raise ValueError(
            f"no pyod model named {model!r}; use a module or class name of pyod.models such "
            "as 'ecod', 'copod', 'hbos', 'knn', 'lof', 'IForest'"
        )
    module = importlib.import_module(f"pyod.models.{matches[0]}")
    classes = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, BaseDetector) and c.__module__ == module.__name__
    ]
    exact = [c for c in classes if _norm(c.__name__) == key]
    if exact or len(classes) == 1:
        return (exact or classes)[0]
    raise ValueError(f"pyod module {module.__name__} has no single detector class: {classes}")


class PyODDetector(ProjectedDetector):
    """Any pyod model; ``score = decision_function(X)`` (pyod: higher = more outlying).

    ``fit_score`` returns pyod's in-sample ``decision_scores_`` (see module docstring).
    ``random_state=seed`` is passed when the model accepts it; ``contamination`` is left
    at pyod's default (it only sets pyod's label threshold, never the scores).

    Args:
        model: pyod class or module name, e.g. ``"ECOD"``, ``"copod"``, ``"hbos"``
            (defaults to the subclass's ``default_model``).
        seed, project_above, eps, n_components: see :class:`ProjectedDetector`.
        **model_kwargs: passed to the pyod class (e.g. ``n_neighbors=10``).
    """

    default_model: ClassVar[str | None] = None

    def __init__(
        self,
        model: str | None = None,
        *,
        seed: int = 0,
        project_above: int | None = DEFAULT_PROJECT_ABOVE,
        eps: float = 0.1,
        n_components: int | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__(seed, project_above, eps, n_components)
        if model is None:
            model = self.default_model
        if model is None:
            raise ValueError("PyODDetector needs a pyod model name, e.g. PyODDetector('copod')")
        self.model_cls = resolve_pyod_model(model)
        self.model_kwargs = model_kwargs
        if model != self.default_model:
            self.name = f"pyod:{model.lower()}"  # type: ignore[misc]
        self.model_: Any = None

    def _make_model(self) -> Any:
        kwargs = dict(self.model_kwargs)
        params = inspect.signature(self.model_cls.__init__).parameters
        if "random_state" in params and "random_state" not in kwargs:
            kwargs["random_state"] = self.seed
        return self.model_cls(**kwargs)

    def _fit_model(self, Z: np.ndarray) -> np.ndarray:
        self.model_ = self._make_model()
        self.model_.fit(Z)
        return np.asarray(self.model_.decision_scores_, dtype=np.float64)

    def _score_model(self, Z: np.ndarray) -> np.ndarray:
        assert self.model_ is not None
        return np.asarray(self.model_.decision_function(Z), dtype=np.float64)

    def _model_settings(self) -> dict[str, Any]:
        return {
            "model": f"{self.model_cls.__module__}.{self.model_cls.__name__}",
            **{k: _jsonable(v) for k, v in self.model_kwargs.items()},
        }


@register("ecod")
class ECODDetector(PyODDetector):
    """pyod ECOD (empirical-CDF tail probabilities); parameter-free and deterministic."""

    default_model = "ECOD"


@register("knn")
class KNNDetector(PyODDetector):
    """pyod KNN: distance to the k-th nearest neighbour (``n_neighbors``, default 5)."""

    default_model = "KNN"


@register("lof")
class LOFDetector(PyODDetector):
    """pyod LOF: local outlier factor (``n_neighbors``, default 20)."""

    default_model = "LOF"


register_prefix("pyod", PyODDetector)
