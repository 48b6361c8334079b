"""The output-space likelihood behind the Gauss–Newton / Fisher curvatures.

A task's per-sample loss is seen as ``ℓ_i = −log p(y_i | f_i)`` of the model outputs
``f_i`` (logits ``[..., C]``). Three likelihoods are known, each with

- its **output Hessian** ``H_out = ∂²ℓ/∂f²`` (the same for every label ``y``), which
  defines the GGN ``(1/n) Σ_i J_iᵀ H_out,i J_i`` (:mod:`gradsift.influence.ggn`);
- a **square root** ``H_out = L Lᵀ`` given as ``K`` columns (``δ = J_iᵀ L[:, k]`` for
  ``k < K`` gives the exact expected Fisher as a sum of ``K`` outer products);
- **sampled output gradients** ``∂ℓ(ŷ)/∂f`` with ``ŷ ~ p(· | f)`` (the true Fisher,
  one Monte-Carlo label per sample).

=================  ===============================  ==============================
likelihood         ``ℓ``                            ``H_out``
=================  ===============================  ==============================
``softmax_ce``     ``−log softmax(f)[y]``           ``diag(p) − p pᵀ``, ``p = softmax(f)``
``bce``            ``BCE(σ(f), y)`` per element     ``σ(f)(1 − σ(f))`` per element
``mse``            ``½ ‖f − y‖²`` (unit Gaussian)   ``I``
=================  ===============================  ==============================

The ``mse`` convention is the half squared error (``H_out = I``); a loss written as
``F.mse_loss(f, y, reduction="none").mean(-1)`` is ``(2/C)×`` that, so scale the curvature
(or the damping) accordingly. Outputs with extra positions ``[B, T, C]`` (sequences)
are handled position by position (``bce`` and ``mse``: element by element).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from gradsift.errors import GradsiftError
from gradsift.task import Task

__all__ = [
    "LIKELIHOODS",
    "Likelihood",
    "hessian_product",
    "hessian_sqrt_columns",
    "resolve_likelihood",
    "sample_output_gradient",
]

Likelihood = Literal["softmax_ce", "bce", "mse"]
LIKELIHOODS: tuple[str, ...] = get_args(Likelihood)


def resolve_likelihood(task: Task, likelihood: str | None) -> str:
    """``likelihood``, or the task's ``head_loss`` when None (``ClassificationTask`` →
    ``softmax_ce``, ``BinaryClassificationTask`` → ``bce``)."""
    kind = likelihood if likelihood is not None else task.head_loss
    if kind is None:
        raise GradsiftError(
            f"{type(task).__name__} declares no head_loss, so the output likelihood of its "
            f"loss is unknown: pass likelihood= one of {LIKELIHOODS}"
        )
    if kind not in LIKELIHOODS:
        raise GradsiftError(f"unknown likelihood {kind!r}; use one of {LIKELIHOODS}")
    return kind


def hessian_product(kind: str, outputs: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``H_out U`` per position: ``outputs [..., C]`` (detached), ``U [m, ..., C]``."""
    if kind == "softmax_ce":
        p = torch.softmax(outputs, dim=-1)
        return p * U - p * (p * U).sum(dim=-1, keepdim=True)
    if kind == "bce":
        s = torch.sigmoid(outputs)
        return s * (1 - s) * U
    return U


def hessian_sqrt_columns(kind: str, outputs: torch.Tensor) -> list[torch.Tensor]:
    """Columns ``L[:, k]`` (each shaped like ``outputs``) with ``Σ_k L_k L_kᵀ = H_out``.

    ``softmax_ce``: ``L = diag(√p) − p √pᵀ`` (``C`` columns; ``L Lᵀ = diag(p) − p pᵀ``
    because ``Σ p = 1``); ``bce``: ``√(σ(1 − σ))`` (one column); ``mse``: the unit vectors.
    """
    if kind == "softmax_ce":
        p = torch.softmax(outputs, dim=-1)
        r = p.sqrt()
        eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
        # column k: e_k √p_k − p √p_k
        return [(eye[k] - p) * r[..., k : k + 1] for k in range(p.shape[-1])]
    if kind == "bce":
        s = torch.sigmoid(outputs)
        return [(s * (1 - s)).sqrt()]
    if outputs.dim() == 1:
        return [torch.ones_like(outputs)]
    eye = torch.eye(outputs.shape[-1], dtype=outputs.dtype, device=outputs.device)
    return [eye[k].expand_as(outputs) for k in range(outputs.shape[-1])]


def sample_output_gradient(
    kind: str, outputs: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """``∂ℓ(ŷ)/∂f`` with one label ``ŷ ~ p(· | f)`` per position, shaped like ``outputs``.

    ``generator`` is a CPU generator (draws are made on the CPU in float64, so they do
    not depend on the device): ``softmax_ce`` ``p − e_ŷ``; ``bce`` ``σ − ŷ``; ``mse`` ``ε``
    with ``ε ~ N(0, I)`` (the sign of ``f − ŷ`` does not matter in ``δ δᵀ``).
    """
    f = outputs.detach().to("cpu", torch.float64)
    if kind == "softmax_ce":
        p = torch.softmax(f, dim=-1)
        flat = p.reshape(-1, p.shape[-1])
        y = torch.multinomial(flat, 1, generator=generator)
        onehot = torch.zeros_like(flat).scatter_(1, y, 1.0)
        g = (flat - onehot).reshape(p.shape)
    elif kind == "bce":
        s = torch.sigmoid(f)
        g = s - torch.bernoulli(s, generator=generator)
    else:
        g = torch.randn(f.shape, generator=generator, dtype=torch.float64)
    return g.to(outputs.device, outputs.dtype)
