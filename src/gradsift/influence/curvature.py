"""The curvature-operator interface that every inverse-HVP solver works on.

A **curvature operator** multiplies row vectors by a symmetric ``[D, D]`` matrix over the
tracked parameters (``D`` scalars, flattened in :class:`~gradsift.grads.layout.Block`
layout order, the layout of :class:`~gradsift.grads.computer.GradientComputer` rows)::

    C = (1/n) Σ_i C_i + weight_decay · I

with one term ``C_i`` per training sample:

=========================================================  ===============================
operator                                                   ``C_i``
=========================================================  ===============================
:class:`~gradsift.influence.hessian.HessianOperator`       ``∇²_θ ℓ(z_i; θ)`` (exact Hessian)
:class:`~gradsift.influence.fisher.GradientFisherOperator` ``g_i g_iᵀ`` (empirical Fisher)
=========================================================  ===============================

A K-FAC / EK-FAC or Gauss–Newton operator plugs in the same way: implement
:class:`CurvatureOperator` (most simply by subclassing :class:`CurvatureBase`), pass it to
``solver.fit_operator(op)``, and every solver (:mod:`gradsift.influence.solvers`),
:class:`~gradsift.influence.scores.InfluenceScorer`, FastIF and the self-influence detectors
use it unchanged.

Conventions every implementation keeps:

- **Shapes.** Vectors are rows: ``V [m, D]`` (or one vector ``[D]``) → a tensor of the same
  shape, computed in the operator's ``dtype`` on its ``device``.
- **Sign.** ``C`` is the curvature of the *minimised* training objective, including the
  coupled L2 term ``weight_decay · I`` (``torch.optim`` ``weight_decay``: objective
  ``+ (weight_decay/2)‖θ‖²``). At a minimum of a convex loss it is positive semi-definite;
  the Hessian of a non-convex loss may have negative eigenvalues.
- **Damping.** The operator never includes the solver's damping ``λ``: solvers invert
  ``C + λI`` and add ``λ`` themselves.
- **Block-diagonal restriction.** With ``block_diagonal=True`` the operator is
  ``Σ_b P_b C P_b`` (one block per tracked tensor, cross-block curvature dropped, as in
  DataInf / EK-FAC style approximations); ``dense(block=b)`` is block ``b``'s
  ``[d_b, d_b]`` matrix either way.

What the solvers call: ``layout``, ``dim``, ``dtype``, ``device``, ``block_diagonal``
(all); ``matvec`` (CG, residuals, full-batch LiSSA); ``dense`` (exact); ``top_eigenvalue``
(LiSSA's scale); ``sample_batch`` + ``batch_matvec`` (mini-batch LiSSA).

:class:`CurvatureBase` implements all of it once — mean over the data, weight decay,
block restriction, the dense matrix by products and power iteration — from three hooks:
the data in parts, the summed products of one part, and a part's size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from gradsift.errors import GradsiftError
from gradsift.grads.layout import Block
from gradsift.progress import track

__all__ = ["CurvatureBase", "CurvatureOperator", "power_iteration"]


@runtime_checkable
class CurvatureOperator(Protocol):
    """What every solver needs from a curvature ``C`` (see the module docstring).

    Attributes:
        layout: the tracked tensors as :class:`~gradsift.grads.layout.Block` s, in order.
        dim: ``D`` (``layout[-1].stop``).
        dtype, device: products are computed in this dtype on this device.
        block_diagonal: whether ``C`` is restricted to its diagonal blocks.
        weight_decay: the coupled L2 coefficient included in ``C`` (``≥ 0``).
    """

    layout: list[Block]
    dim: int
    dtype: torch.dtype
    device: torch.device
    block_diagonal: bool
    weight_decay: float

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """``C V`` row-wise over all training data: ``[m, D]`` (or ``[D]``) → same shape."""
        ...

    def batch_matvec(self, V: torch.Tensor, batch: Any) -> torch.Tensor:
        """``C_b V`` with ``C_b`` the mean over ``batch`` (from :meth:`sample_batch`)."""
        ...

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> Any:
        """A mini-batch of ``min(batch_size, n)`` distinct training samples."""
        ...

    def dense(self, block: int | None = None) -> torch.Tensor:
        """The explicit ``C [D, D]`` (or block ``block``'s ``[d_b, d_b]``), symmetric."""
        ...

    def top_eigenvalue(
        self, iters: int = 100, tol: float = 1e-3, seed: int = 0
    ) -> tuple[float, int]:
        """Largest-magnitude eigenvalue of ``C``: ``(λ, iterations)``."""
        ...


def as_rows(V: torch.Tensor | np.ndarray, dim: int) -> tuple[torch.Tensor, bool]:
    """``V`` (``[m, dim]`` or ``[dim]``, tensor or array) as a detached ``[m, dim]`` tensor,
    and whether it was one vector; ``GradsiftError`` for any other shape."""
    V = torch.as_tensor(np.asarray(V) if not isinstance(V, torch.Tensor) else V).detach()
    squeeze = V.dim() == 1
    W = V.reshape(1, -1) if squeeze else V
    if W.dim() != 2 or W.shape[1] != dim:
        raise GradsiftError(
            f"vectors must have shape [m, {dim}] (the tracked-parameter layout), got "
            f"{tuple(V.shape)}"
        )
    return W, squeeze


class CurvatureBase(ABC):
    """The shared implementation of :class:`CurvatureOperator`.

    A subclass sets ``layout``, ``dim``, ``n`` (training samples), ``dtype``, ``device``,
    ``block_diagonal`` and ``weight_decay`` and implements

    - :meth:`_full_parts`: the training data in parts (batches, row chunks) for a full pass;
    - :meth:`_sum_products`: ``Σ_{i ∈ part} C_i V`` for one part (the full ``C_i``);
    - :meth:`_part_size`: the number of samples in a part;

    and optionally :meth:`_take` (what :meth:`sample_batch` returns for row indices),
    :meth:`_batch_part` (a sampled batch → a part) and :meth:`_sum_block_products` (a
    cheaper product restricted to one block).
    """

    #: What the matrix is called in progress bars.
    name: ClassVar[str] = "curvature"

    layout: list[Block]
    dim: int
    n: int
    dtype: torch.dtype
    device: torch.device
    block_diagonal: bool
    weight_decay: float
    #: Identity columns per product when :meth:`dense` builds the matrix.
    vector_chunk: int = 64

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def _full_parts(self) -> Iterable[Any]:
        """The training data as parts that together hold every sample once."""

    @abstractmethod
    def _sum_products(self, part: Any, V: torch.Tensor) -> torch.Tensor:
        """``Σ_{i ∈ part} C_i V`` for checked ``V [m, D]`` (no block restriction)."""

    @abstractmethod
    def _part_size(self, part: Any) -> int:
        """The number of training samples in ``part``."""

    def _take(self, index: torch.Tensor) -> Any:
        """The batch of training rows ``index`` that :meth:`sample_batch` returns."""
        return index

    def _batch_part(self, batch: Any) -> Any:
        """A batch given to :meth:`batch_matvec` as a part for :meth:`_sum_products`."""
        return batch

    def _sum_block_products(self, part: Any, V: torch.Tensor, block: Block) -> torch.Tensor:
        """Block ``block`` of ``Σ_{i ∈ part} C_i P_b V``: ``[m, d_b]``.

        Default: one full product of ``V`` with every other block zeroed.
        """
        Vb = torch.zeros_like(V)
        Vb[:, block.offset : block.stop] = V[:, block.offset : block.stop]
        return self._sum_products(part, Vb)[:, block.offset : block.stop]

    # ------------------------------------------------------------------ products
    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """``C V``: rows of ``V [m, D]`` (or one vector ``[D]``) times the full-data ``C``."""
        V, squeeze = self._check(V)
        out = torch.zeros_like(V)
        for part in self._full_parts():
            out += self._sum(part, V)
        out = out / self.n + self.weight_decay * V
        return out[0] if squeeze else out

    def batch_matvec(self, V: torch.Tensor, batch: Any) -> torch.Tensor:
        """``C_b V`` with ``C_b`` the mean over ``batch`` (plus weight decay)."""
        V, squeeze = self._check(V)
        part = self._batch_part(batch)
        out = self._sum(part, V) / self._part_size(part) + self.weight_decay * V
        return out[0] if squeeze else out

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> Any:
        """A mini-batch of ``min(batch_size, n)`` distinct training rows drawn with ``generator``."""
        idx = torch.randperm(self.n, generator=generator)[: min(batch_size, self.n)]
        return self._take(idx)

    def dense(self, block: int | None = None) -> torch.Tensor:
        """The explicit ``C`` ``[D, D]`` (or block ``block``'s ``[d_b, d_b]``), symmetrised.

        Costs ``D`` (or ``d_b``) products over the data: for small ``D`` only.
        """
        blocks = self.layout if block is None else [self.layout[block]]
        lo, hi = blocks[0].offset, blocks[-1].stop
        cols = []
        eye_rows = range(lo, hi, self.vector_chunk)
        for start in track(eye_rows, f"explicit {self.name}", total=len(eye_rows)):
            stop = min(start + self.vector_chunk, hi)
            E = torch.zeros(stop - start, self.dim, dtype=self.dtype, device=self.device)
            E[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            cols.append(self.matvec(E)[:, lo:hi])
        C = torch.cat(cols)
        return (C + C.T) / 2

    def top_eigenvalue(
        self, iters: int = 100, tol: float = 1e-3, seed: int = 0
    ) -> tuple[float, int]:
        """Largest-magnitude eigenvalue of ``C`` by power iteration: ``(λ, iterations)``.

        Stops when the Rayleigh quotient changes by less than ``tol`` (relative). For a
        positive semi-definite ``C`` this is ``λ_max``.
        """
        return power_iteration(self.matvec, self.dim, self.dtype, self.device, iters, tol, seed)

    # ------------------------------------------------------------------ internals
    def _sum(self, part: Any, V: torch.Tensor) -> torch.Tensor:
        """``Σ_{i ∈ part} C_i V``, block-diagonal part if configured."""
        if not self.block_diagonal:
            return self._sum_products(part, V)
        out = torch.zeros_like(V)
        for b in self.layout:
            out[:, b.offset : b.stop] = self._sum_block_products(part, V, b)
        return out

    def _check(self, V: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """``V`` as ``[m, D]`` in the operator's dtype/device, and whether it was ``[D]``."""
        W, squeeze = as_rows(V, self.dim)
        return W.to(self.device, self.dtype), squeeze


def power_iteration(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    dtype: torch.dtype,
    device: torch.device | str,
    iters: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
) -> tuple[float, int]:
    """Largest-magnitude eigenvalue of a symmetric operator: ``(λ, iterations)``.

    Starts from a seeded unit vector (drawn in float64 on the CPU, so the start does not
    depend on the device) and stops when the Rayleigh quotient changes by less than ``tol``
    (relative).
    """
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g, dtype=torch.float64).to(dtype)
    v = (v / v.norm()).to(device)
    lam = 0.0
    for it in range(1, iters + 1):
        w = matvec(v)
        new = float(v @ w)
        norm = w.norm()
        if norm == 0:
            return 0.0, it
        v = w / norm
        if it > 1 and abs(new - lam) <= tol * abs(new):
            return new, it
        lam = new
    return lam, iters
