"""Nearest-neighbour indexes over training vectors (FastIF candidates, issue 7 scale).

One protocol, four backends, chosen by :class:`IndexConfig`:

- ``exact``: blocked brute force in torch with a streaming top-k (per-block
  ``torch.topk`` merged into a running best-k); no training, memory ``O(k·m + block·m)`` per
  search. Rows stay as added (memory-mapped store blocks are not copied).
- ``flat``: faiss ``IndexFlatIP`` / ``IndexFlatL2`` (exact, multithreaded BLAS).
- ``ivf``: faiss ``IndexIVFFlat``, or ``IndexIVFPQ`` when ``pq_m`` is set. The coarse
  quantiser (and the product quantiser) are trained on a seeded sample of at most
  ``train_size`` rows, then the index is filled in streaming blocks.
- ``hnsw``: faiss ``IndexHNSWFlat``.

Metrics: ``ip`` (inner product, *larger is nearer*), ``l2`` (squared Euclidean
distance, *smaller is nearer*) and ``cosine`` (inner product of L2-normalised rows,
larger is nearer). :meth:`NeighborIndex.search` returns ``(scores, indices)``, both
``[m, k']`` with ``k' = min(k, ntotal)``, nearest first; ``indices`` are the global row
numbers in the order rows were added. Approximate backends may find fewer than ``k'``
neighbours for some queries: those slots hold index ``-1`` and score ``-inf`` (``ip``,
``cosine``) or ``+inf`` (``l2``).

Typical use::

    index = build_index(store, IndexConfig(backend="ivf", metric="ip", nlist=1024))
    scores, rows = index.search(queries, k=1000)   # float32 [m, k], int64 [m, k]
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np
import torch

from gradsift.errors import GradsiftError
from gradsift.store.gradient_store import GradientStore

Backend = Literal["exact", "flat", "ivf", "hnsw"]
Metric = Literal["ip", "l2", "cosine"]
Blocks = Iterable[tuple[int, np.ndarray] | np.ndarray]
Source = np.ndarray | torch.Tensor | GradientStore | Blocks

__all__ = [
    "IndexConfig",
    "NeighborIndex",
    "ExactIndex",
    "FaissIndex",
    "make_index",
    "build_index",
    "exact_search",
    "recall_at_k",
]


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
        rows = _as_float32(data)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise GradsiftError(f"{what} must be [rows, {self.dim}], got {tuple(rows.shape)}")
        if not np.isfinite(rows).all():
            bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
            raise GradsiftError(f"{what} has NaN/Inf values in rows {bad[:10].tolist()}")
        if self.config.metric == "cosine":
            rows = _normalized(rows)
        return rows


class ExactIndex(NeighborIndex):
    """Blocked brute force in torch with a streaming top-k (the reference backend)."""

    def __init__(self, dim: int, config: IndexConfig) -> None:
        super().__init__(dim, config)
        self._blocks: list[np.ndarray] = []

    def _add(self, rows: np.ndarray) -> None:
        self._blocks.append(rows)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(self._iter_rows(), queries, k, self.config.metric)

    def _iter_rows(self) -> Iterator[tuple[int, np.ndarray]]:
        start, size = 0, self.config.block_rows
        for block in self._blocks:
            for offset in range(0, len(block), size):
                yield start + offset, block[offset : offset + size]
            start += len(block)


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


def make_index(dim: int, config: IndexConfig = IndexConfig()) -> NeighborIndex:
    """An empty index of dimension ``dim`` (IVF still needs :meth:`NeighborIndex.train`)."""
    if config.backend == "exact":
        return ExactIndex(dim, config)
    return FaissIndex(dim, config)


def build_index(
    source: Source,
    config: IndexConfig = IndexConfig(),
    sample: np.ndarray | torch.Tensor | None = None,
) -> NeighborIndex:
    """Build an index over every row of ``source``, filling it block by block.

    Args:
        source: a matrix ``[n, d]``, a :class:`GradientStore` (read shard by shard,
            memory-mapped), or an iterable of blocks ``[r, d]`` or ``(first_row, block)``
            pairs as yielded by ``GradientStore.iter_blocks()``.
        config: backend, metric and their settings.
        sample: rows to train IVF quantisers on. Default: a seeded random sample of
            ``train_size`` rows for a matrix or a store; for a plain iterable, the first
            ``train_size`` rows streamed (pass ``sample`` when the stream is ordered, e.g.
            by class).

    Returns:
        the filled index; ``index.ntotal == n``.
    """
    if isinstance(source, GradientStore):
        if config.backend == "ivf" and sample is None:
            sample = _store_sample(source, config.train_size, config.seed)
        blocks: Iterator[tuple[int | None, np.ndarray]] = iter(
            source.iter_blocks(config.block_rows)
        )
        dim = source.dim
    elif isinstance(source, np.ndarray | torch.Tensor):
        matrix = _as_float32(source)
        if matrix.ndim != 2 or len(matrix) == 0:
            raise GradsiftError(f"expected a non-empty matrix [n, d], got {tuple(matrix.shape)}")
        if config.backend == "ivf" and sample is None:
            rng = np.random.default_rng(config.seed)
            take = min(config.train_size, len(matrix))
            sample = matrix[np.sort(rng.choice(len(matrix), take, replace=False))]
        blocks = (
            (start, matrix[start : start + config.block_rows])
            for start in range(0, len(matrix), config.block_rows)
        )
        dim = matrix.shape[1]
    else:
        blocks = _normalise_blocks(source)
        first = next(blocks, None)
        if first is None:
            raise GradsiftError("the block stream is empty: nothing to index")
        dim = _as_float32(first[1]).shape[-1]
        blocks = _chain([first], blocks)
        if config.backend == "ivf" and sample is None:
            buffered, blocks = _buffer_rows(blocks, config.train_size)
            sample = np.concatenate([_as_float32(b) for _, b in buffered])[: config.train_size]
            blocks = _chain(buffered, blocks)
    index = make_index(dim, config)
    if sample is not None:
        index.train(sample)
    for first_row, block in blocks:
        index.add(block, first_row)
    if index.ntotal == 0:
        raise GradsiftError("the source has no rows: nothing to index")
    return index


def exact_search(
    blocks: Iterable[tuple[int, np.ndarray | torch.Tensor]],
    queries: np.ndarray | torch.Tensor,
    k: int,
    metric: Metric = "ip",
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` over row blocks: ``(scores float32 [m, k'], indices int64 [m, k'])``.

    ``blocks`` yields ``(first_row, rows [r, d])``; ``cosine`` expects rows and queries
    already normalised (as :class:`ExactIndex` stores them). Computed in float32 with
    the block's scores never larger than ``[r, m]``.
    """
    q = torch.as_tensor(_as_float32(queries))
    largest = metric != "l2"
    values = torch.empty(len(q), 0)
    indices = torch.empty(len(q), 0, dtype=torch.int64)
    q_norm = (q * q).sum(1) if metric == "l2" else None
    for first_row, block in blocks:
        rows = _as_float32(block)
        x = torch.from_numpy(rows if rows.flags.writeable else rows.copy())
        scores = q @ x.T  # [m, r]
        if q_norm is not None:
            scores = ((x * x).sum(1) - 2 * scores + q_norm[:, None]).clamp_min_(0)
        part_v, part_i = torch.topk(scores, min(k, x.shape[0]), dim=1, largest=largest)
        values, indices = _merge_topk(
            torch.cat([values, part_v], 1), torch.cat([indices, part_i + first_row], 1), k, largest
        )
    return values.numpy(), indices.numpy()


def _merge_topk(
    values: torch.Tensor, indices: torch.Tensor, k: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` columns per row; ties go to the lower index (order-independent result)."""
    order = torch.argsort(indices, dim=1, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    best = torch.argsort(values, dim=1, descending=largest, stable=True)[:, :k]
    return values.gather(1, best), indices.gather(1, best)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of ``|found_q ∩ truth_q| / |truth_q|`` (``-1`` entries ignored).

    ``found`` ``[m, k1]`` and ``truth`` ``[m, k2]`` are index arrays; typically ``truth``
    is the exact top-k and ``found`` an approximate one (or a candidate set).
    """
    found, truth = np.asarray(found), np.asarray(truth)
    if found.ndim != 2 or truth.ndim != 2 or len(found) != len(truth):
        raise GradsiftError(
            f"expected index arrays [m, k] with equal m, got {found.shape} and {truth.shape}"
        )
    hits = []
    for f, t in zip(found, truth, strict=True):
        t = t[t >= 0]
        if len(t):
            hits.append(len(np.intersect1d(f[f >= 0], t)) / len(t))
    return float(np.mean(hits)) if hits else float("nan")


# -- helpers -------------------------------------------------------------------------------
def _as_float32(data: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    return np.ascontiguousarray(data, dtype=np.float32)


def _normalized(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0).astype(np.float32)


def _normalise_blocks(source: Blocks) -> Iterator[tuple[int | None, np.ndarray]]:
    for item in source:
        if isinstance(item, tuple):
            yield int(item[0]), item[1]
        else:
            yield None, item


def _chain(head: list[Any], tail: Iterator[Any]) -> Iterator[Any]:
    yield from head
    yield from tail


def _buffer_rows(
    blocks: Iterator[tuple[int | None, np.ndarray]], rows: int
) -> tuple[list[tuple[int | None, np.ndarray]], Iterator[tuple[int | None, np.ndarray]]]:
    buffered, seen = [], 0
    for item in blocks:
        buffered.append(item)
        seen += len(item[1])
        if seen >= rows:
            break
    return buffered, blocks


def _store_sample(store: GradientStore, size: int, seed: int) -> np.ndarray:
    """A seeded random sample of ``size`` rows of ``store`` (sorted, read shard by shard)."""
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(store.n_rows, min(size, store.n_rows), replace=False))
    parts = []
    for shard in range(store.n_shards):
        start, stop = store.shard_range(shard)
        mine = take[(take >= start) & (take < stop)] - start
        if len(mine):
            parts.append(np.asarray(store.read_shard(shard)[mine], dtype=np.float32))
    return np.concatenate(parts)


def _divisors_near(dim: int, target: int) -> list[int]:
    divisors = [d for d in range(1, dim + 1) if dim % d == 0]
    return sorted(divisors, key=lambda d: abs(d - target))[:3]
