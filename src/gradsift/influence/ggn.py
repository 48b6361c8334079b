"""The generalised Gauss–Newton (GGN) matrix of the training loss over the tracked parameters.

:class:`GGNOperator` multiplies row vectors by

    ``G = (1/n) Σ_i J_iᵀ H_out,i J_i + weight_decay · I``

where ``J_i = ∂f(x_i; θ)/∂θ`` is the Jacobian of sample *i*'s model outputs (``[C, D]``,
or ``[T·C, D]`` for sequence outputs) and ``H_out,i`` the Hessian of its loss w.r.t. those
outputs (:mod:`gradsift.influence.kfac.likelihood`: ``diag(p) − ppᵀ`` for softmax
cross-entropy, ``σ(1−σ)`` for BCE, ``I`` for the half squared error). ``G`` is positive
semi-definite; it equals the Hessian when the model is linear in ``θ`` (e.g. only the last
layer tracked), and it is the expected Fisher of the model's predictive distribution, the
matrix that K-FAC and EK-FAC (:mod:`gradsift.influence.kfac`) approximate.

Products run through ``torch.func`` on the tracked parameters only: ``jvp`` (``J V``,
``vmap``-ed over the vectors), the output Hessian, then ``vjp`` (``Jᵀ ·``). No matrix is
formed except by :meth:`~gradsift.influence.curvature.CurvatureBase.dense`. Layout,
dtype, weight decay and the block-diagonal option are those of
:class:`~gradsift.influence.hessian.HessianOperator`; every solver accepts the operator
through ``fit_operator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.func import jvp, vjp, vmap
from torch.utils.data import Dataset, default_collate

from gradsift.grads.layout import FunctionalModel, batch_size_of
from gradsift.influence.curvature import CurvatureBase
from gradsift.influence.hessian import bind_training_data, flatten_params, unflatten_vectors
from gradsift.influence.kfac.likelihood import hessian_product, resolve_likelihood
from gradsift.task import Task

__all__ = ["GGNOperator"]


class GGNOperator(CurvatureBase):
    """Products with the GGN ``(1/n) Σ_i J_iᵀ H_out,i J_i + weight_decay·I``.

    Args:
        model: the trained model (not modified; BatchNorm/Dropout in eval mode).
        task: forward and tracked parameters; its loss must be one of the known
            likelihoods (see ``likelihood``).
        data: the training data.
        likelihood: ``"softmax_ce"``, ``"bce"`` or ``"mse"`` (half squared error,
            ``H_out = I``); None takes ``task.head_loss``.
        weight_decay: coupled L2 coefficient of training (adds ``weight_decay · I``).
        batch_size: samples per ``torch.func`` call; vector_chunk: vectors per call.
        block_diagonal: keep only the per-tensor diagonal blocks.
        collate_fn: see :class:`~gradsift.influence.hessian.BatchSource`.
    """

    name = "GGN"

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        data: Dataset | tuple[Any, ...],
        *,
        likelihood: str | None = None,
        weight_decay: float = 0.0,
        batch_size: int = 256,
        block_diagonal: bool = False,
        vector_chunk: int = 64,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
    ) -> None:
        bind_training_data(
            self,
            model,
            task,
            data,
            weight_decay,
            batch_size,
            block_diagonal,
            vector_chunk,
            collate_fn,
        )
        self.likelihood = resolve_likelihood(task, likelihood)

    # ------------------------------------------------------------------ CurvatureBase hooks
    def _full_parts(self) -> Iterable[Any]:
        return (batch for _, batch in self.data.batches(self.batch_size))

    def _part_size(self, part: Any) -> int:
        return batch_size_of(part)

    def _take(self, index: torch.Tensor) -> Any:
        return self.data.take(index)

    def _sum_products(self, part: Any, V: torch.Tensor) -> torch.Tensor:
        """``Σ_{i ∈ batch} J_iᵀ H_out,i J_i V``, ``vector_chunk`` vectors per call."""

        def outputs(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.task.forward(FunctionalModel(self.model, p), part)

        f, pullback = vjp(outputs, self.params)
        f = f.detach()

        def jv(t: dict[str, torch.Tensor]) -> torch.Tensor:
            return jvp(outputs, (self.params,), (t,))[1]

        chunks = []
        for s in range(0, V.shape[0], self.vector_chunk):
            tangents = unflatten_vectors(V[s : s + self.vector_chunk], self.layout)
            HJV = hessian_product(self.likelihood, f, vmap(jv)(tangents))
            back = vmap(lambda u: pullback(u)[0])(HJV)
            chunks.append(flatten_params(back, self.layout).detach())
        return torch.cat(chunks)
