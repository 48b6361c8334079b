"""K-FAC and EK-FAC as a curvature operator with an exact damped inverse.

Per tracked layer the curvature block on the row-major ``vec`` of its augmented
``[d_out, cols]`` gradient (:mod:`~.factors`) is

    ``C_l = (Q_S ⊗ Q_A) diag(vec Λ_l) (Q_S ⊗ Q_A)ᵀ``

with ``Λ_l = λ_S ⊗ λ_A`` (K-FAC, then ``C_l = S ⊗ A``) or the corrected ``Λ_l``
(EK-FAC). Layers are independent (block-diagonal across layers; weight and bias of one
layer are coupled), and ``C = ⊕_l C_l + weight_decay · I``. Products and the damped
inverse are done in the eigenbasis, ``O(d_out² cols + d_out cols²)`` per vector and layer:

    ``C V = Q_S (Λ ⊙ (Q_Sᵀ V Q_A)) Q_Aᵀ``,   ``(C + λI)⁻¹ V = Q_S ((Q_Sᵀ V Q_A) ⊘ (Λ + wd + λ)) Q_Aᵀ``.

A vector in the tracked-parameter layout (``GradientComputer`` rows: weight ``[out, in]``
row-major, then bias, in ``named_parameters()`` order) maps to the layer matrix
``[W | b]`` (the bias is the column of the appended input 1) and back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch

from gradsift.errors import GradsiftError
from gradsift.grads.layout import Block
from gradsift.influence.curvature import CurvatureBase
from gradsift.influence.kfac.factors import KFACFactors, LayerFactors

__all__ = ["KFACOperator"]

Eigenvalues = Literal["kfac", "ekfac"]
Scale = Callable[[torch.Tensor, str], torch.Tensor]


class KFACOperator(CurvatureBase):
    """The K-FAC (``eigenvalues="kfac"``) or EK-FAC (``"ekfac"``) curvature.

    Args:
        factors: from :func:`~.factors.fit_kfac_factors` (EK-FAC needs corrected ones).
        layout: the tracked tensors (``layout_of(task.tracked_parameters(model))``).
        eigenvalues: ``"kfac"`` or ``"ekfac"``.
        weight_decay: coupled L2 coefficient of training (adds ``weight_decay · I``).
        dtype, device: of products (the tracked parameters').

    ``matvec`` is exact and cheap (no data pass), so ``batch_matvec`` is ``matvec``;
    :meth:`inverse` gives ``(C + λI)⁻¹ V`` exactly.
    """

    name = "K-FAC"

    def __init__(
        self,
        factors: KFACFactors,
        layout: list[Block],
        *,
        eigenvalues: Eigenvalues = "kfac",
        weight_decay: float = 0.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if eigenvalues not in ("kfac", "ekfac"):
            raise GradsiftError(f"eigenvalues must be 'kfac' or 'ekfac', got {eigenvalues!r}")
        if weight_decay < 0:
            raise GradsiftError(f"weight_decay must be >= 0, got {weight_decay}")
        self.factors, self.eigenvalues = factors, eigenvalues
        self.name = "EK-FAC" if eigenvalues == "ekfac" else "K-FAC"  # type: ignore[misc]
        self.layout = list(layout)
        self.dim = self.layout[-1].stop
        self.n = max(factors.n, 1)
        self.dtype, self.device = dtype, torch.device(device)
        self.block_diagonal = False
        self.weight_decay = float(weight_decay)
        blocks = {b.name: b for b in self.layout}
        covered = [p for ly in factors.layers for p in (ly.weight, ly.bias) if p is not None]
        if sorted(covered) != sorted(blocks):
            raise GradsiftError(
                f"the factors cover {sorted(covered)}, the layout tracks {sorted(blocks)}"
            )
        self._layers = [self._prepare(ly, blocks) for ly in factors.layers]

    def _prepare(self, ly: LayerFactors, blocks: dict[str, Block]) -> dict[str, Any]:
        if self.eigenvalues == "ekfac":
            if ly.corrected is None:
                raise GradsiftError("EK-FAC needs factors fitted with correct_eigenvalues=True")
            lam = ly.corrected
        else:
            lam = ly.kfac_eigenvalues
        cast = {"dtype": self.dtype, "device": self.device}
        return {
            "name": ly.module_name,
            "weight": blocks[ly.weight] if ly.weight is not None else None,
            "bias": blocks[ly.bias] if ly.bias is not None else None,
            "d_out": ly.d_out,
            "Q_A": ly.Q_A.to(**cast),
            "Q_S": ly.Q_S.to(**cast),
            "lam": lam.to(**cast),
        }

    # ------------------------------------------------------------------ eigenvalues
    def layer_eigenvalues(self) -> dict[str, torch.Tensor]:
        """``{module name: Λ [d_out, cols]}`` (without weight decay)."""
        return {ly["name"]: ly["lam"] for ly in self._layers}

    def mean_eigenvalue(self) -> float:
        """The mean of all eigenvalues of ``C`` without weight decay (``tr C / D``)."""
        total = sum(float(ly["lam"].double().sum()) for ly in self._layers)
        return total / self.dim

    # ------------------------------------------------------------------ products
    def inverse(self, V: torch.Tensor, damping: float | dict[str, float] = 0.0) -> torch.Tensor:
        """``(C + λI)⁻¹ V`` for rows ``V [m, D]``; ``damping`` a number or per-layer dict."""
        V, squeeze = self._check(V)

        def scale(X: torch.Tensor, name: str) -> torch.Tensor:
            lam = damping[name] if isinstance(damping, dict) else damping
            denom = self._lam(name) + self.weight_decay + lam
            if bool((denom <= 0).any()):
                raise GradsiftError(
                    f"K-FAC has zero eigenvalues in layer {name!r}: use damping > 0"
                )
            return X / denom

        out = self._apply(V, scale)
        return out[0] if squeeze else out

    def _lam(self, name: str) -> torch.Tensor:
        return next(ly["lam"] for ly in self._layers if ly["name"] == name)

    def _apply(self, V: torch.Tensor, scale: Scale) -> torch.Tensor:
        """``⊕_l Q (scale(Qᵀ V_l Q)) Qᵀ`` over the layers, in the tracked layout."""
        out = torch.zeros_like(V)
        m = V.shape[0]
        for ly in self._layers:
            w, b, o = ly["weight"], ly["bias"], ly["d_out"]
            parts = [V[:, w.offset : w.stop].reshape(m, o, -1)] if w is not None else []
            if b is not None:
                parts.append(V[:, b.offset : b.stop].reshape(m, o, 1))
            M = torch.cat(parts, dim=2)
            X = ly["Q_S"].T @ M @ ly["Q_A"]
            M = ly["Q_S"] @ scale(X, ly["name"]) @ ly["Q_A"].T
            if w is not None:
                out[:, w.offset : w.stop] = M[:, :, : w.numel // o].reshape(m, -1)
            if b is not None:
                out[:, b.offset : b.stop] = M[:, :, -1]
        return out

    # ------------------------------------------------------------------ CurvatureBase hooks
    def _full_parts(self) -> Iterable[Any]:
        return [None]

    def _part_size(self, part: Any) -> int:
        return self.n

    def _batch_part(self, batch: Any) -> Any:
        return None

    def _sum_products(self, part: Any, V: torch.Tensor) -> torch.Tensor:
        """``n · ⊕_l C_l V`` (the base divides by ``n`` and adds the weight decay)."""
        return self.n * self._apply(V, lambda X, name: X * self._lam(name))
