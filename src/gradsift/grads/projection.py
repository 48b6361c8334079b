"""Seeded random projection of per-sample gradients, block by block.

Each tracked parameter (a *block* of ``numel`` gradient entries) is mapped to ``dim``
numbers by a random matrix ``R (numel × dim)`` with ``E[R Rᵀ] = I``, so inner products
are preserved in expectation (Johnson–Lindenstrauss). Blocks with ``numel <= dim`` pass
through unchanged (exact, and smaller). ``R`` is never held whole: it is generated from
the seed in row chunks of at most ``chunk_rows`` rows, each chunk from its own
``SeedSequence([seed, block, chunk])``, so the result does not depend on the batch size.
Chunks are cached while the cache stays under ``cache_bytes``.

Kinds (entries of ``R``):

- ``gaussian``: N(0, 1/dim);
- ``rademacher``: ±1/√dim;
- ``sparse``: the very sparse JL of Li, Hastie & Church, ``±√(s/dim)`` with probability
  ``1/(2s)`` each and 0 otherwise, ``s = √numel``.

``kind="kronecker"`` is not a matrix over flat gradients: each tracked ``nn.Linear`` /
``nn.Conv2d`` layer is projected by ``P_out ⊗ P_in`` from its inputs and output gradients,
without forming the per-sample gradient (:class:`gradsift.grads.kronecker.FactoredProjector`);
``dim`` is then ``k_in`` and ``dim_out`` is ``k_out`` (default ``dim``), so a layer gives
``k_out × k_in`` numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from gradsift.grads.layout import Block

ProjectionKind = Literal["gaussian", "rademacher", "sparse", "kronecker"]
DENSE_KINDS = ("gaussian", "rademacher", "sparse")


@dataclass(frozen=True)
class ProjectionConfig:
    """Settings recorded in a store's manifest.

    ``dim`` is per block for the dense kinds; for ``kind="kronecker"`` it is ``k_in`` per
    layer and ``dim_out`` is ``k_out`` (``None``: same as ``dim``). ``dim_out`` is only
    meaningful for ``"kronecker"``.
    """

    dim: int = 1024
    kind: ProjectionKind = "rademacher"
    seed: int = 0
    dim_out: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Manifest entry; the dense kinds keep their three keys (``dim``, ``kind``, ``seed``)."""
        out = asdict(self)
        if self.kind in DENSE_KINDS and self.dim_out is None:
            del out["dim_out"]
        return out


class Projector:
    """Project flat gradients ``[B, D]`` (layout ``blocks``) to ``[B, out_dim]``."""

    def __init__(
        self,
        blocks: Sequence[Block],
        config: ProjectionConfig,
        chunk_rows: int = 8192,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        if config.dim < 1:
            raise ValueError(f"projection dim must be >= 1, got {config.dim}")
        if config.kind == "kronecker":
            raise ValueError(
                "projection kind 'kronecker' projects layer factors, not flat gradients: use "
                "gradsift.grads.kronecker.FactoredProjector"
            )
        if config.kind not in DENSE_KINDS:
            raise ValueError(
                f"unknown projection kind {config.kind!r}: gaussian, rademacher, sparse "
                "(or kronecker, through FactoredProjector)"
            )
        if config.dim_out is not None:
            raise ValueError("dim_out is a setting of the 'kronecker' projection only")
        self.blocks = list(blocks)
        self.config = config
        self.chunk_rows = chunk_rows
        self.cache_bytes = cache_bytes
        self._cache: dict[tuple[int, int, torch.dtype, str], torch.Tensor] = {}
        self._cached = 0
        self.out_blocks = []
        offset = 0
        for b in self.blocks:
            width = b.numel if b.numel <= config.dim else config.dim
            self.out_blocks.append(Block(b.name, (width,), offset))
            offset += width
        self.out_dim = offset

    def project(self, G: torch.Tensor) -> torch.Tensor:
        """``G [B, D] → [B, out_dim]`` in ``G``'s dtype (accumulated in at least float32)."""
        if G.dim() != 2 or G.shape[1] != self.blocks[-1].stop:
            raise ValueError(
                f"expected gradients [B, {self.blocks[-1].stop}], got {tuple(G.shape)}"
            )
        work = G if G.dtype == torch.float64 else G.float()
        parts = []
        for index, block in enumerate(self.blocks):
            g = work[:, block.offset : block.stop]
            if block.numel <= self.config.dim:
                parts.append(g)
                continue
            out = torch.zeros(G.shape[0], self.config.dim, dtype=work.dtype, device=G.device)
            for chunk, start in enumerate(range(0, block.numel, self.chunk_rows)):
                stop = min(start + self.chunk_rows, block.numel)
                out += g[:, start:stop] @ self._matrix(
                    index, chunk, stop - start, block.numel, work.dtype
                )
            parts.append(out)
        return torch.cat(parts, dim=1).to(G.dtype)

    def _matrix(
        self, block: int, chunk: int, rows: int, numel: int, dtype: torch.dtype
    ) -> torch.Tensor:
        key = (block, chunk, dtype)
        if key in self._cache:
            return self._cache[key]
        R = random_matrix(self.config, block, chunk, rows, numel).to(dtype)
        size = R.numel() * R.element_size()
        if self._cached + size <= self.cache_bytes:
            self._cache[key] = R
            self._cached += size
        return R


def random_matrix(
    config: ProjectionConfig, block: int, chunk: int, rows: int, numel: int
) -> torch.Tensor:
    """Rows of block ``block``'s projection matrix for chunk ``chunk``: ``[rows, dim]`` float64."""
    gen = seeded_generator(config.seed, block, chunk)
    k = config.dim
    if config.kind == "gaussian":
        return torch.randn(rows, k, generator=gen, dtype=torch.float64) / k**0.5
    if config.kind == "rademacher":
        signs = torch.randint(0, 2, (rows, k), generator=gen, dtype=torch.int8).to(torch.float64)
        return (2 * signs - 1) / k**0.5
    s = max(numel**0.5, 1.0)
    u = torch.rand(rows, k, generator=gen, dtype=torch.float64)
    values = torch.zeros_like(u)
    values[u < 1 / (2 * s)] = -1.0
    values[u > 1 - 1 / (2 * s)] = 1.0
    return values * (s / k) ** 0.5


def seeded_generator(*entropy: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``SeedSequence(entropy)`` (non-negative ints):
    the same entropy gives the same stream on every machine and every run."""
    state = np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> 1))
