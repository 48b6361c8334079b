"""Block kernels: the arithmetic of every scoring path, in memory and over a sharded store.

A *row block* is ``(first_row, rows [r, D])``: rows ``first_row … first_row + r − 1`` of a
gradient matrix. Blocks come from an in-memory array
(:func:`gradsift.detect.base.iter_row_blocks`), a memory-mapped store
(:meth:`~gradsift.store.gradient_store.GradientStore.iter_blocks`), one rank's shards
(:func:`gradsift.distributed.scoring.rank_blocks`) or gradients computed on the fly
(:class:`gradsift.influence.scores.InfluenceScorer`). Every one of those paths calls the
functions here, so each score is computed in one place:

- **Pairwise scores** of train rows against test vectors ``Q [m, D]``, ``S[i, t]``,
  positive = helpful: :func:`dot_scores` (``g_iᵀ q_t``), :func:`cosine_scores`. Folded
  over blocks into the ``k`` most helpful (largest) and most harmful (smallest) train
  rows per test column by :func:`pairwise_topk` (see :mod:`gradsift.store.topk`), or
  into the whole ``[n, m]`` matrix by :func:`pairwise_scores` (small problems).
- **The quadratic form** ``g_iᵀ P g_i`` (self-influence with ``P ≈ (H + λI)⁻¹``; higher =
  more suspicious), ``P`` given as a matrix, a fitted solver (``solve``) or a function
  of row blocks: :func:`quadratic_form` for one block, :func:`self_influence_rows` over
  blocks, in float64.
- :func:`concat_rows` joins per-row pieces ``(first_row, values)`` in memory (a
  distributed run all-gathers them instead: :func:`gradsift.distributed.process_group.gather_rows`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, Protocol

import numpy as np
import torch

from gradsift.errors import GradsiftError
from gradsift.store.topk import StreamingTopK, fold_block

__all__ = [
    "Preconditioner",
    "RowBlock",
    "Score",
    "ScoreFn",
    "StreamingTopK",
    "as_tensor",
    "concat_rows",
    "cosine_scores",
    "dot_scores",
    "fold_block",
    "pairwise_scores",
    "pairwise_topk",
    "preconditioner_map",
    "quadratic_form",
    "score_function",
    "self_influence_rows",
    "unit_rows",
]

Array = np.ndarray | torch.Tensor
#: ``(first_row, rows [r, D])``.
RowBlock = tuple[int, Array]
#: ``(train block [r, D], test [m, D]) → scores [r, m]``.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Score = Literal["dot", "cosine"] | ScoreFn


class _Solver(Protocol):
    def solve(self, V: torch.Tensor) -> torch.Tensor: ...


#: ``P`` of ``g_iᵀ P g_i``: a symmetric matrix ``[D, D]``, a fitted influence solver
#: (``solve(V [r, D]) → (H + λI)⁻¹ V``), or a function mapping a block ``[r, D]`` to the
#: rows ``P g_i`` ``[r, D]``. ``None`` means ``P = I``.
Preconditioner = Array | _Solver | Callable[[torch.Tensor], torch.Tensor]


def as_tensor(block: Array) -> torch.Tensor:
    """A tensor view (no copy) of a block; a read-only memory-mapped block is only ever read."""
    if isinstance(block, torch.Tensor):
        return block
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(block))


# --------------------------------------------------------------------------- pairwise


def dot_scores(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """``train [r, D] · test [m, D]ᵀ → [r, m]``."""
    return train @ test.T


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; a zero row stays zero."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norms > 0, norms, torch.ones_like(norms))


def cosine_scores(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """``[r, m]`` cosine similarities; a zero row scores 0 against everything."""
    return unit_rows(train) @ unit_rows(test).T


def score_function(score: Score) -> ScoreFn:
    """``"dot"`` → :func:`dot_scores`, ``"cosine"`` → :func:`cosine_scores`; a function as is."""
    if callable(score):
        return score
    if score == "dot":
        return dot_scores
    if score == "cosine":
        return cosine_scores
    raise GradsiftError(f"score must be 'dot', 'cosine' or a function, got {score!r}")


def _test_matrix(test: Array) -> torch.Tensor:
    """``test [m, D]`` as a floating tensor (float16 and integers → float32)."""
    t = as_tensor(test)
    if t.dim() != 2:
        raise GradsiftError(f"test vectors must be a matrix [m, D], got {tuple(t.shape)}")
    if not t.is_floating_point() or t.dtype == torch.float16:
        t = t.float()
    return t


def _scored_blocks(
    blocks: Iterable[RowBlock], test: torch.Tensor, score: Score
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first_row, scores [r, m])``, each block cast to ``test``'s dtype and device."""
    fn = score_function(score)
    for first_row, block in blocks:
        b = as_tensor(block)
        if b.dim() != 2 or b.shape[1] != test.shape[1]:
            raise GradsiftError(
                f"train rows {tuple(b.shape)} and test vectors {tuple(test.shape)} differ in "
                "width: score them in the same (projected or unprojected) space"
            )
        yield first_row, fn(b.to(test.device, test.dtype), test)


def pairwise_scores(blocks: Iterable[RowBlock], test: Array, score: Score = "dot") -> np.ndarray:
    """The whole score matrix float64 ``[n, m]`` over blocks that cover rows ``0 … n−1``
    in order (small problems; :func:`pairwise_topk` streams)."""
    test_t = _test_matrix(test)
    pieces = [(f, s.double().cpu().numpy()) for f, s in _scored_blocks(blocks, test_t, score)]
    if not pieces:
        return np.zeros((0, len(test_t)))
    return concat_rows(pieces)


def pairwise_topk(
    blocks: Iterable[RowBlock], test: Array, k: int, score: Score = "dot"
) -> tuple[StreamingTopK, StreamingTopK]:
    """The ``k`` most helpful (largest) and most harmful (smallest) train rows per test row.

    Args:
        blocks: ``(first_row, block [r, D])`` train rows, in any order and cut (e.g.
            ``GradientStore.iter_blocks()``, one rank's shards).
        test: test-side vectors ``[m, D]``; scores are computed in their dtype (float32
            for float16 or integer input) and on their device.
        k: rows kept per test row.
        score: ``"dot"``, ``"cosine"`` or ``(block [r, D], test [m, D]) → [r, m]``.

    Returns:
        ``(helpful, harmful)`` partial results; ``.result()`` gives
        ``(values float64 [m, k'], indices int64 [m, k'])``, best first, ties by lower row.
    """
    test_t = _test_matrix(test)
    helpful = StreamingTopK(len(test_t), k, largest=True)
    harmful = StreamingTopK(len(test_t), k, largest=False)
    for first_row, scores in _scored_blocks(blocks, test_t, score):
        fold_block(helpful, scores, first_row)
        fold_block(harmful, scores, first_row)
    return helpful, harmful


# --------------------------------------------------------------------------- quadratic form


def preconditioner_map(
    preconditioner: Preconditioner | None, dim: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map ``block [r, D] → rows P g_i [r, D]`` of a :data:`Preconditioner`.

    ``dim`` (``D``), when given, is checked against a matrix's shape.
    """
    if preconditioner is None:
        return lambda g: g
    if not isinstance(preconditioner, np.ndarray | torch.Tensor):  # (a tensor has .solve)
        solve = getattr(preconditioner, "solve", None)  # an influence solver
        if callable(solve):
            return solve
        if callable(preconditioner):
            return preconditioner
    matrix = torch.as_tensor(np.asarray(preconditioner), dtype=torch.float64)
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise GradsiftError(f"the preconditioner must be [D, D], got {tuple(matrix.shape)}")
    if dim is not None and matrix.shape[0] != dim:
        raise GradsiftError(f"the preconditioner must be [{dim}, {dim}], got {tuple(matrix.shape)}")
    return lambda g: g @ matrix.to(g.device, g.dtype)


def quadratic_form(g: Array, pg: Array) -> np.ndarray:
    """``g_iᵀ (P g_i)`` per row: float64 ``[r]`` from ``g [r, D]`` and ``pg = P g [r, D]``."""
    g_t, pg_t = as_tensor(g), as_tensor(pg)
    if pg_t.shape != g_t.shape:
        raise GradsiftError(
            f"the preconditioner returned {tuple(pg_t.shape)} for {tuple(g_t.shape)}"
        )
    return (g_t.double() * pg_t.double()).sum(dim=1).cpu().numpy()


def self_influence_rows(
    blocks: Iterable[RowBlock],
    preconditioner: Preconditioner | None = None,
    *,
    dim: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_row, g_iᵀ P g_i float64 [r])`` per block: self-influence, higher = more
    suspicious (``P = (H + λI)⁻¹``: the influence-function self-influence; ``P = I``:
    ``‖g_i‖²``). Each block is cast to float64 (on its device) before ``P`` is applied."""
    apply = preconditioner_map(preconditioner, dim)
    for first_row, block in blocks:
        g = as_tensor(block).to(torch.float64)
        yield first_row, quadratic_form(g, apply(g))


def concat_rows(pieces: Iterable[tuple[int, np.ndarray]]) -> np.ndarray:
    """Join per-row pieces ``(first_row, values [r, ...])`` that follow each other from
    row 0 (as blocks of one array or one store come) into ``[n, ...]``."""
    parts, expected = [], 0
    for first_row, values in pieces:
        if first_row != expected:
            raise GradsiftError(f"row block starts at {first_row}, expected {expected}")
        parts.append(np.asarray(values))
        expected += len(parts[-1])
    if not parts:
        raise GradsiftError("no rows to join")
    return np.concatenate(parts)
