"""Distributed scoring over the row blocks of a gradient store: sharding and reduction only.

All arithmetic is in :mod:`gradsift.store.kernels` (the same functions score in-memory
arrays); this module decides which blocks a rank reads and how the ranks' results are
combined. Each rank of the current ``torch.distributed`` job (one plain process is a job
of one) reads only its own shards, ``shards[rank::world]`` (:func:`rank_blocks`), block by
block from the memory-mapped files; nothing here holds the gradient matrix or an
``n_train × n_test`` score matrix in memory.

- :func:`distributed_topk`: :func:`~gradsift.store.kernels.pairwise_topk` over this rank's
  blocks, then the top-k tables merged across ranks. Equal to ``pairwise_topk`` over the
  whole store, ties included.
- :func:`distributed_scores`: a detector's per-row scores (float64 ``[n]``, higher = more
  suspicious), all-gathered. Row-wise detectors (``l1``, ``l2``) stream; fitted detectors
  (``iforest``, ``ecod``, ``knn``, ``lof``, ``pyod:*``, ``self-if-*`` with a
  :class:`~gradsift.detect.context.DetectionContext`) are fitted on rank 0 on a seeded
  sample of ``sample_size`` rows, broadcast, and score every row in a stream; ``loss``,
  ``random`` and ``self-tracin`` need only the per-row losses / the row count.
- :func:`self_influence`: :func:`~gradsift.store.kernels.self_influence_rows`
  (``g_iᵀ P g_i``) over this rank's blocks, all-gathered; ``P`` may also be a second
  store holding the preconditioned rows ``s_i = P g_i`` (same rows and shards).

Memory per rank: one block of gradients (``block_rows × D``, memory-mapped) and of
scores (``block_rows × n_test``), the top-k tables (``2 · n_test · k`` values and
indices), and the result (8 bytes per row for scores) — independent of ``n`` except
for that last vector.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gradsift.distributed import process_group as D
from gradsift.errors import GradsiftError
from gradsift.store.gradient_store import GradientStore
from gradsift.store.kernels import (
    Preconditioner,
    Score,
    StreamingTopK,
    cosine_scores,
    fold_block,
    pairwise_topk,
    quadratic_form,
    self_influence_rows,
)

if TYPE_CHECKING:  # scikit-learn is imported only when a detector is used
    from gradsift.detect import Detector
    from gradsift.detect.context import DetectionContext

__all__ = [
    "cosine_scores",
    "distributed_scores",
    "distributed_topk",
    "fold_block",
    "rank_blocks",
    "sample_rows",
    "self_influence",
]
# ``cosine_scores`` and ``fold_block`` live in gradsift.store; they stay importable from here.

DEFAULT_SAMPLE = 10_000


def rank_blocks(
    store: GradientStore, block_rows: int | None = None, shards: Sequence[int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_row, block [r, D])`` over this rank's shards (``shards[rank::world]``).

    Blocks are cut by :meth:`GradientStore.shard_blocks`, exactly as
    :meth:`GradientStore.iter_blocks` cuts them, so per-block arithmetic is identical
    to a single-process pass.
    """
    for shard in D.assign(range(store.n_shards) if shards is None else shards):
        yield from store.shard_blocks(shard, block_rows)


def distributed_topk(
    store: GradientStore,
    test: np.ndarray | torch.Tensor,
    k: int,
    score: Score = "dot",
    block_rows: int | None = None,
) -> tuple[StreamingTopK, StreamingTopK]:
    """Top-``k`` most helpful (largest) and most harmful (smallest) train rows per test row.

    Args:
        store: train gradients ``[n, D]``.
        test: test-side vectors ``[m, D]`` (gradients of the measurement, or the
            preconditioned ``(H+λI)⁻¹ g_t`` for influence functions), held in memory.
            Scores are computed in ``test``'s dtype (float32 for float16 stores).
        k: candidates kept per test row.
        score: ``"dot"`` (``g_tᵀ g_i``, positive = helpful), ``"cosine"``, or a function
            ``(block [r, D], test [m, D]) → [r, m]``.
        block_rows: rows per block (default: the store's rows per shard).

    Returns:
        ``(helpful, harmful)`` merged on every rank; ``.result()`` gives
        ``(values float64 [m, k], indices int64 [m, k])``, best first.
    """
    shape = np.shape(test)
    if len(shape) != 2 or shape[1] != store.dim:
        raise GradsiftError(f"test must be [m, {store.dim}], got {tuple(shape)}")
    helpful, harmful = pairwise_topk(rank_blocks(store, block_rows), test, k, score)
    return D.merge_topk(helpful), D.merge_topk(harmful)


def sample_rows(store: GradientStore, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`GradientStore.sample_rows` (kept here: the sample fitted detectors use)."""
    return store.sample_rows(size, seed)


def distributed_scores(
    store: GradientStore,
    detector: str | Detector,
    *,
    sample_size: int = DEFAULT_SAMPLE,
    seed: int = 0,
    block_rows: int | None = None,
    context: DetectionContext | None = None,
    **detector_kwargs: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Detection scores of every row of ``store``: ``(float64 [n], settings)``, higher =
    more suspicious, on every rank.

    Args:
        store: gradients ``[n, D]`` (and their losses, for ``loss``).
        detector: a registered name (``"l2"``, ``"iforest"``, ``"pyod:copod"``, …) or an
            unfitted :class:`Detector`.
        sample_size: rows (seeded sample) a fitted detector is fitted on; every row,
            sampled or not, is then scored with ``score`` (out-of-sample).
        seed: seeds the sample (and, for names, the detector via ``seed=``).
        block_rows: rows per scored block (default: rows per shard).
        context: model, task, training data, checkpoints for the detectors that need
            them (``self-if-*``, ``self-tracin``); the store's rows and losses are used
            in place of its gradients and losses.
        **detector_kwargs: passed to :func:`get_detector` with a name.
    """
    det = _make_detector(detector, seed, detector_kwargs)
    settings: dict[str, Any] = {"detector": det.settings(), "streamed": True}
    if not det.needs_gradients:  # loss, random, self-tracin: losses / row count only
        return det.fit_score(None, store.losses(), context=context), settings
    if det.requires_fit:
        det = D.run_on_main(lambda: _fit_on_sample(det, store, sample_size, seed, context))
        settings = {
            "detector": det.settings(),
            "streamed": True,
            "fit_sample": {"size": min(sample_size, store.n_rows), "seed": seed},
        }
    losses = store.losses() if det.needs_losses else None
    pieces = []
    for first_row, block in rank_blocks(store, block_rows):
        part = None if losses is None else losses[first_row : first_row + len(block)]
        pieces.append((first_row, det.score(block, part)))
    return D.gather_rows(store.n_rows, pieces), settings


def _make_detector(detector: str | Detector, seed: int, kwargs: dict[str, Any]) -> Detector:
    from gradsift.detect import Detector, get_detector

    if isinstance(detector, Detector):
        if kwargs:
            raise GradsiftError("detector keyword arguments apply to detector names only")
        return detector
    det = get_detector(detector, **kwargs)
    if "seed" not in kwargs and "seed" in inspect.signature(type(det).__init__).parameters:
        det = get_detector(detector, seed=seed, **kwargs)  # iforest, random, pyod models
    return det


def _fit_on_sample(
    det: Detector,
    store: GradientStore,
    size: int,
    seed: int,
    context: DetectionContext | None,
) -> Detector:
    rows, X = sample_rows(store, size, seed)
    losses = store.losses()[rows] if det.needs_losses else None
    return det.fit(X, losses, context=context)


def self_influence(
    store: GradientStore,
    preconditioner: Preconditioner | GradientStore | None = None,
    block_rows: int | None = None,
) -> np.ndarray:
    """Self-influence ``g_iᵀ P g_i`` of every row (float64 ``[n]``, higher = more
    suspicious; with ``P = (H+λI)⁻¹`` this is the influence-function self-influence).

    Args:
        store: gradients ``g_i`` ``[n, D]``.
        preconditioner: ``None`` (``P = I``: ``‖g_i‖²``); a symmetric matrix ``[D, D]``;
            a fitted influence solver (anything with ``solve(V [r, D]) → [r, D]``, e.g.
            :class:`gradsift.influence.solvers.CGSolver`, for an unprojected store in
            the solver's layout); a function mapping a float64 block ``[r, D]`` to
            ``[r, D]`` (rows ``P g_i``); or a store of the preconditioned rows
            ``s_i = P g_i`` with the same rows and shards as ``store``. The dot products
            are taken in float64.
        block_rows: rows per block (default: rows per shard).
    """
    blocks = rank_blocks(store, block_rows)
    if isinstance(preconditioner, GradientStore):
        _check_paired(store, preconditioner)
        paired = zip(blocks, rank_blocks(preconditioner, block_rows), strict=True)
        pieces = [(first, quadratic_form(g, s)) for (first, g), (_, s) in paired]
    else:
        pieces = list(self_influence_rows(blocks, preconditioner, dim=store.dim))
    return D.gather_rows(store.n_rows, pieces)


def _check_paired(store: GradientStore, pre: GradientStore) -> None:
    """``pre`` holds the same rows in the same shards as ``store`` (so blocks pair up)."""
    if (pre.n_rows, pre.dim, pre.settings.rows_per_shard) != (
        store.n_rows,
        store.dim,
        store.settings.rows_per_shard,
    ):
        raise GradsiftError(
            f"the preconditioned store has {pre.n_rows} rows × {pre.dim} in shards of "
            f"{pre.settings.rows_per_shard}; it must match the gradient store "
            f"({store.n_rows} × {store.dim}, shards of {store.settings.rows_per_shard})"
        )
