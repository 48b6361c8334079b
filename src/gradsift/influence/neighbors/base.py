"""Index settings (:class:`IndexConfig`) and the protocol of every backend (:class:`NeighborIndex`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from gradsift.errors import GradsiftError

__all__ = ["Backend", "IndexConfig", "Metric", "NeighborIndex", "as_float32", "normalized"]

Backend = Literal["exact", "flat", "ivf", "hnsw"]
Metric = Literal["ip", "l2", "cosine"]


@dataclass(frozen=True)
class IndexConfig:
    """Settings of a nearest-neighbour index.

    Attributes:
        backend: ``exact`` (torch brute force), ``flat``, ``ivf`` or ``hnsw`` (faiss).
        metric: ``ip``, ``l2`` (squared distance) or ``cosine``.
        nlist: IVF inverted lists; default ``clip(4·√n, 1, n_train_rows)``, fixed when the
            index is trained.
        nprobe: IVF lists visited per query (recall/speed trade-off).
        pq_m: IVF-PQ sub-quantisers (must divide the dimension); ``None`` = IVFFlat.
        pq_bits: bits per PQ code (8 needs at least 256 training rows).
        hnsw_m: HNSW graph degree.
        ef_construction, ef_search: HNSW beam widths at build and search time.
        train_size: rows sampled (seeded) to train IVF quantisers.
        block_rows: rows per block for the exact backend's brute force.
        seed: seeds the training sample and faiss k-means.
        threads: OpenMP threads for faiss calls (``None`` = faiss default). HNSW builds are
            only reproducible bit for bit with ``threads=1``, and HNSW graphs depend on how
            rows are split into blocks (faiss inserts each block level by level); the other
            backends give identical results for any block split.
    """

    backend: Backend = "flat"
    metric: Metric = "ip"
    nlist: int | None = None
    nprobe: int = 16
    pq_m: int | None = None
    pq_bits: int = 8
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    train_size: int = 50_000
    block_rows: int = 16_384
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("exact", "flat", "ivf", "hnsw"):
            raise GradsiftError(
                f"unknown index backend {self.backend!r}: use exact, flat, ivf or hnsw"
            )
        if self.metric not in ("ip", "l2", "cosine"):
            raise GradsiftError(f"unknown metric {self.metric!r}: use ip, l2 or cosine")
        for name in ("nprobe", "pq_bits", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise GradsiftError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_size", "block_rows"):
            if getattr(self, name) < 1:
                raise GradsiftError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise GradsiftError(f"IndexConfig.nlist must be >= 1, got {self.nlist}")
        if self.pq_m is not None and self.backend != "ivf":
            raise GradsiftError("pq_m (product quantisation) applies to backend='ivf' only")
        if self.pq_m is not None and self.pq_m < 1:
            raise GradsiftError(f"IndexConfig.pq_m must be >= 1, got {self.pq_m}")

    @property
    def larger_is_nearer(self) -> bool:
        return self.metric != "l2"


class NeighborIndex(ABC):
    """Protocol of every backend: ``train`` (when needed), ``add`` blocks, ``search``."""

    def __init__(self, dim: int, config: IndexConfig) -> None:
        if dim < 1:
            raise GradsiftError(f"index dimension must be >= 1, got {dim}")
        self.dim, self.config = dim, config
        self.ntotal = 0

    @property
    def is_trained(self) -> bool:
        return True

    def train(self, sample: np.ndarray) -> None:
        """Fit the quantisers on ``sample [r, dim]`` (no-op for untrained backends)."""
        return None

    def add(self, block: np.ndarray | torch.Tensor, first_row: int | None = None) -> None:
        """Append rows ``block [r, dim]``; they get ids ``ntotal … ntotal + r − 1``.

        ``first_row`` (as yielded by ``GradientStore.iter_blocks``) is checked against
        ``ntotal`` so that blocks cannot be added out of order or twice.
        """
        if first_row is not None and first_row != self.ntotal:
            raise GradsiftError(
                f"block starts at row {first_row} but the index holds {self.ntotal} rows: "
                "add blocks in order, each once"
            )
        rows = self._prepare(block, "block")
        if len(rows):
            if not self.is_trained:
                raise GradsiftError(
                    "this index must be trained before rows are added: call train(sample) "
                    "or use build_index(...)"
                )
            self._add(rows)
            self.ntotal += len(rows)

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores float32 [m, k'], indices int64 [m, k'])``, nearest first, ``k' = min(k, ntotal)``.

        Scores are similarities for ``ip``/``cosine`` (descending) and squared distances
        for ``l2`` (ascending). Missing neighbours of approximate backends are ``-1``.
        """
        if k < 1:
            raise GradsiftError(f"k must be >= 1, got {k}")
        if self.ntotal == 0:
            raise GradsiftError("the index is empty: add rows before searching")
        q = self._prepare(queries, "queries")
        kk = min(k, self.ntotal)
        if len(q) == 0:
            return np.zeros((0, kk), np.float32), np.zeros((0, kk), np.int64)
        scores, indices = self._search(q, kk)
        return scores.astype(np.float32, copy=False), indices.astype(np.int64, copy=False)

    # -- backend hooks ------------------------------------------------------------------
    @abstractmethod
    def _add(self, rows: np.ndarray) -> None: ...

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    # -- helpers --------------------------------------------------------------------------
    def _prepare(self, data: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
        rows = as_float32(data)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise GradsiftError(f"{what} must be [rows, {self.dim}], got {tuple(rows.shape)}")
        if not np.isfinite(rows).all():
            bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
            raise GradsiftError(f"{what} has NaN/Inf values in rows {bad[:10].tolist()}")
        if self.config.metric == "cosine":
            rows = normalized(rows)
        return rows


def as_float32(data: np.ndarray | torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy copy (or view) of ``data``."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    return np.ascontiguousarray(data, dtype=np.float32)


def normalized(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0).astype(np.float32)
