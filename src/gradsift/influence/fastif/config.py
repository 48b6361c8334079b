"""FastIF settings: :class:`FastIFConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gradsift.errors import GradsiftError
from gradsift.grads.computer import Method
from gradsift.grads.projection import ProjectionConfig
from gradsift.influence.neighbors import IndexConfig

__all__ = ["FastIFConfig", "Space", "config_dict"]

Space = Literal["features", "gradients"]


@dataclass(frozen=True)
class FastIFConfig:
    """Settings of :class:`FastIF`.

    Attributes:
        k: candidates per test point (clipped to the training-set size).
        space: ``features`` (penultimate features) or ``gradients`` (projected gradients).
        index: nearest-neighbour backend and metric (see :class:`IndexConfig`); the
            default is exact faiss search with L2, the paper's setting for features.
        projection: projection of the gradients for ``space="gradients"``.
        batch_size: samples per gradient / feature batch.
        workers: processes for candidate scoring and LiSSA repetitions (1 = in-process).
        chunk: test points scored together: the gradients of their distinct candidates
            are computed once (memory ``chunk × distinct candidates`` float64).
        unit_rows: candidate rows per scoring task (the unit of work of a worker process;
            fixed, so results do not depend on ``workers``).
        method: per-sample gradient path (see :class:`GradientComputer`).
    """

    k: int = 1000
    space: Space = "features"
    index: IndexConfig = field(default_factory=lambda: IndexConfig(backend="flat", metric="l2"))
    projection: ProjectionConfig = field(default_factory=lambda: ProjectionConfig(dim=256))
    batch_size: int = 256
    workers: int = 1
    chunk: int = 256
    unit_rows: int = 4096
    method: Method = "auto"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise GradsiftError(f"FastIF k must be >= 1, got {self.k}")
        if self.space not in ("features", "gradients"):
            raise GradsiftError(f"space must be 'features' or 'gradients', got {self.space!r}")
        if self.space == "gradients" and self.index.metric != "ip":
            raise GradsiftError(
                "space='gradients' ranks candidates by the projected influence (P s)ᵀ(P g): "
                "use IndexConfig(metric='ip')"
            )
        for name in ("batch_size", "workers", "chunk", "unit_rows"):
            if getattr(self, name) < 1:
                raise GradsiftError(f"FastIFConfig.{name} must be >= 1, got {getattr(self, name)}")


def config_dict(config: FastIFConfig) -> dict[str, Any]:
    """``config`` as a JSON-serialisable dict (for result settings)."""
    out = asdict(config)
    out["k"] = int(config.k)
    return out
