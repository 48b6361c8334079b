"""One tracked layer's part of the factored projection
(:class:`gradsift.grads.kronecker.FactoredProjector`): its factors on a device, what to keep
of the captured input and output gradient, and the per-sample contraction
``Z_i = Σ_t (P_outᵀδ_{i,t})(P_inᵀã_{i,t})ᵀ`` in the cheapest order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradsift.grads.capture import Layer, conv_padding

__all__ = ["BMM_WEIGHT", "UNFOLD_WEIGHT", "LayerProjection"]

#: Relative cost weights of the contraction orders (measured on one CPU core): a MAC in a
#: per-sample batched matmul costs about twice one in a large GEMM or convolution, and one
#: element of an unfolded (im2col) convolution input about 64 MACs.
BMM_WEIGHT, UNFOLD_WEIGHT = 2, 64


class LayerProjection:
    """One layer's factors on a device, and the cheapest order of contraction.

    With ``ã`` the input with its constant-1 bias column, per sample and ``T`` positions
    (``c = d·k`` for a projected side, 0 for an identity side):

    - ``"both"``: project ``ã`` and ``δ`` as they are recorded,
      ``Z = Σ_t (P_outᵀδ_t)(P_inᵀã_t)ᵀ``: ``T·(c_in + c_out + k_out·k_in)``;
    - ``"grad"``: project ``δ`` only, ``Z = (Σ_t (P_outᵀδ_t) ã_tᵀ) P_in``:
      ``T·(c_out + k_out·d_in) + k_out·d_in·k_in``;
    - ``"input"``: project ``ã`` only, ``Z = P_outᵀ (Σ_t δ_t (P_inᵀã_t)ᵀ)``:
      ``T·(c_in + d_out·k_in) + d_out·k_out·k_in``.

    (``order`` weighs the per-sample contraction by ``BMM_WEIGHT`` and an unfolded input
    by ``UNFOLD_WEIGHT``.) A convolution's input is projected by a convolution whose kernels are the columns of
    ``P_in`` (``[k_in, C_in, kh, kw]``, bias row as the convolution's bias), which gives
    ``P_inᵀã_t`` at every output position without unfolding the input; only ``"grad"``
    unfolds it. Tensors of a convolution are kept feature-major (``[n, features, T]``),
    those of a linear layer position-major (``[n, T, features]``). None forms
    ``[B, d_out, d_in]`` for a projected layer.
    """

    def __init__(
        self,
        layer: Layer,
        P_out: torch.Tensor,
        P_in: torch.Tensor,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.module, self.conv = layer.module, isinstance(layer.module, nn.Conv2d)
        self.weight, self.bias = layer.weight is not None, layer.bias is not None
        (self.d_out, self.k_out), (self.d_in, self.k_in) = P_out.shape, P_in.shape
        self.dtype = dtype
        self.P_out = None if self.d_out == self.k_out else P_out.to(dtype).to(device)
        self.P_in = None if self.d_in == self.k_in else P_in.to(dtype).to(device)
        self._P_in_full = P_in.to(dtype).to(device)  # identity or not: kernels, sum check
        self._check_cols: dict[int, torch.Tensor] = {}
        self._orders: dict[int, str] = {}
        self._kernels: tuple[torch.Tensor, torch.Tensor | None] | None = None
        if self.conv and self.weight:
            rows = self._P_in_full[: self.d_in - int(self.bias)]
            shape = (self.k_in, *self.module.weight.shape[1:])
            kernels = rows.T.reshape(shape).contiguous()
            self._kernels = (kernels, self._P_in_full[-1].clone() if self.bias else None)

    def order(self, T: int) -> str:
        """``"both"``, ``"grad"`` or ``"input"``, the cheapest for ``T`` positions."""
        if T not in self._orders:
            self._orders[T] = min(self._costs(T).items(), key=lambda kv: kv[1])[0]
        return self._orders[T]

    def _costs(self, T: int) -> dict[str, int]:
        k_out, k_in, d_out, d_in = self.k_out, self.k_in, self.d_out, self.d_in
        # a convolution's input is projected by a convolution even for an identity P_in
        c_in = d_in * k_in if (self.P_in is not None or self.conv) else 0
        c_out = 0 if self.P_out is None else d_out * k_out
        raw_in = T * d_in * (UNFOLD_WEIGHT if self.conv else 1)
        return {
            "both": T * (c_in + c_out) + BMM_WEIGHT * T * k_out * k_in,
            "grad": raw_in + T * c_out + BMM_WEIGHT * T * k_out * d_in
            + (k_out * d_in * k_in if self.P_in is not None else 0),
            "input": T * c_in + BMM_WEIGHT * T * d_out * k_in
            + (d_out * k_out * k_in if self.P_out is not None else 0),
        }  # fmt: skip

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """What to keep of the layer input ``x`` (as the module saw it): ``P_inᵀã`` or
        ``ã`` (``[n, k_in or d_in, T]`` for a convolution, ``[n, T, k_in or d_in]``)."""
        x = x.to(self.dtype)
        n = x.shape[0]
        if self.conv:
            if self.order(self._positions(x)) == "grad":
                return self._unfolded(x)
            return self._conv_projected(x)
        a = x.reshape(n, -1, x.shape[-1])
        if self.P_in is None or self.order(a.shape[1]) == "grad":
            return self._augmented(a)
        flat = a.reshape(-1, a.shape[-1])
        if self.weight and self.bias:
            out = torch.addmm(self.P_in[-1], flat, self.P_in[:-1])
        else:  # weight only (a bias-only side is 1 wide: identity)
            out = flat @ self.P_in
        return out.view(n, -1, self.k_in)

    def grad(self, g: torch.Tensor) -> torch.Tensor:
        """What to keep of the output gradient ``g`` (shaped like the output):
        ``P_outᵀδ`` or ``δ``, laid out as :meth:`input`."""
        g = g.to(self.dtype)
        n = g.shape[0]
        delta = g.flatten(2) if self.conv else g.reshape(n, -1, g.shape[-1])
        T = delta.shape[2] if self.conv else delta.shape[1]
        if self.P_out is None or self.order(T) == "input":
            return delta
        if self.conv:
            return torch.matmul(self.P_out.T, delta)
        return (delta.reshape(-1, self.d_out) @ self.P_out).view(n, -1, self.k_out)

    def combine(
        self, a_s: torch.Tensor, d_s: torch.Tensor, out: torch.Tensor, accumulate: bool
    ) -> None:
        """Write (or, with ``accumulate``, add) ``Z [n, k_out, k_in]`` of one call, from
        what :meth:`input`/:meth:`grad` kept, into ``out`` (a strided view is fine)."""
        T = a_s.shape[2] if self.conv else a_s.shape[1]
        order = self.order(T)
        last = (order == "grad" and self.P_in is not None) or (
            order == "input" and self.P_out is not None
        )
        target = None if accumulate or last else out
        if self.conv:
            Z = torch.bmm(d_s, a_s.transpose(1, 2), out=target)
        elif T == 1:  # one position (an MLP layer): an outer product, ~3× faster than bmm
            Z = torch.mul(d_s[:, 0, :, None], a_s[:, 0, None, :], out=target)
        else:
            Z = torch.bmm(d_s.transpose(1, 2), a_s, out=target)
        if order == "grad" and self.P_in is not None:
            Z = Z @ self.P_in
        if order == "input" and self.P_out is not None:
            Z = self.P_out.T @ Z
        if accumulate:
            out.add_(Z)
        elif target is None:
            out.copy_(Z)

    def batch_columns(
        self, gw: torch.Tensor | None, gb: torch.Tensor | None, m: int
    ) -> torch.Tensor:
        """The first ``m`` columns of ``P_outᵀ [∇W | ∇b] P_in`` for a batch gradient:
        ``d_out·d_in·m`` operations, a small fraction of a training step."""
        cols = self._check_cols.get(m)
        if cols is None:  # contiguous: a strided [d_in, m] slice makes the matmul slow
            cols = self._check_cols[m] = self._P_in_full[:, :m].contiguous()
        ref = cols.new_zeros(self.d_out, m)
        if gw is not None and self.weight:
            ref += gw.reshape(self.d_out, -1).to(self.dtype) @ cols[: self.d_in - int(self.bias)]
        if gb is not None and self.bias:
            ref += torch.outer(gb.to(self.dtype), cols[-1])
        return ref if self.P_out is None else self.P_out.T @ ref

    def _positions(self, x: torch.Tensor) -> int:
        conv, (ph, pw) = self.module, conv_padding(self.module)
        (h, w), (kh, kw) = x.shape[2:], conv.kernel_size
        (sh, sw), (dh, dw) = conv.stride, conv.dilation
        return ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1) * (
            (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        )

    def _conv_projected(self, x: torch.Tensor) -> torch.Tensor:
        """``P_inᵀã_t`` at every output position, ``[n, k_in, T]``, by one convolution."""
        if self._kernels is None:  # bias only: ã = 1, P_in = [[1]]
            return x.new_ones(x.shape[0], 1, self._positions(x))
        conv, (kernels, bias) = self.module, self._kernels
        y = F.conv2d(x, kernels, bias, conv.stride, conv_padding(conv), conv.dilation)
        return y.flatten(2)

    def _unfolded(self, x: torch.Tensor) -> torch.Tensor:
        """``ã`` of a convolution, ``[n, d_in, T]`` (im2col, plus a row of ones)."""
        if not self.weight:
            return x.new_ones(x.shape[0], 1, self._positions(x))
        conv = self.module
        u = F.unfold(x, conv.kernel_size, conv.dilation, conv_padding(conv), conv.stride)
        return F.pad(u, (0, 0, 0, 1), value=1.0) if self.bias else u

    def _augmented(self, a: torch.Tensor) -> torch.Tensor:
        if not self.bias:
            return a
        if not self.weight:
            return a.new_ones(*a.shape[:2], 1)
        return F.pad(a, (0, 1), value=1.0)
