"""FastIF settings: :class:`FastIFConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gradsift.errors import GradsiftError
from gradsift.grads.computer import Method
from gradsift.grads.projection import ProjectionConfig
from gradsift.influence.neighbors import IndexConfig

__all__ = ["Basis", "FastIFConfig", "Space", "config_dict"]

Space = Literal["features", "gradients"]
Basis = Literal["random", "pca"]


@dataclass(frozen=True)
class FastIFConfig:
    """Settings of :class:`FastIF`.

    Attributes:
        k: candidates per test point (clipped to the training-set size).
        space: ``features`` (penultimate features) or ``gradients`` (projected gradients).
        index: nearest-neighbour backend and metric (see :class:`IndexConfig`); the
            default is exact faiss search with L2, the paper's setting for features.
        projection: projection of the gradients for ``space="gradients"``; ``None`` =
            the identity (index the tracked gradients themselves: with an exact index the
            candidates then hold the exact top-k).
        basis: how ``space="gradients"`` reduces the gradients: ``random`` (the seeded
            ``projection``, data-blind: its error is relative to ``‖s‖‖g‖`` and swamps
            the small differences between top influence scores) or ``pca`` (the top
            ``pca_dim`` right singular vectors of ``pca_rows`` seeded training gradients:
            exact on the span the gradients occupy; measured recall@10 0.99 against 0.41
            for a 640-dimensional random projection on MNIST, last layer, ``k = 200``).
            With every MLP parameter tracked (D = 12,730, EK-FAC) 256 directions recall
            0.86–0.88 and 1,024 recall 0.98–0.99 (``benchmarks/results/fastif.md``): the
            preconditioned inner product spreads over many directions, so ``pca_dim``
            must grow with it.
        pca_dim, pca_rows: size of the PCA basis and of the sample it is fitted on.
        rerank: score the candidates with the exact influence ``s_tᵀ g_i`` (default). With
            ``False`` (``space="gradients"`` only) the index's inner products
            ``(P s_t)ᵀ(P g_i)`` are returned as the scores: no training gradient is
            touched at query time (exact when ``projection=None`` and the index is exact).
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
    projection: ProjectionConfig | None = field(default_factory=lambda: ProjectionConfig(dim=256))
    basis: Basis = "random"
    pca_dim: int = 256
    pca_rows: int = 10_000
    rerank: bool = True
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
        if not self.rerank and self.space != "gradients":
            raise GradsiftError(
                "rerank=False returns the index's inner products as influence scores, which "
                "only the preconditioned gradient space has: use space='gradients'"
            )
        if self.basis not in ("random", "pca"):
            raise GradsiftError(f"basis must be 'random' or 'pca', got {self.basis!r}")
        for name in ("pca_dim", "pca_rows", "batch_size", "workers", "chunk", "unit_rows"):
            if getattr(self, name) < 1:
                raise GradsiftError(f"FastIFConfig.{name} must be >= 1, got {getattr(self, name)}")


def config_dict(config: FastIFConfig) -> dict[str, Any]:
    """``config`` as a JSON-serialisable dict (for result settings)."""
    out = asdict(config)
    out["k"] = int(config.k)
    return out
