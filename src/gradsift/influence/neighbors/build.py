"""Making and filling indexes: :func:`make_index`, :func:`build_index` (streaming fill)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from gradsift.errors import GradsiftError
from gradsift.influence.neighbors.base import IndexConfig, NeighborIndex, as_float32
from gradsift.influence.neighbors.exact import ExactIndex
from gradsift.influence.neighbors.faiss_index import FaissIndex
from gradsift.store.gradient_store import GradientStore

__all__ = ["Blocks", "Source", "build_index", "make_index"]

Blocks = Iterable[tuple[int, np.ndarray] | np.ndarray]
Source = np.ndarray | torch.Tensor | GradientStore | Blocks


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
            sample = source.sample_rows(config.train_size, config.seed)[1].astype(np.float32)
        blocks: Iterator[tuple[int | None, np.ndarray]] = iter(
            source.iter_blocks(config.block_rows)
        )
        dim = source.dim
    elif isinstance(source, np.ndarray | torch.Tensor):
        matrix = as_float32(source)
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
        dim = as_float32(first[1]).shape[-1]
        blocks = _chain([first], blocks)
        if config.backend == "ivf" and sample is None:
            buffered, blocks = _buffer_rows(blocks, config.train_size)
            sample = np.concatenate([as_float32(b) for _, b in buffered])[: config.train_size]
            blocks = _chain(buffered, blocks)
    index = make_index(dim, config)
    if sample is not None:
        index.train(sample)
    for first_row, block in blocks:
        index.add(block, first_row)
    if index.ntotal == 0:
        raise GradsiftError("the source has no rows: nothing to index")
    return index


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
