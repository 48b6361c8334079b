"""Does whole-model curvature help label-noise detection? EK-FAC / K-FAC self-influence and
factored-projection ``l2`` over **all layers** of an MNIST MLP, next to last-layer ``l2``
and ``loss`` (issue 12 part 3).

Setting, per seed (≥ 3 seeds; mean ± std): MNIST, ``--n-train`` rows (stratified, seeded)
with 20% symmetric flipped labels (:func:`gradsift.experiments.datasets.load_mnist`), MLP
784-512-256-10 (535,818 parameters), Adam lr 1e-3, batch 64, ``--epochs`` epochs, a
checkpoint per epoch, accuracy on a **clean** 2,000-row validation split after each. Two
checkpoint choices:

- **best**: the best-clean-validation checkpoint (``OGAConfig(checkpoint="best")``);
- **ensemble**: the three epochs around it (``e*−1, e*, e*+1``, shifted inside
  ``[1, epochs]``), combined as :func:`gradsift.detect.ensemble_scores` does
  (``mode="sum"``): ``Σ_k η_k s_k`` for the additive scores (``l2``, ``loss``,
  ``self-dot``), ``Σ_k η_k zscore(s_k)`` for the others (``self-if-*``).

Detectors (higher = more suspicious; AUROC / AP / precision@m against the flipped rows):

- ``l2`` and ``loss`` on the **last layer**: :class:`~gradsift.detect.oga.OutlierGradientAnalysis`
  with ``ClassificationTask()`` (closed-form head gradients), as in ``benchmarks/detection.py``;
- ``l2 (factored k×k)`` on **all layers**: gradients projected with the factored
  projection ``ProjectionConfig(kind="kronecker", dim=k, dim_out=k)`` through
  :func:`gradsift.grads.hooks.hook_gradients` (:class:`~gradsift.grads.kronecker.FactoredProjector`;
  the per-sample gradient is never formed), then ``L2Norm``;
- ``self-dot``, ``self-if-kfac``, ``self-if-ekfac`` on **all layers** (unprojected,
  D = 535,818): ``‖g_i‖²`` and ``g_iᵀ (C + λI)⁻¹ g_i`` with ``C`` the K-FAC / EK-FAC
  curvature of :class:`~gradsift.influence.KFACSolver` / :class:`~gradsift.influence.EKFACSolver`
  (their defaults: sampled-label Fisher, ``λ`` = 0.1 × mean eigenvalue), fitted on the
  training rows at that checkpoint; plus, as a damping sensitivity (not a choice: every
  row is printed), EK-FAC with ``λ`` = ``--damping-factors`` × its mean eigenvalue
  (same factors; large ``λ`` tends to ``self-dot / λ``).

How the all-layer self-influence is computed. The registered detectors
(``get_detector("self-if-ekfac", solver=...)``) take the materialised gradient matrix
``G [n, 535,818]`` (17 GB at n = 8,000) and apply the inverse in the eigenbasis per row,
``O(d_out·cols·(d_out + cols))`` per layer (~1 GFLOP per row here). For an MLP every layer
sees one position per sample, ``g_{i,l} = δ_i ã_iᵀ``, so the same quantities are exact in
factored form from one batched forward/backward (:func:`gradsift.influence.kfac.statistics.layer_statistics`,
given labels): ``‖g_{i,l}‖² = ‖δ_i‖²‖ã_i‖²`` and
``g_{i,l}ᵀ (C_l + λI)⁻¹ g_{i,l} = Σ_{jk} (Q_Sᵀδ_i)_j² (Q_Aᵀã_i)_k² / (Λ_{jk} + wd + λ)``. The
benchmark uses this form and checks it, at seed 0's best checkpoint, against the registered
detectors on the materialised gradients of ``--check-rows`` rows (max relative difference
printed, the run fails above 1e-3); the dense route's time per row is printed too.

Seconds are per checkpoint (sum over the ensemble's checkpoints), one torch thread:
``l2``/``loss`` include the last-layer gradient pass; ``l2 (factored)`` the projection;
``self-*`` the shared ``ã, δ`` pass plus, for K-FAC / EK-FAC, fitting the factors.

    nice -n 10 .venv/bin/python benchmarks/detection_whole_model.py   # ~8-10 min on 2 cores
    nice -n 10 .venv/bin/python benchmarks/detection_whole_model.py --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from gradsift.checkpoints import Checkpoint, CheckpointRecorder
from gradsift.detect import get_detector
from gradsift.detect.ensemble import zscore
from gradsift.detect.metrics import detection_metrics
from gradsift.detect.norms import L2Norm
from gradsift.detect.oga import OGAConfig, OutlierGradientAnalysis, select_checkpoints
from gradsift.experiments.datasets import load_mnist
from gradsift.experiments.models import mlp
from gradsift.experiments.training import TrainConfig, train_classifier
from gradsift.grads.capture import tracked_layers
from gradsift.grads.hooks import hook_gradients
from gradsift.grads.kronecker import FACTORABLE
from gradsift.grads.projection import ProjectionConfig
from gradsift.influence import EKFACSolver, KFACOperator, KFACSolver
from gradsift.influence.kfac.likelihood import resolve_likelihood
from gradsift.influence.kfac.statistics import layer_statistics
from gradsift.task import ClassificationTask

HIDDEN = (512, 256)
METRICS = ("auroc", "average_precision", "precision_at_m")
SOLVERS = {"self-if-kfac": KFACSolver, "self-if-ekfac": EKFACSolver}


# --------------------------------------------------------------------------- all-layer scores


def factored_self_influence(
    model: torch.nn.Module,
    task: ClassificationTask,
    data: tuple[torch.Tensor, torch.Tensor],
    solvers: dict[str, tuple[KFACSolver, float]],
    batch_size: int = 512,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Exact all-layer ``‖g_i‖²`` (``"self-dot"``) and ``g_iᵀ(C+λI)⁻¹g_i`` per
    ``name: (fitted K-FAC/EK-FAC solver, λ)``, float64 ``[n]`` each, from ``ã``, ``δ`` of
    the given labels (one position per sample: ``g_{i,l} = δ_i ã_iᵀ``); and the seconds
    of each part."""
    params = task.tracked_parameters(model)
    layers = tracked_layers(model, params, FACTORABLE, "the factored self-influence")
    kind = resolve_likelihood(task, None)
    inv = {}  # name -> module -> (Q_S, Q_A, 1 / (Λ + wd + λ))
    for name, (solver, damping) in solvers.items():
        op = solver.operator
        assert isinstance(op, KFACOperator) and solver.factors is not None
        assert not solver.layer_damping, "per-layer damping is not used here"
        lam = op.layer_eigenvalues()
        inv[name] = {
            ly.module_name: (
                ly.Q_S,
                ly.Q_A,
                1.0 / (lam[ly.module_name].double() + op.weight_decay + damping),
            )
            for ly in solver.factors.layers
        }
    n = len(data[1])
    out = {name: np.zeros(n) for name in ("self-dot", *solvers)}
    secs = dict.fromkeys(out, 0.0)
    secs["statistics"] = 0.0
    gen = torch.Generator().manual_seed(0)  # unused: given labels
    for s in range(0, n, batch_size):
        batch = (data[0][s : s + batch_size], data[1][s : s + batch_size])
        t0 = time.perf_counter()
        stats = layer_statistics(model, task, layers, params, batch, "empirical", kind, gen)
        secs["statistics"] += time.perf_counter() - t0
        for module, (a, deltas) in stats.items():
            if a.shape[1] != 1 or len(deltas) != 1:
                raise RuntimeError(f"layer {module!r} is applied at several positions")
            a1, d1 = a[:, 0], deltas[0][:, 0]
            t0 = time.perf_counter()
            dot = (a1.square().sum(1) * d1.square().sum(1)).numpy()
            out["self-dot"][s : s + len(dot)] += dot
            secs["self-dot"] += time.perf_counter() - t0
            for name in solvers:
                t0 = time.perf_counter()
                Q_S, Q_A, w = inv[name][module]
                u2, v2 = (d1 @ Q_S).square(), (a1 @ Q_A).square()
                out[name][s : s + len(dot)] += ((u2 @ w) * v2).sum(1).numpy()
                secs[name] += time.perf_counter() - t0
    return out, secs


def check_against_detectors(
    model: torch.nn.Module,
    task: ClassificationTask,
    data: tuple[torch.Tensor, torch.Tensor],
    solvers: dict[str, KFACSolver],
    factored: dict[str, np.ndarray],
    rows: int,
) -> dict[str, Any]:
    """Registered detectors on materialised all-layer gradients of ``rows`` random rows
    vs the factored scores: max relative difference and the dense route's s/row."""
    idx = np.sort(np.random.default_rng(0).choice(len(data[1]), rows, replace=False))
    sub = TensorDataset(data[0][idx], data[1][idx])
    t0 = time.perf_counter()
    G, _ = hook_gradients(model, task, sub, batch_size=rows, description="check gradients")
    t_grad = time.perf_counter() - t0
    report: dict[str, Any] = {"rows": rows, "gradient_s_per_row": t_grad / rows}
    for name in factored:
        det = get_detector(name) if name == "self-dot" else get_detector(name, solver=solvers[name])
        t0 = time.perf_counter()
        dense = det.fit_score(G)
        sec = time.perf_counter() - t0
        err = float(np.max(np.abs(dense - factored[name][idx]) / np.abs(dense)))
        report[name] = {"max_rel_diff": err, "dense_s_per_row": sec / rows}
        if not err < 1e-3:
            raise RuntimeError(f"factored {name} differs from the detector by {err:.2g}")
    return report


def all_layer_scores(
    model: torch.nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    ks: tuple[int, ...],
    damping_factors: tuple[float, ...] = (),
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, KFACSolver]]:
    """Every all-layer detector's scores and seconds at one checkpoint (model in eval)."""
    task = ClassificationTask("all")
    scores: dict[str, np.ndarray] = {}
    secs: dict[str, float] = {}
    for k in ks:
        t0 = time.perf_counter()
        Z, _ = hook_gradients(
            model, task, TensorDataset(*data), batch_size=256,
            projection=ProjectionConfig(kind="kronecker", dim=k, dim_out=k, seed=0),
            description=f"factored projection {k}x{k}",
        )  # fmt: skip
        name = f"l2 (factored {k}×{k}, dim {Z.shape[1]})"
        scores[name] = L2Norm().fit_score(Z)
        secs[name] = time.perf_counter() - t0
    solvers, fit_s, specs = {}, {}, {}
    for name, cls in SOLVERS.items():
        t0 = time.perf_counter()
        solvers[name] = cls().fit(model, task, data, batch_size=512)
        fit_s[name] = time.perf_counter() - t0
        specs[name] = (solvers[name], solvers[name].damping)
    ekfac = solvers["self-if-ekfac"]
    mean_eig = ekfac.operator.mean_eigenvalue()  # type: ignore[union-attr]
    for f in damping_factors:  # sensitivity: the same EK-FAC factors, another λ
        name = f"self-if-ekfac (λ = {f:g} × mean eig.)"
        specs[name] = (ekfac, f * mean_eig)
        fit_s[name] = fit_s["self-if-ekfac"]
    quad, qs = factored_self_influence(model, task, data, specs)
    for name, s in quad.items():
        scores[name] = s
        secs[name] = qs["statistics"] + qs[name] + fit_s.get(name, 0.0)
    return scores, secs, solvers


# --------------------------------------------------------------------------- one seed


def window(best: int, epochs: int) -> list[int]:
    """Three consecutive epochs centred on ``best``, shifted inside ``[1, epochs]``."""
    start = min(max(best - 1, 1), max(epochs - 2, 1))
    return list(range(start, min(start + 3, epochs + 1)))


def one_seed(seed: int, a: argparse.Namespace) -> dict[str, Any]:
    data = load_mnist(0.2, "symmetric", seed, n_train=a.n_train, n_val=2000, n_test=100)
    X, y, flipped = data.train.X, data.train.y, data.train.flipped
    model = mlp(784, 10, hidden=HIDDEN, seed=seed)
    rec = CheckpointRecorder(every=1)
    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=a.epochs, batch_size=64, lr=1e-3, seed=seed)
    train_classifier(model, X, y, cfg, val=(data.val.X, data.val.y), recorder=rec, progress=False)
    t_train = time.perf_counter() - t0
    best = rec.best("val_accuracy").epoch
    epochs = window(best, a.epochs)
    ckpts: list[Checkpoint] = select_checkpoints(rec, epochs)
    tensors = (torch.from_numpy(X), torch.from_numpy(y))
    out: dict[str, Any] = {"best_epoch": best, "window": epochs, "train_s": t_train}

    # last layer: OGA, best and ensemble
    for mode, choice in (("best", "best"), ("ensemble", epochs)):
        cfg_oga = OGAConfig(detectors=["l2", "loss"], checkpoint=choice, seed=seed)
        res = OutlierGradientAnalysis(model, ClassificationTask(), cfg_oga).run((X, y), rec)
        for name, r in res.results.items():
            sec = res.timings["gradients"] + res.timings[name]
            out[(mode, f"{name} (last layer)")] = (detection_metrics(r.scores, flipped), sec)

    # all layers, per checkpoint of the window
    per: list[tuple[dict[str, np.ndarray], dict[str, float]]] = []
    for ckpt in ckpts:
        m = CheckpointRecorder.load_into(copy.deepcopy(model), ckpt).eval()
        scores, secs, solvers = all_layer_scores(m, tensors, a.ks, a.damping_factors)
        per.append((scores, secs))
        if ckpt.epoch == best:
            for name in scores:
                out[("best", name)] = (detection_metrics(scores[name], flipped), secs[name])
            if seed == 0 and a.check_rows:
                quad = {k: scores[k] for k in ("self-dot", *SOLVERS)}
                out["check"] = check_against_detectors(
                    m, ClassificationTask("all"), tensors, solvers, quad, a.check_rows
                )
                print(f"[check] {json.dumps(out['check'])}", flush=True)
    lrs = [c.lr for c in ckpts]
    for name in per[0][0]:
        additive = not name.startswith("self-if")
        total = sum(
            w * (s[name] if additive else zscore(s[name]))
            for w, (s, _) in zip(lrs, per, strict=True)
        )
        sec = sum(t[name] for _, t in per)
        out[("ensemble", name)] = (detection_metrics(total, flipped), sec)
    return out


# --------------------------------------------------------------------------- report


def report(runs: list[dict[str, Any]], a: argparse.Namespace) -> None:
    print(
        f"\n## MNIST {a.n_train:,} rows, 20% symmetric noise, MLP 784-512-256-10, Adam, "
        f"{a.epochs} epochs, {len(runs)} seeds (mean ± std)\n"
    )
    print(f"best clean-validation epoch per seed: {[r['best_epoch'] for r in runs]}; ")
    print(f"ensemble epochs per seed: {[r['window'] for r in runs]}\n")
    for mode in ("best", "ensemble"):
        names = [k[1] for k in runs[0] if isinstance(k, tuple) and k[0] == mode]
        print(f"### checkpoint: {mode}\n")
        print("| detector | AUROC | AP | precision@m | seconds |")
        print("|---|---:|---:|---:|---:|")
        for name in names:
            cells = []
            for metric in METRICS:
                v = np.array([r[(mode, name)][0][metric] for r in runs])
                cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
            sec = np.mean([r[(mode, name)][1] for r in runs])
            print(f"| {name} | " + " | ".join(cells) + f" | {sec:.1f} |")
        print()
    if "check" in runs[0]:
        print(f"check (seed 0, best checkpoint): {json.dumps(runs[0]['check'])}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--ks", default="16,64", help="factored projection sides k (k×k per layer)")
    ap.add_argument(
        "--damping-factors", default="0.01,1,10",
        help="extra EK-FAC rows with λ = factor × mean eigenvalue (default row: 0.1)",
    )  # fmt: skip
    ap.add_argument("--check-rows", type=int, default=32, help="0: skip the detector check")
    ap.add_argument("--json", default=None, help="also write the per-seed results here")
    ap.add_argument("--quick", action="store_true", help="1 seed, 1,000 rows, 4 epochs")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.n_train, a.epochs, a.check_rows = 1, 1000, 4, 8
    a.ks = tuple(int(k) for k in str(a.ks).split(","))
    a.damping_factors = tuple(float(f) for f in str(a.damping_factors).split(",") if f)
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    runs = []
    for seed in range(a.seeds):
        runs.append(one_seed(seed, a))
        print(f"[seed {seed}] {time.perf_counter() - t_all:.0f} s", flush=True)
    report(runs, a)
    if a.json:
        flat = [
            {(" / ".join(k) if isinstance(k, tuple) else k): v for k, v in r.items()} for r in runs
        ]
        Path(a.json).write_text(json.dumps(flat, indent=1, default=float))
    print(f"\nTotal wall time {time.perf_counter() - t_all:.0f} s, torch threads 1.")


if __name__ == "__main__":
    main()
