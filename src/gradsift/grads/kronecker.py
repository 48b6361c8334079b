"""Factored (Kronecker) projection of per-sample gradients, never forming them.

For a tracked ``nn.Linear`` / ``nn.Conv2d`` layer with inputs ``a_{i,t}`` and output
gradients ``δ_{i,t}`` in sequence form (:mod:`gradsift.grads.capture`), sample *i*'s
gradient is ``G_i = Σ_t δ_{i,t} a_{i,t}ᵀ`` (``[d_out, d_in]``; a tracked bias is the extra
input column ``a = 1``). Its projection

    ``Z_i = P_outᵀ G_i P_in = Σ_t (P_outᵀ δ_{i,t}) (P_inᵀ a_{i,t})ᵀ``   (``[k_out, k_in]``)

is formed from the projected factors (a batched matmul ``btk,btl->bkl``), so the cost is
one batched forward plus a backward that stops at the tracked layers' outputs (no
weight-gradient products: ``δ`` is the gradient w.r.t. each output's autograd edge), plus
thin matmuls per layer; memory does not grow with the parameter count (no
``[B, d_out, d_in]`` tensor of a projected layer, no dense projection matrix). A
convolution's input is projected by a convolution with the columns of ``P_in`` as
kernels, never unfolded. Each layer takes the cheapest of three contraction orders
(:class:`gradsift.grads.kronecker_layer.LayerProjection`), all giving the same ``Z``.
Flattened row-major, ``vec(Z_i) = (P_out ⊗ P_in)ᵀ vec(G_i)`` with ``vec`` the row-major
flattening of ``W.grad`` (a Conv2d weight ``[C_out, C_in, kh, kw]`` as
``[C_out, C_in·kh·kw]``); :meth:`FactoredProjector.dense_matrix` gives that matrix in the
tracked-parameter layout.

Factors (``ProjectionConfig(kind="kronecker", dim=k_in, dim_out=k_out, seed=s)``):
``P_in [d_in(+1), k_in]`` and ``P_out [d_out, k_out]`` have i.i.d. N(0, 1/k) entries
(``k`` = their column count), drawn from ``SeedSequence([s, h(layer name), side])`` with
``h`` the first 8 bytes of SHA-256 of the module name (little-endian) and side 0 for
``P_in``, 1 for ``P_out``: the same seed gives the same matrices on every rank, in every
run, whatever else is tracked. ``E[P Pᵀ] = I`` for each factor, and the two are
independent, so ``E[(P_out ⊗ P_in)(P_out ⊗ P_in)ᵀ] = I``: inner products are preserved in
expectation. A side with ``d ≤ k`` uses the identity (exact, and smaller). The variance is
larger than that of a dense Gaussian projection of the same total dimension ``k_out·k_in``
(see ``benchmarks/factored_projection.py``).

The rows of a batch must be independent (eval mode); the first call checks this once by
recomputing its highest-loss row alone. Weights used outside their module call (tied
weights, functional use) are caught once too: the first chunk's backward also forms the
parameters' batch gradients, and the sum of its projected rows must match them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from gradsift.errors import GradientError
from gradsift.grads.capture import (
    Layer,
    LayerCapture,
    captured_backward,
    check_chunk_size,
    check_sum,
    chunked,
    finite_rows,
    tracked_layers,
)
from gradsift.grads.kronecker_layer import LayerProjection
from gradsift.grads.layout import Block, batch_size_of, check_eval_mode, layout_of, slice_batch
from gradsift.grads.projection import ProjectionConfig, seeded_generator
from gradsift.task import Task

__all__ = [
    "FACTORABLE",
    "FactoredProjector",
    "factor_entropy",
    "factorable_modules",
    "layer_factors",
]

#: Layer types whose gradients the factored projection handles.
FACTORABLE = (nn.Linear, nn.Conv2d)

#: Columns of the projected batch gradient compared with the sum of the rows (the check
#: that catches weights used outside their module call).
CHECK_COLUMNS = 2

SEEDING = (
    "P_in/P_out ~ N(0, 1/k) from SeedSequence([seed, sha256(module name)[:8] little-endian, "
    "side 0=in 1=out]) via torch.randn(d, k, float64); identity where d <= k"
)


def factorable_modules(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` / ``nn.Conv2d`` modules (Conv2d: ``groups=1``, zero
    padding) whose weight is trainable and not tied to another parameter name: a tracking
    spec (``task.tracked = factorable_modules(model)``) for "all linear layers"."""
    named = dict(model.named_parameters())
    names = []
    for name, m in model.named_modules():
        if not isinstance(m, FACTORABLE) or not m.weight.requires_grad:
            continue
        if named.get(f"{name}.weight") is not m.weight:  # tied: listed under another name
            continue
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
            continue
        names.append(name)
    return names


def factor_entropy(seed: int, name: str, side: int) -> list[int]:
    """The ``SeedSequence`` entropy ``[seed, h(name), side]`` of one factor of layer
    ``name`` (side 0: ``P_in``, 1: ``P_out``), as recorded in a store's manifest."""
    word = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return [seed, word, side]


def _factor(seed: int, name: str, side: int, d: int, k: int) -> torch.Tensor:
    if d <= k:
        return torch.eye(d, dtype=torch.float64)
    gen = seeded_generator(*factor_entropy(seed, name, side))
    return torch.randn(d, k, generator=gen, dtype=torch.float64) / k**0.5


def _rows_in(layer: Layer) -> int:
    """Rows of ``P_in``: the input features, plus the constant-1 column of a tracked bias."""
    return (layer.d_in if layer.weight else 0) + (1 if layer.bias else 0)


def layer_factors(
    config: ProjectionConfig, name: str, d_out: int, d_in: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P_out [d_out, k_out], P_in [d_in, k_in])`` float64 of layer ``name``, where
    ``k_out = min(d_out, dim_out or dim)``, ``k_in = min(d_in, dim)`` (``d_in`` counts the
    bias column if the bias is tracked)."""
    k_out = config.dim_out if config.dim_out is not None else config.dim
    return _factor(config.seed, name, 1, d_out, k_out), _factor(
        config.seed, name, 0, d_in, config.dim
    )


class FactoredProjector:
    """Projected per-sample gradients ``Z [B, dim]`` of tracked Linear/Conv2d layers.

    Row *i* is the concatenation over layers (order of first appearance in
    ``task.tracked_parameters``) of ``vec(P_outᵀ ∇_W ℓ(z_i) P_in)`` (row-major
    ``k_out × k_in``; block ``out_blocks[j]``), the gradient of sample *i*'s own loss,
    not divided by ``B``. Same ``compute`` contract as
    :class:`gradsift.grads.computer.GradientComputer`, with projected rows.

    Args:
        model: the model, in eval mode.
        task: per-sample losses and tracked parameters (weights/biases of Linear/Conv2d
            only; :func:`factorable_modules` lists them).
        config: ``kind="kronecker"``; ``dim`` = ``k_in``, ``dim_out`` = ``k_out``.
        measurement: differentiate ``task.measurement`` (test side of influence).
        chunk_size: samples per forward/backward pass (memory ∝ chunk_size × activations).
        rtol: tolerance of the check ``Σ_i Z_i`` = projected batch gradient on the first
            ``CHECK_COLUMNS`` columns of each layer block, run on the first chunk (catches
            weights used outside their module call; the other chunks skip the parameter
            gradients), and of the one-time row-independence check; ``None`` skips both.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        config: ProjectionConfig,
        measurement: bool = False,
        chunk_size: int = 64,
        rtol: float | None = 1e-3,
    ) -> None:
        if config.kind != "kronecker":
            raise ValueError(f"FactoredProjector needs kind='kronecker', got {config.kind!r}")
        if config.dim < 1 or (config.dim_out is not None and config.dim_out < 1):
            raise ValueError(f"projection dims must be >= 1, got {config.dim}, {config.dim_out}")
        self.model, self.task, self.config = model, task, config
        self.measurement, self.chunk_size = measurement, check_chunk_size(chunk_size)
        self.rtol = rtol
        self.params = task.tracked_parameters(model)
        self.layout: list[Block] = layout_of(self.params)
        self.layers: list[Layer] = tracked_layers(
            model, self.params, FACTORABLE, "the factored (Kronecker) projection"
        )
        self._index = {layer.module_name: j for j, layer in enumerate(self.layers)}
        self._projections: dict[tuple[int, torch.device], LayerProjection] = {}
        self.out_blocks: list[Block] = []
        offset = 0
        k_out = config.dim_out if config.dim_out is not None else config.dim
        for layer in self.layers:
            shape = (min(layer.d_out, k_out), min(_rows_in(layer), config.dim))
            self.out_blocks.append(Block(layer.module_name, shape, offset))
            offset += shape[0] * shape[1]
        self.dim = offset
        first = next(iter(self.params.values()))
        self.dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        self._device = first.device
        self._rows_checked = self._sums_checked = rtol is None

    # ------------------------------------------------------------------ public
    def compute(self, batch: Any, first_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Z [B, dim], losses [B])``; ``Z`` is float64 for float64 parameters, else
        float32."""
        check_eval_mode(self.model)
        Z, losses = chunked(self._chunk, batch, self.chunk_size, first_index)
        if not self._rows_checked and len(losses) > 1:
            self._check_rows(batch, Z, losses)
        return Z, losses

    def factors(self, layer: Layer) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_out [d_out, k_out], P_in [d_in(+1), k_in])`` float64 of a tracked layer."""
        return layer_factors(self.config, layer.module_name, layer.d_out, _rows_in(layer))

    def dense_matrix(self) -> torch.Tensor:
        """The equivalent dense matrix ``M [D, dim]`` float64: ``Z = G @ M`` for flat
        per-sample gradients ``G [B, D]`` in :attr:`layout` order (for tests; ``D × dim``)."""
        M = torch.zeros(self.layout[-1].stop, self.dim, dtype=torch.float64)
        blocks = {b.name: b for b in self.layout}
        for layer, out in zip(self.layers, self.out_blocks, strict=True):
            P_out, P_in = self.factors(layer)
            cols = slice(out.offset, out.stop)
            if layer.weight:
                w = blocks[layer.weight]
                M[w.offset : w.stop, cols] = torch.kron(P_out, P_in[: layer.d_in])
            if layer.bias:
                b = blocks[layer.bias]
                M[b.offset : b.stop, cols] = torch.kron(P_out, P_in[-1:])
        return M

    def manifest(self) -> dict[str, Any]:
        """What a store records besides ``config.to_dict()`` (its ``extra["kronecker"]``):
        the factor seeding and, per layer, its shapes, output block, the ``SeedSequence``
        entropy of each factor (``None`` for an identity side) and the sha256 of the
        factors' float64 bytes (``P_out`` then ``P_in``), so that two stores can be checked
        to use the same matrices (:mod:`gradsift.store.compatible`)."""
        return {
            "seeding": SEEDING,
            "layers": [
                self._layer_entry(layer, out)
                for layer, out in zip(self.layers, self.out_blocks, strict=True)
            ],
        }

    def _layer_entry(self, layer: Layer, out: Block) -> dict[str, Any]:
        P_out, P_in = self.factors(layer)
        digest = hashlib.sha256(P_out.contiguous().numpy().tobytes())
        digest.update(P_in.contiguous().numpy().tobytes())
        seed, name = self.config.seed, layer.module_name
        return {
            "module": name,
            "weight": layer.weight,
            "bias": layer.bias,
            "d_out": layer.d_out,
            "d_in": layer.d_in,
            "k_out": out.shape[0],
            "k_in": out.shape[1],
            "offset": out.offset,
            "seed_out": None if out.shape[0] == layer.d_out else factor_entropy(seed, name, 1),
            "seed_in": None if out.shape[1] == _rows_in(layer) else factor_entropy(seed, name, 0),
            "factors_sha256": digest.hexdigest(),
        }

    # ------------------------------------------------------------------ internals
    def _projection(self, name: str, device: torch.device) -> LayerProjection:
        j = self._index[name]
        key = (j, device)
        if key not in self._projections:
            layer = self.layers[j]
            P_out, P_in = self.factors(layer)
            self._projections[key] = LayerProjection(layer, P_out, P_in, self.dtype, device)
        return self._projections[key]

    def _project_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self._projection(name, x.device).input(x)

    def _project_grad(self, name: str, g: torch.Tensor) -> torch.Tensor:
        return self._projection(name, g.device).grad(g)

    def _chunk(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of one chunk. The backward stops at the tracked layers' outputs (no
        weight-gradient products), except on the first chunk while the sum check is
        pending: that one also forms the parameters' batch gradients to compare with."""
        n = batch_size_of(batch)
        check = not self._sums_checked
        capture = LayerCapture(
            self.model, self.layers, n, self._project_input, self._project_grad,
            raw=True, edges=True,
        )  # fmt: skip
        losses, batch_grads = captured_backward(
            self.model, self.task, self.params, batch, self.measurement, capture, check
        )
        grads = dict(zip(self.params, batch_grads, strict=True)) if check else {}
        Z = torch.empty(n, self.dim, dtype=self.dtype, device=self._device)
        for layer, out in zip(self.layers, self.out_blocks, strict=True):
            block = Z[:, out.offset : out.stop].view(n, *out.shape)
            proj = self._projection(layer.module_name, self._device)
            pairs = capture.pairs(layer.module_name)
            if not pairs:  # the layer did not influence the loss
                block.zero_()
            for j, (a_s, d_s) in enumerate(pairs):
                proj.combine(a_s, d_s, block, accumulate=j > 0)
            if check:
                assert self.rtol is not None
                m = min(CHECK_COLUMNS, out.shape[1])
                gw = grads[layer.weight] if layer.weight else None
                gb = grads[layer.bias] if layer.bias else None
                ref = proj.batch_columns(gw, gb, m)
                check_sum(layer.module_name, block[:, :, :m].sum(dim=0), ref, self.rtol)
        self._sums_checked = True
        if not torch.isfinite(Z.sum()):  # one pass; finite_rows names the rows
            finite_rows(Z)
        return Z, losses

    def _check_rows(self, batch: Any, Z: torch.Tensor, losses: torch.Tensor) -> None:
        """Once: the highest-loss row computed alone must equal its row in the batch."""
        i = int(losses.argmax())
        alone, _ = self._chunk(slice_batch(batch, i, i + 1))
        err = float((alone[0] - Z[i]).norm())
        scale = float(alone[0].norm()) + float(Z[i].norm()) + 1e-30
        assert self.rtol is not None
        if err > self.rtol * scale and err > 1e-12:
            raise GradientError(
                f"row {i} computed alone differs from its row in the batch (relative error "
                f"{err / scale:.2e}): the model mixes the rows of a batch (batch statistics?), "
                "so the factored projection is wrong here; use GradientComputer + Projector"
            )
        self._rows_checked = True
