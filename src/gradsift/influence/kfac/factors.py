"""Fitting the K-FAC / EK-FAC factors: streamed covariances, eigenbases, eigenvalue correction.

For each tracked layer (augmented inputs ``ã``, output gradients ``δ`` in sequence form,
:mod:`gradsift.influence.kfac.statistics`) the first pass over the data streams

    ``A = Σ_{i,t} ã_{i,t} ã_{i,t}ᵀ / Σ_i T_i``   (mean over sample positions)
    ``S = (1/n) Σ_i Σ_t δ_{i,t} δ_{i,t}ᵀ``        (per-sample sum over positions)

(the "expand" convention of K-FAC for sequences and of KFC for convolutions; with one
position per sample both are plain means), so the layer's curvature block is
approximated by ``S ⊗ A`` on the row-major ``vec`` of its ``[d_out, cols]`` gradient.
Eigendecomposing ``A = Q_A diag(λ_A) Q_Aᵀ`` and ``S = Q_S diag(λ_S) Q_Sᵀ`` gives K-FAC's
eigenvalues ``λ_S ⊗ λ_A``. The optional second pass (EK-FAC, George et al. 2018) replaces
them by the second moments of the per-sample gradients in that eigenbasis,

    ``Λ = (1/n) Σ_i (Q_Sᵀ G_i Q_A)²``,   ``G_i = Σ_t δ_{i,t} ã_{i,t}ᵀ``

(elementwise square), computed from the projected ``ã`` and ``δ`` (with one position per
sample ``Λ = (1/n) Σ_i (Q_Sᵀδ_i)² (Q_Aᵀã_i)²ᵀ``: no per-sample gradient is formed).

Each pass runs over the batches in data order and is checkpointed every
``checkpoint_every`` batches (per rank) to a :class:`~.storage.FactorStore` when a ``path``
is given; a killed fit resumes. Under ``torchrun`` rank *r* of *W* takes batches
``r, r + W, …`` and the running sums and counts are all-reduced at every checkpoint, so
the factors equal the single-process ones (up to float summation order). Sampled labels
are drawn from ``SeedSequence([seed, pass, batch index])``: the same on every rank, in
every run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, default_collate

from gradsift.distributed.process_group import barrier, info
from gradsift.errors import GradsiftError
from gradsift.grads.capture import tracked_layers
from gradsift.grads.kronecker import FACTORABLE
from gradsift.grads.layout import check_eval_mode
from gradsift.influence.hessian import BatchSource
from gradsift.influence.kfac.likelihood import resolve_likelihood
from gradsift.influence.kfac.statistics import (
    FISHER_KINDS,
    LayerStats,
    layer_statistics,
    resolve_fisher,
)
from gradsift.influence.kfac.storage import FactorStore
from gradsift.progress import track
from gradsift.store.gradient_store import model_fingerprint
from gradsift.task import Task

__all__ = ["KFACFactors", "LayerFactors", "fit_kfac_factors"]

Sums = dict[str, torch.Tensor]
_PASSES = {"covariance": 0, "eigenvalues": 1}


@dataclass
class LayerFactors:
    """One layer's fitted factors (float64, on the parameters' device).

    Attributes:
        module_name, weight, bias: the layer and its tracked parameter names (None: untracked).
        d_out, cols: its augmented gradient is ``[d_out, cols]``.
        A ``[cols, cols]``, S ``[d_out, d_out]``: the covariance factors.
        Q_A, lam_A, Q_S, lam_S: their eigenvectors (columns) and eigenvalues (clamped ≥ 0).
        corrected: EK-FAC eigenvalues ``Λ [d_out, cols]``, None until corrected.
    """

    module_name: str
    weight: str | None
    bias: str | None
    d_out: int
    cols: int
    A: torch.Tensor
    S: torch.Tensor
    Q_A: torch.Tensor
    lam_A: torch.Tensor
    Q_S: torch.Tensor
    lam_S: torch.Tensor
    corrected: torch.Tensor | None = None

    @property
    def kfac_eigenvalues(self) -> torch.Tensor:
        """K-FAC's eigenvalues ``λ_S ⊗ λ_A`` as ``[d_out, cols]``."""
        return self.lam_S[:, None] * self.lam_A[None, :]


@dataclass
class KFACFactors:
    """The fitted factors of every tracked layer, ``n`` training samples, the settings."""

    layers: list[LayerFactors]
    n: int
    settings: dict[str, Any]


def fit_kfac_factors(
    model: nn.Module,
    task: Task,
    data: Dataset | tuple[Any, ...],
    *,
    fisher: str = "auto",
    likelihood: str | None = None,
    correct_eigenvalues: bool = True,
    path: str | Path | None = None,
    batch_size: int = 128,
    seed: int = 0,
    checkpoint_every: int = 50,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    on_checkpoint: Callable[[str, int], None] | None = None,
) -> KFACFactors:
    """Fit K-FAC factors (and, with ``correct_eigenvalues``, EK-FAC's eigenvalues).

    Args:
        model: the trained model (eval mode); its tracked parameters must all be weights
            or biases of ``nn.Linear`` / ``nn.Conv2d`` layers (``groups=1``).
        task: forward, loss and tracked parameters.
        data: the training data.
        fisher: ``"auto"`` (default: ``"exact"`` for at most
            :data:`~.statistics.AUTO_EXACT_MAX_COLUMNS` output-Hessian columns, else
            ``"sampled"``; decided from one forward pass and recorded in ``settings``),
            ``"sampled"`` (true Fisher, one label drawn from the model per sample),
            ``"exact"`` (its expectation, ``C`` backward passes) or ``"empirical"`` (the
            given labels); see :mod:`~.statistics`.
        likelihood: the loss's output likelihood (None: ``task.head_loss``).
        path: a directory to store the factors in and resume from (None: in memory).
        batch_size: samples per forward/backward; checkpoint_every: batches per rank
            between checkpoints (and all-reduces); seed: of the sampled labels.
        on_checkpoint: called as ``on_checkpoint(pass_name, batches_done)`` after each.

    Returns:
        :class:`KFACFactors`. With ``path`` holding complete passes, they are loaded.
    """
    if fisher not in FISHER_KINDS:
        raise GradsiftError(f"fisher must be one of {FISHER_KINDS}, got {fisher!r}")
    if batch_size < 1 or checkpoint_every < 1:
        raise GradsiftError("batch_size and checkpoint_every must be >= 1")
    check_eval_mode(model)
    params = task.tracked_parameters(model)
    layers = tracked_layers(model, params, FACTORABLE, "K-FAC")
    kind = resolve_likelihood(task, likelihood)
    first = next(iter(params.values()))
    source = BatchSource(data, first.device, first.dtype, collate_fn)
    fisher = _resolve_auto(model, task, source, fisher, kind)
    specs = [
        {
            "module": ly.module_name,
            "weight": ly.weight,
            "bias": ly.bias,
            "d_out": ly.d_out,
            "cols": (ly.d_in if ly.weight is not None else 0) + (ly.bias is not None),
        }
        for ly in layers
    ]
    settings = {
        "fisher": fisher,
        "likelihood": kind,
        "seed": int(seed),
        "batch_size": int(batch_size),
        "n_data": source.n,
    }
    store = _open_store(path, model, specs, settings)
    device = first.device

    def stats(batch: Any, gen: torch.Generator) -> LayerStats:
        return layer_statistics(model, task, layers, params, batch, fisher, kind, gen)

    def run(name: str, zeros: Sums, step: Callable[[LayerStats, Sums], None]) -> Sums:
        return _run_pass(
            name, zeros, step, stats, source, batch_size, seed, checkpoint_every, store,
            on_checkpoint,
        )  # fmt: skip

    cov = run("covariance", _covariance_zeros(specs, device), _covariance_step)
    factors = KFACFactors(
        [_eigen(spec, cov) for spec in specs], int(round(float(cov["n"]))), settings
    )
    if correct_eigenvalues:
        zeros = {f"L/{s['module']}": _zeros(device, s["d_out"], s["cols"]) for s in specs}
        zeros["n"] = _zeros(device)
        bases = {ly.module_name: (ly.Q_A, ly.Q_S) for ly in factors.layers}
        sums = run("eigenvalues", zeros, lambda st, acc: _eigenvalue_step(st, acc, bases))
        for ly in factors.layers:
            ly.corrected = sums[f"L/{ly.module_name}"] / sums["n"].clamp_min(1)
    return factors


# --------------------------------------------------------------------------- passes


def _resolve_auto(
    model: nn.Module, task: Task, source: BatchSource, fisher: str, likelihood: str
) -> str:
    """``fisher``, with ``"auto"`` decided from the outputs of the first training row."""
    if fisher != "auto" or source.n == 0:
        return "sampled" if fisher == "auto" else fisher
    with torch.no_grad():
        outputs = task.forward(model, source.slice(0, 1))
    if not isinstance(outputs, torch.Tensor):
        raise GradsiftError("K-FAC needs task.forward to return one tensor of outputs")
    return resolve_fisher(fisher, likelihood, outputs)


def _open_store(
    path: str | Path | None, model: nn.Module, specs: list[dict], settings: dict
) -> FactorStore | None:
    if path is None:
        return None
    header = {"fingerprint": model_fingerprint(model), "layers": specs, "settings": settings}
    store = FactorStore(path, header)
    ctx = info()
    if ctx.is_main:
        store.open(create=True)
    barrier()
    if not ctx.is_main:
        store.open(create=False)
    return store


def _run_pass(
    name: str,
    zeros: Sums,
    step: Callable[[LayerStats, Sums], None],
    stats: Callable[[Any, torch.Generator], LayerStats],
    source: BatchSource,
    batch_size: int,
    seed: int,
    checkpoint_every: int,
    store: FactorStore | None,
    on_checkpoint: Callable[[str, int], None] | None,
) -> Sums:
    """One checkpointed, rank-sharded pass; returns the all-reduced sums."""
    sums, done, complete = store.stage(name) if store is not None else (None, 0, False)
    if sums is not None:
        sums = {k: v.to(zeros[k].device) for k, v in sums.items()}
    if complete:
        return sums  # type: ignore[return-value]
    sums = sums if sums is not None else {k: v.clone() for k, v in zeros.items()}
    partial = {k: v.clone() for k, v in zeros.items()}
    ctx = info()
    n_batches = -(-source.n // batch_size)
    rounds = range(done, n_batches, ctx.world_size)
    for count, start in enumerate(track(rounds, f"K-FAC {name}", total=len(rounds)), 1):
        b = start + ctx.rank
        if b < n_batches:
            batch = source.slice(b * batch_size, min((b + 1) * batch_size, source.n))
            ss = np.random.SeedSequence([seed, _PASSES[name], b])
            gen = torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))
            step(stats(batch, gen), partial)
        end = min(start + ctx.world_size, n_batches)
        if count % checkpoint_every == 0 or end == n_batches:
            for k, v in partial.items():
                if ctx.distributed:
                    dist.all_reduce(v)
                sums[k] += v
                v.zero_()
            if store is not None and ctx.is_main:
                store.save_stage(name, sums, end, complete=end == n_batches)
            if on_checkpoint is not None:
                on_checkpoint(name, end)
    return sums


def _zeros(device: torch.device, *shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float64, device=device)


def _covariance_zeros(specs: list[dict], device: torch.device) -> Sums:
    zeros = {"n": _zeros(device)}
    for s in specs:
        m = s["module"]
        zeros[f"A/{m}"] = _zeros(device, s["cols"], s["cols"])
        zeros[f"S/{m}"] = _zeros(device, s["d_out"], s["d_out"])
        zeros[f"P/{m}"] = _zeros(device)
    return zeros


def _covariance_step(stats: LayerStats, acc: Sums) -> None:
    n = 0
    for name, (a, deltas) in stats.items():
        n = a.shape[0]
        a2 = a.reshape(-1, a.shape[-1])
        acc[f"A/{name}"] += a2.T @ a2
        acc[f"P/{name}"] += a2.shape[0]
        for d in deltas:
            d2 = d.reshape(-1, d.shape[-1])
            acc[f"S/{name}"] += d2.T @ d2
    acc["n"] += n


def _eigenvalue_step(
    stats: LayerStats, acc: Sums, bases: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> None:
    n = 0
    for name, (a, deltas) in stats.items():
        n = a.shape[0]
        Q_A, Q_S = bases[name]
        ah = a @ Q_A
        for d in deltas:
            dh = d @ Q_S
            if ah.shape[1] == 1:  # one position: (Q_Sᵀδ)² (Q_Aᵀã)²ᵀ, no per-sample matrix
                acc[f"L/{name}"] += dh[:, 0].square().T @ ah[:, 0].square()
                continue
            rows = max(1, (1 << 24) // (dh.shape[-1] * ah.shape[-1]))
            for s in range(0, ah.shape[0], rows):
                G = torch.einsum("bto,btc->boc", dh[s : s + rows], ah[s : s + rows])
                acc[f"L/{name}"] += G.square().sum(dim=0)
    acc["n"] += n


def _eigen(spec: dict, cov: Sums) -> LayerFactors:
    m = spec["module"]
    positions, n = float(cov[f"P/{m}"]), float(cov["n"])
    if positions == 0 or n == 0:
        raise GradsiftError(f"layer {m!r} never reached the loss: K-FAC has no statistics for it")
    A = cov[f"A/{m}"] / positions
    S = cov[f"S/{m}"] / n
    lam_A, Q_A = torch.linalg.eigh((A + A.T) / 2)
    lam_S, Q_S = torch.linalg.eigh((S + S.T) / 2)
    return LayerFactors(
        m, spec["weight"], spec["bias"], spec["d_out"], spec["cols"],
        A, S, Q_A, lam_A.clamp_min(0), Q_S, lam_S.clamp_min(0),
    )  # fmt: skip
