"""The faiss backends: ``flat``, ``ivf`` (IVFFlat or IVF-PQ) and ``hnsw``."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import torch

from gradsift.errors import GradsiftError
from gradsift.influence.neighbors.base import IndexConfig, NeighborIndex

__all__ = ["FaissIndex"]


class FaissIndex(NeighborIndex):
    """A faiss ``flat`` / ``ivf`` (IVFFlat or IVF-PQ) / ``hnsw`` index.

    IVF needs :meth:`train` (on ``nlist`` or more rows; ``2**pq_bits`` or more with PQ)
    before rows are added; :func:`build_index` does this from a seeded sample.
    """

    def __init__(self, dim: int, config: IndexConfig) -> None:
        super().__init__(dim, config)
        if config.backend == "exact":
            raise GradsiftError("use ExactIndex for backend='exact'")
        if config.pq_m is not None and dim % config.pq_m:
            raise GradsiftError(
                f"pq_m={config.pq_m} must divide the dimension {dim}; pick a divisor such as "
                f"{_divisors_near(dim, config.pq_m)}"
            )
        self._faiss_metric = (
            faiss.METRIC_L2 if config.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        )
        self.index: Any = None
        if config.backend == "flat":
            self.index = faiss.IndexFlatL2(dim) if config.metric == "l2" else faiss.IndexFlatIP(dim)
        elif config.backend == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, config.hnsw_m, self._faiss_metric)
            self.index.hnsw.efConstruction = config.ef_construction
            self.index.hnsw.efSearch = config.ef_search

    @property
    def is_trained(self) -> bool:
        return self.index is not None and bool(self.index.is_trained)

    def train(self, sample: np.ndarray | torch.Tensor) -> None:
        """Train the IVF quantisers on ``sample [r, dim]`` (seeded k-means)."""
        if self.config.backend != "ivf":
            return
        if self.index is not None and self.ntotal:
            raise GradsiftError("the index already holds rows; train it before adding")
        rows = self._prepare(sample, "training sample")
        nlist = self.config.nlist or int(np.clip(round(4 * math.sqrt(len(rows))), 1, len(rows)))
        need = max(nlist, 2**self.config.pq_bits if self.config.pq_m else 1)
        if len(rows) < need:
            raise GradsiftError(
                f"IVF training needs at least {need} rows (nlist={nlist}"
                + (f", 2**pq_bits={2**self.config.pq_bits}" if self.config.pq_m else "")
                + f"), got {len(rows)}: lower nlist/pq_bits or use backend='flat'"
            )
        quantizer = (
            faiss.IndexFlatL2(self.dim)
            if self.config.metric == "l2"
            else faiss.IndexFlatIP(self.dim)
        )
        if self.config.pq_m:
            index = faiss.IndexIVFPQ(
                quantizer,
                self.dim,
                nlist,
                self.config.pq_m,
                self.config.pq_bits,
                self._faiss_metric,
            )
            index.pq.cp.seed = self.config.seed
        else:
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, self._faiss_metric)
        index.cp.seed = self.config.seed
        index.nprobe = min(self.config.nprobe, nlist)
        with self._threads():
            index.train(rows)
        self._quantizer = quantizer  # faiss does not own it: keep it alive
        self.index = index

    @property
    def nlist(self) -> int | None:
        return int(self.index.nlist) if self.config.backend == "ivf" and self.is_trained else None

    def _add(self, rows: np.ndarray) -> None:
        with self._threads():
            self.index.add(rows)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._threads():
            scores, indices = self.index.search(queries, k)
        missing = indices < 0
        if missing.any():
            scores[missing] = np.inf if self.config.metric == "l2" else -np.inf
        return scores, indices

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        if self.config.threads is None:
            yield
            return
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.config.threads)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)


def _divisors_near(dim: int, target: int) -> list[int]:
    divisors = [d for d in range(1, dim + 1) if dim % d == 0]
    return sorted(divisors, key=lambda d: abs(d - target))[:3]
