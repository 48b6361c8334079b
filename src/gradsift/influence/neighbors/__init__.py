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

Modules: :mod:`.base` (:class:`IndexConfig`, the :class:`NeighborIndex` protocol),
:mod:`.exact` (torch brute force, :func:`recall_at_k`), :mod:`.faiss_index` (the faiss
backends), :mod:`.build` (:func:`make_index`, :func:`build_index`: training and streaming
fill from a matrix, a store or a block stream).
"""

from gradsift.influence.neighbors.base import Backend, IndexConfig, Metric, NeighborIndex
from gradsift.influence.neighbors.build import build_index, make_index
from gradsift.influence.neighbors.exact import ExactIndex, exact_search, recall_at_k
from gradsift.influence.neighbors.faiss_index import FaissIndex

__all__ = [
    "Backend",
    "IndexConfig",
    "Metric",
    "NeighborIndex",
    "ExactIndex",
    "FaissIndex",
    "make_index",
    "build_index",
    "exact_search",
    "recall_at_k",
]
