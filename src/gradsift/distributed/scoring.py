"""Distributed streaming scoring over the row blocks of a gradient store.

Nothing here holds the gradient matrix, or an ``n_train × n_test`` score matrix, in
memory. Each rank of the current ``torch.distributed`` job (one plain process is a job
of one) reads only its own shards, ``shards[rank::world]``, block by block from the
memory-mapped files, and the per-rank results are merged at the end:

- :func:`distributed_topk`: pairwise scores ``train [r, D] · test [m, D]ᵀ`` per block into
  a :class:`~gradsift.store.kernels.StreamingTopK` (largest = most helpful, smallest = most
  harmful), merged across ranks. Equal to :func:`gradsift.store.kernels.pairwise_topk` over the
  whole store, ties included.
- :func:`distributed_scores`: a detector's per-row scores (float64 ``[n]``, higher = more
  suspicious). Row-wise detectors (``l1``, ``l2``) stream; fitted detectors
  (``iforest``, ``ecod``, ``knn``, ``lof``, ``pyod:*``) are fitted on rank 0 on a seeded
  sample of ``sample_size`` rows, broadcast, and score every row in a stream; ``loss``
  and ``random`` need only the per-row losses / the row count.
- :func:`self_influence`: ``g_iᵀ P g_i`` where ``P ≈ (H + λI)⁻¹`` is given as a matrix,
  a fitted influence solver (``solver.solve``), a function applied to row blocks, or a
  second store holding the preconditioned rows ``s_i = P g_i`` (same rows and shards).

Memory per rank: one block of gradients (``block_rows × D``, memory-mapped) and of
scores (``block_rows × n_test``), the top-k tables (``2 · n_test · k`` values and
indices), and the result (8 bytes per row for scores) — independent of ``n`` except
for that last vector.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from gradsift.distributed import process_group as D
from gradsift.errors import GradsiftError
from gradsift.store.gradient_store import GradientStore
from gradsift.store.kernels import ScoreFn, StreamingTopK, dot_scores

if TYPE_CHECKING:  # scikit-learn is imported only when a detector is used
    from gradsift.detect import Detector

__all__ = [
    "cosine_scores",
    "distributed_scores",
    "distributed_topk",
    "fold_block",
    "rank_blocks",
    "sample_rows",
    "self_influence",
]

Preconditioner = np.ndarray | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | GradientStore
DEFAULT_SAMPLE = 10_000


def cosine_scores(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """``[r, m]`` cosine similarities; a zero row scores 0 against everything."""
    return _unit(train) @ _unit(test).T


def _unit(x: torch.Tensor) -> torch.Tensor:
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norms > 0, norms, torch.ones_like(norms))


def rank_blocks(
    store: GradientStore, block_rows: int | None = None, shards: Sequence[int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_row, block [r, D])`` over this rank's shards (``shards[rank::world]``).

    Blocks never cross a shard boundary and start at each shard's first row, exactly as
    :meth:`GradientStore.iter_blocks` cuts them, so per-block arithmetic is identical
    to a single-process pass.
    """
    block_rows = block_rows or store.settings.rows_per_shard
    for shard in D.assign(range(store.n_shards) if shards is None else shards):
        start, _ = store.shard_range(shard)
        data = store.read_shard(shard)
        for offset in range(0, len(data), block_rows):
            yield start + offset, np.asarray(data[offset : offset + block_rows])


def distributed_topk(
    store: GradientStore,
    test: np.ndarray | torch.Tensor,
    k: int,
    score: Literal["dot", "cosine"] | ScoreFn = "dot",
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
    fn = _score_fn(score)
    test_t = torch.as_tensor(np.asarray(test) if not isinstance(test, torch.Tensor) else test)
    if test_t.dim() != 2 or test_t.shape[1] != store.dim:
        raise GradsiftError(f"test must be [m, {store.dim}], got {tuple(test_t.shape)}")
    if not test_t.is_floating_point() or test_t.dtype == torch.float16:
        test_t = test_t.float()
    helpful = StreamingTopK(len(test_t), k, largest=True)
    harmful = StreamingTopK(len(test_t), k, largest=False)
    for first_row, block in rank_blocks(store, block_rows):
        scores = fn(_tensor(block).to(test_t.dtype), test_t)
        fold_block(helpful, scores, first_row)
        fold_block(harmful, scores, first_row)
    return D.merge_topk(helpful), D.merge_topk(harmful)


def fold_block(top: StreamingTopK, scores: torch.Tensor, first_row: int) -> None:
    """``top.update(scores, first_row)`` for a large block, about 50× faster.

    A full update sorts ``[n_test, k + rows]`` twice. Here each test column first keeps
    only the rows scoring at least its k-th best score in the block (``torch.topk``; when
    a row ties with the k-th, all tied rows are kept), and only those are folded in. Every row of the
    block's exact top-k (ties by lower index) is among them, so the result is identical
    to :meth:`StreamingTopK.update`. Scores must be finite.
    """
    rows = scores.shape[0]
    if rows <= top.k:
        top.update(scores, first_row)
        return
    sign = 1.0 if top.largest else -1.0
    key = scores * sign  # larger key = better, for both directions (negation is exact)
    values, index = torch.topk(key, top.k + 1, dim=0)
    if bool((values[-1] == values[-2]).any()):  # a tie at the k-th place: keep all tied
        keep = key >= values[-2]
        width = int(keep.sum(dim=0).max())
        values, index = torch.topk(key.masked_fill(~keep, -torch.inf), width, dim=0)
    else:
        values, index = values[:-1], index[:-1]
    part = StreamingTopK(top.n_test, top.k, top.largest)
    part.values = (values * sign).T.double()  # fillers (-inf key) never beat a kept row
    part.indices = (index + first_row).T.to(torch.int64)
    top.merge(part)


def _tensor(block: np.ndarray) -> torch.Tensor:
    """A tensor view of a (read-only, memory-mapped) block; it is only ever read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(block)


def _score_fn(score: str | ScoreFn) -> ScoreFn:
    if callable(score):
        return score
    if score == "dot":
        return dot_scores
    if score == "cosine":
        return cosine_scores
    raise GradsiftError(f"score must be 'dot', 'cosine' or a function, got {score!r}")


def sample_rows(store: GradientStore, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded uniform sample without replacement: ``(rows int64 [s], X [s, D])``,
    ``s = min(size, n)``, rows sorted, read shard by shard (only the sampled rows)."""
    if size < 1:
        raise GradsiftError(f"sample size must be >= 1, got {size}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(store.n_rows, min(size, store.n_rows), replace=False))
    parts = []
    for shard in range(store.n_shards):
        start, stop = store.shard_range(shard)
        local = rows[(rows >= start) & (rows < stop)] - start
        if len(local):
            parts.append(np.asarray(store.read_shard(shard)[local]))
    return rows.astype(np.int64), np.concatenate(parts)


def distributed_scores(
    store: GradientStore,
    detector: str | Detector,
    *,
    sample_size: int = DEFAULT_SAMPLE,
    seed: int = 0,
    block_rows: int | None = None,
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
        **detector_kwargs: passed to :func:`get_detector` with a name.
    """
    det = _make_detector(detector, seed, detector_kwargs)
    settings: dict[str, Any] = {"detector": det.settings(), "streamed": True}
    if not det.needs_gradients:  # loss, random: per-row losses / row count only
        return det.fit_score(None, store.losses()), settings
    if det.requires_fit:
        det = D.run_on_main(lambda: _fit_on_sample(det, store, sample_size, seed))
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


def _fit_on_sample(det: Detector, store: GradientStore, size: int, seed: int) -> Detector:
    rows, X = sample_rows(store, size, seed)
    losses = store.losses()[rows] if det.needs_losses else None
    return det.fit(X, losses)


def self_influence(
    store: GradientStore,
    preconditioner: Preconditioner | None = None,
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
    apply = _preconditioner(store, preconditioner)
    pieces = []
    for first_row, block in rank_blocks(store, block_rows):
        g = _tensor(np.asarray(block, dtype=np.float64))
        pg = apply(g, first_row)
        if pg.shape != g.shape:
            raise GradsiftError(
                f"the preconditioner returned {tuple(pg.shape)} for {tuple(g.shape)}"
            )
        pieces.append((first_row, (g * pg.double()).sum(dim=1).numpy()))
    return D.gather_rows(store.n_rows, pieces)


def _preconditioner(
    store: GradientStore, p: Preconditioner | None
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    if p is None:
        return lambda g, _: g
    if isinstance(p, GradientStore):
        if (p.n_rows, p.dim, p.settings.rows_per_shard) != (
            store.n_rows,
            store.dim,
            store.settings.rows_per_shard,
        ):
            raise GradsiftError(
                f"the preconditioned store has {p.n_rows} rows × {p.dim} in shards of "
                f"{p.settings.rows_per_shard}; it must match the gradient store "
                f"({store.n_rows} × {store.dim}, shards of {store.settings.rows_per_shard})"
            )
        return lambda g, first: torch.from_numpy(_rows(p, first, len(g)))
    solve = getattr(p, "solve", None)  # an influence solver: solve(V [m, D]) -> (H+λI)⁻¹ V
    if callable(solve):
        return lambda g, _: solve(g)
    if callable(p) and not isinstance(p, np.ndarray | torch.Tensor):
        return lambda g, _: p(g)
    matrix = torch.as_tensor(np.asarray(p), dtype=torch.float64)
    if matrix.shape != (store.dim, store.dim):
        raise GradsiftError(
            f"the preconditioner must be [{store.dim}, {store.dim}], got {tuple(matrix.shape)}"
        )
    return lambda g, _: g @ matrix


def _rows(store: GradientStore, first: int, count: int) -> np.ndarray:
    shard = first // store.settings.rows_per_shard
    start, _ = store.shard_range(shard)
    return np.asarray(
        store.read_shard(shard)[first - start : first - start + count], dtype=np.float64
    )
