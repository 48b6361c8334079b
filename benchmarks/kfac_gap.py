"""Where EK-FAC loses LDS against the exact influence function: a decomposition study.

Run (digits MLP 64-32-10, every parameter tracked, D = 2,410; about 3 minutes)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/kfac_gap.py
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/kfac_gap.py --quick  # smoke run

Same model, training recipe, α = 0.5 subsets and retraining as
``benchmarks/kfac_fidelity.py`` (and ``influence_fidelity.py`` part 2); the subset
models' ``−loss`` is recorded on the 359 **test** points (the LDS reported everywhere)
*and* on the 359 **validation** points of the digits split, which are used only to choose
a damping ("val-chosen λ" columns): no damping is picked on the test points.

Every curvature ``C`` is formed as a dense float64 ``[D, D]`` matrix (without weight
decay), eigendecomposed once, and every damping of the sweep is applied as
``(C + wd·I + λI)⁻¹`` (wd = 1e-3, the training weight decay, as the library does), so
all rows share the same per-sample gradients and only ``C`` and ``λ`` differ:

- ``H``: the exact Hessian (:class:`~gradsift.influence.HessianOperator`).
- ``GGN``: the generalised Gauss–Newton ``(1/n) Σ Jᵀ H_out J`` (= the true Fisher).
- ``GGN ⊕ layer`` / ``GGN ⊕ tensor``: its diagonal blocks per layer (weight and bias
  coupled, K-FAC's structure) / per parameter tensor.
- ``Fisher sampled ×k``: ``(1/n) Σ_i (1/k) Σ_j g̃_ij g̃_ijᵀ`` with labels ``ŷ ~ p(·|x_i)``;
  ``Fisher empirical``: ``(1/n) Σ g_i g_iᵀ`` (the given labels).
- ``K-FAC`` / ``EK-FAC``: the library's factors (:func:`~gradsift.influence.fit_kfac_factors`,
  exact or sampled Fisher; the bias is the appended column of ones of the input factor)
  made dense through :class:`~gradsift.influence.KFACOperator`.
- ``EK-FAC basis + diag(X)``: K-FAC's eigenbasis ``Q = Q_S ⊗ Q_A`` with eigenvalues
  ``diag(Qᵀ X_l Q)`` of a dense per-layer curvature ``X`` (the eigenvalue correction
  computed from ``X``; with ``X`` = GGN it is the library's ``fisher="exact"`` EK-FAC).
- ``GGN ⊕ layer, <layer> → K-FAC``: the exact per-layer blocks with one layer replaced by
  its (exact-Fisher) K-FAC / EK-FAC block: which layer's factorisation costs the LDS.
- ``Frobenius-nearest S ⊗ A``: the best single Kronecker product per layer block
  (Van Loan–Pitsianis), and EK-FAC's eigenvalue correction on its eigenbasis.

Damping: "default λ" is the library's default for that kind of solver — ``0.1 · tr(C)/D``
for K-FAC / EK-FAC (:class:`~gradsift.influence.KFACSolver`; also used for the
Frobenius-nearest Kronecker rows), ``1e-2 · tr(C)/D`` for the
other curvatures (``InfluenceScorer(damping=None)``, :mod:`gradsift.influence.defaults`).
``λ = 0.01`` is the absolute damping of the exact-IF reference (LDS 0.734) in
``kfac_fidelity.md``. The sweep is absolute ``λ`` on a common grid.

Also printed: per-layer Frobenius errors of the Kronecker rows; the spread of the sampled
Fisher over label seeds; the library's own solvers (``InfluenceScorer``, float32, their
defaults, sampled-label rows over ``--seeds`` seeds, per-layer damping) next to
kronfluence's EK-FAC (skipped when kronfluence is not installed, see
``kfac_fidelity.py``); and the seconds of an EK-FAC fit with the sampled and the exact
Fisher on the MNIST MLP 784-512-256-10 (``--mnist-rows``; the cost of the exact default);
with ``--mnist-lds`` also the LDS of both on ``kfac_mnist.py``'s MNIST set-up.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr

from gradsift.evaluate import lds_from_outputs, run_retrains, subset_masks
from gradsift.evaluate.lds import subset_indices
from gradsift.experiments.datasets import load_digits, load_mnist
from gradsift.experiments.models import mlp
from gradsift.experiments.training import TrainConfig, train_classifier
from gradsift.grads.computer import GradientComputer
from gradsift.grads.layout import layout_of
from gradsift.influence import (
    EKFACSolver,
    GGNOperator,
    HessianOperator,
    KFACOperator,
    KFACSolver,
    fit_kfac_factors,
)
from gradsift.task import ClassificationTask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from influence_fidelity import run_method  # noqa: E402
from kfac_fidelity import kronfluence_ekfac  # noqa: E402

GRID = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
REF_DAMPING = 1e-2

# --------------------------------------------------------------------------- ground truth


@dataclass
class GroundTruth:
    """Full model (float32), data, subset masks ``[M, n]``, subset models' ``−loss`` on the
    test ``[M, m]`` and validation ``[M, v]`` points."""

    model: torch.nn.Module
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    masks: np.ndarray
    actual_test: np.ndarray
    actual_val: np.ndarray
    seconds: float


def ground_truth(n_models: int, epochs: int, alpha: float, wd: float) -> GroundTruth:
    """:func:`influence_fidelity.digits_lds` with outputs on the validation points too."""
    data = load_digits(seed=0)
    Xtr, ytr = data.train.X, data.train.y
    Xev = np.concatenate([data.test.X, data.val.X])
    yev = np.concatenate([data.test.y, data.val.y])
    m = len(data.test.y)
    cfg = TrainConfig(
        epochs=epochs, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=wd, seed=0
    )

    def fresh() -> torch.nn.Module:
        return mlp(64, 10, hidden=(32,), seed=0)

    def retrain(keep: np.ndarray, seed: int) -> np.ndarray:
        sub = fresh()
        train_classifier(sub, Xtr[keep], ytr[keep], cfg, progress=False)
        with torch.no_grad():
            out = sub.eval()(torch.from_numpy(Xev))
            return -F.cross_entropy(out, torch.from_numpy(yev), reduction="none").numpy()

    model = fresh()
    train_classifier(model, Xtr, ytr, cfg, progress=False)
    model.eval()
    masks = subset_masks(len(ytr), n_models, alpha, seed=0)
    t0 = time.perf_counter()
    subsets = subset_indices(len(ytr), n_models, alpha, seed=0)
    actual = run_retrains(retrain, subsets, [0] * n_models, name="lds")
    t = torch.from_numpy
    return GroundTruth(
        model,
        (t(Xtr), t(ytr)),
        (t(data.test.X), t(data.test.y)),
        (t(data.val.X), t(data.val.y)),
        masks,
        actual[:, :m],
        actual[:, m:],
        time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- curvatures


def per_sample_grads(model: torch.nn.Module, task: ClassificationTask, X, y) -> np.ndarray:
    """``[n, D]`` float64 per-sample gradients of the cross-entropy with labels ``y``."""
    G, _ = GradientComputer(model, task, "vmap", chunk_size=256).compute((X, y))
    return G.double().numpy()


def sampled_fisher(model, task, X: torch.Tensor, k: int, seed: int) -> np.ndarray:
    """``(1/(nk)) Σ_i Σ_j g̃_ij g̃_ijᵀ`` with ``k`` labels per sample drawn from the model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        p = torch.softmax(model(X), dim=-1)
    Fm = 0.0
    for _ in range(k):
        yh = torch.multinomial(p, 1, generator=gen).flatten()
        Gs = per_sample_grads(model, task, X, yh)
        Fm = Fm + Gs.T @ Gs
    return Fm / (k * len(X))


def fisher_noise(model, task, X: torch.Tensor, ggn: np.ndarray, seeds: int) -> list[str]:
    """Table rows: ``tr(F)/tr(G)`` and ``‖F − G‖_F / ‖G‖_F`` of sampled Fishers ``F``
    (1 and 16 labels per sample) against the GGN ``G``, over label seeds."""
    rows = []
    for k in (1, 16):
        stats = []
        for s in range(seeds):
            Fk = sampled_fisher(model, task, X, k, seed=100 + s)
            stats.append(
                (np.trace(Fk) / np.trace(ggn), np.linalg.norm(Fk - ggn) / np.linalg.norm(ggn))
            )
        a = np.array(stats)
        rows.append(
            f"| {k} | {a[:, 0].min():.2f}–{a[:, 0].max():.2f} | {a[:, 1].min():.2f}–{a[:, 1].max():.2f} |"
        )
    return rows


def layer_index(model, task) -> list[dict]:
    """Per layer: the augmented ``[d_out, cols]`` vec → tracked-layout index map."""
    params = task.tracked_parameters(model)
    blocks = {b.name: b for b in layout_of(params)}
    out = []
    for name in dict.fromkeys(n.rpartition(".")[0] for n in params):
        w, b = blocks[f"{name}.weight"], blocks[f"{name}.bias"]
        d_out, d_in = w.shape
        idx = np.empty((d_out, d_in + 1), dtype=np.int64)
        idx[:, :d_in] = w.offset + np.arange(d_out * d_in).reshape(d_out, d_in)
        idx[:, d_in] = b.offset + np.arange(d_out)
        out.append({"name": name, "idx": idx.ravel(), "blocks": (w, b)})
    return out


def block_diag(C: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """``C`` restricted to the diagonal blocks given by index groups."""
    B = np.zeros_like(C)
    for g in groups:
        B[np.ix_(g, g)] = C[np.ix_(g, g)]
    return B


def kfac_dense(model, task, train, fisher: str, eigenvalues: str) -> tuple[np.ndarray, object]:
    """The library's K-FAC / EK-FAC curvature as a dense ``[D, D]`` (no weight decay)."""
    factors = fit_kfac_factors(
        model, task, train, fisher=fisher, correct_eigenvalues=eigenvalues == "ekfac",
        batch_size=256,
    )  # fmt: skip
    op = KFACOperator(
        factors, layout_of(task.tracked_parameters(model)), eigenvalues=eigenvalues,
        dtype=torch.float64,
    )  # fmt: skip
    return op.dense().numpy(), factors


def ekfac_from(factors, layers: list[dict], X: np.ndarray) -> np.ndarray:
    """K-FAC eigenbasis of ``factors`` with eigenvalues ``diag(Qᵀ X_l Q)`` per layer."""
    D = X.shape[0]
    out = np.zeros((D, D))
    for ly, lf in zip(layers, factors.layers, strict=True):
        Q = np.kron(lf.Q_S.numpy(), lf.Q_A.numpy())  # rows: augmented row-major vec
        idx = ly["idx"]
        lam = np.sum(Q * (X[np.ix_(idx, idx)] @ Q), axis=0)
        out[np.ix_(idx, idx)] = (Q * lam) @ Q.T
    return out


def replace_layer(C: np.ndarray, K: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``C`` with the diagonal block ``idx`` taken from ``K``."""
    out = C.copy()
    out[np.ix_(idx, idx)] = K[np.ix_(idx, idx)]
    return out


def nearest_kronecker(B: np.ndarray, p: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """``S [p, p]``, ``A [q, q]`` minimising ``‖B − S ⊗ A‖_F`` (Van Loan–Pitsianis: the
    top singular pair of the rearranged ``B``)."""
    R = B.reshape(p, q, p, q).transpose(0, 2, 1, 3).reshape(p * p, q * q)
    U, sv, Vt = np.linalg.svd(R, full_matrices=False)
    S, A = (U[:, 0] * np.sqrt(sv[0])).reshape(p, p), (Vt[0] * np.sqrt(sv[0])).reshape(q, q)
    return (S, A) if np.trace(S) >= 0 else (-S, -A)


def nkp_curvatures(ggn: np.ndarray, factors, layers: list[dict]) -> dict[str, np.ndarray]:
    """The Frobenius-nearest Kronecker product of each GGN layer block, and EK-FAC on its
    eigenbasis (eigenvalues ``diag(Qᵀ G_l Q)``)."""
    kron, ek = np.zeros_like(ggn), np.zeros_like(ggn)
    for ly, lf in zip(layers, factors.layers, strict=True):
        idx = ly["idx"]
        B = ggn[np.ix_(idx, idx)]
        S, A = nearest_kronecker(B, lf.d_out, lf.cols)
        kron[np.ix_(idx, idx)] = np.kron(S, A)
        Q = np.kron(np.linalg.eigh((S + S.T) / 2)[1], np.linalg.eigh((A + A.T) / 2)[1])
        ek[np.ix_(idx, idx)] = (Q * np.sum(Q * (B @ Q), axis=0)) @ Q.T
    return {"Frobenius-nearest S ⊗ A of GGN ⊕ layer": kron, "EK-FAC on that basis": ek}


def kron_errors(ggn: np.ndarray, curv: dict[str, np.ndarray], layers: list[dict]) -> list[str]:
    """``‖C_l − G_l‖_F / ‖G_l‖_F`` per layer for the Kronecker rows."""
    lines = []
    for name in ("K-FAC (exact Fisher)", "EK-FAC (exact Fisher)",
                 "Frobenius-nearest S ⊗ A of GGN ⊕ layer", "EK-FAC on that basis"):  # fmt: skip
        errs = []
        for ly in layers:
            i = np.ix_(ly["idx"], ly["idx"])
            errs.append(np.linalg.norm(curv[name][i] - ggn[i]) / np.linalg.norm(ggn[i]))
        lines.append(f"| {name} | " + " | ".join(f"{e:.3f}" for e in errs) + " |")
    return lines


# --------------------------------------------------------------------------- scoring


class Scorer:
    """Scores ``G_train (C + wd I + λI)⁻¹ G_evalᵀ`` for a damping sweep, from one ``eigh``."""

    def __init__(self, Gtr: np.ndarray, Gev: np.ndarray, wd: float) -> None:
        self.Gtr, self.Gev, self.wd = Gtr, Gev, wd

    def sweep(self, C: np.ndarray, lams: list[float]) -> list[np.ndarray]:
        e, V = np.linalg.eigh((C + C.T) / 2)
        Ptr, Pev = self.Gtr @ V, self.Gev @ V
        return [(Ptr / (e + self.wd + lam)) @ Pev.T for lam in lams]


def lds(S: np.ndarray, masks: np.ndarray, actual: np.ndarray) -> float:
    if not np.isfinite(S).all():
        return float("nan")
    return lds_from_outputs(S, masks, actual).score


# --------------------------------------------------------------------------- main


def build_curvatures(model64, task, train, Gtr, layers, quick: bool) -> dict[str, np.ndarray]:
    """Every dense curvature of the study (float64, without weight decay)."""
    t0 = time.perf_counter()
    C: dict[str, np.ndarray] = {}
    C["H (exact Hessian)"] = HessianOperator(model64, task, train, vector_chunk=128).dense().numpy()
    ggn = GGNOperator(model64, task, train, vector_chunk=128).dense().numpy()
    C["GGN (= true Fisher, exact)"] = ggn
    per_layer = [ly["idx"] for ly in layers]
    per_tensor = [np.arange(b.offset, b.stop) for ly in layers for b in ly["blocks"]]
    C["GGN ⊕ layer"] = block_diag(ggn, per_layer)
    C["GGN ⊕ tensor"] = block_diag(ggn, per_tensor)
    X = train[0].double()
    f1 = sampled_fisher(model64, task, X, 1, seed=0)
    C["Fisher sampled ×1"] = f1
    C["Fisher sampled ×1 ⊕ layer"] = block_diag(f1, per_layer)
    if not quick:
        C["Fisher sampled ×16 ⊕ layer"] = block_diag(
            sampled_fisher(model64, task, X, 16, seed=1), per_layer
        )
    emp = Gtr.T @ Gtr / len(Gtr)
    C["Fisher empirical ⊕ layer"] = block_diag(emp, per_layer)
    C["K-FAC (exact Fisher)"], fx = kfac_dense(model64, task, train, "exact", "kfac")
    C["EK-FAC (exact Fisher)"], _ = kfac_dense(model64, task, train, "exact", "ekfac")
    C["K-FAC (sampled Fisher, 1 label)"], fs = kfac_dense(model64, task, train, "sampled", "kfac")
    C["EK-FAC (sampled Fisher, 1 label)"], _ = kfac_dense(model64, task, train, "sampled", "ekfac")
    C["EK-FAC basis(exact) + diag(H ⊕ layer)"] = ekfac_from(fx, layers, C["H (exact Hessian)"])
    C["EK-FAC basis(sampled) + diag(GGN)"] = ekfac_from(fs, layers, ggn)
    if not quick:
        C["EK-FAC basis(sampled) + diag(Fisher ×16)"] = ekfac_from(
            fs, layers, C["Fisher sampled ×16 ⊕ layer"]
        )
    hidden, head = layers[0], layers[-1]
    for kind in ("K-FAC", "EK-FAC"):
        K = C[f"{kind} (exact Fisher)"]
        C[f"GGN ⊕ layer, hidden layer → {kind}"] = replace_layer(C["GGN ⊕ layer"], K, hidden["idx"])
        C[f"GGN ⊕ layer, head → {kind}"] = replace_layer(C["GGN ⊕ layer"], K, head["idx"])
    C.update(nkp_curvatures(ggn, fx, layers))
    print(f"(curvatures built in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return C


def default_damping(name: str, C: np.ndarray) -> float:
    """The library's default ``λ`` for this kind of curvature (see the module docstring)."""
    factor = 0.1 if "K-FAC" in name or "S ⊗ A" in name else 1e-2
    return factor * float(np.trace(C)) / C.shape[0]


STEPS = [
    ("H (exact Hessian)", "Hessian → GGN"),
    ("GGN (= true Fisher, exact)", "GGN → per-layer blocks"),
    ("GGN ⊕ layer", "blocks → Kronecker (K-FAC, exact Fisher)"),
    ("K-FAC (exact Fisher)", "K-FAC → EK-FAC correction (exact Fisher)"),
    ("EK-FAC (exact Fisher)", "exact Fisher → 1 sampled label (the old default)"),
    ("EK-FAC (sampled Fisher, 1 label)", None),
]


def library_rows(gt: GroundTruth, task, wd: float, seeds: int) -> list[tuple[str, str, str]]:
    """LDS and seconds of the library's own solvers (float32, ``InfluenceScorer``)."""

    def run(solver) -> tuple[float, float]:
        S, sec, _ = run_method(
            gt.model, task, "if-cg", {"solver": solver, "weight_decay": wd}, gt.train, gt.test
        )
        return lds(S, gt.masks, gt.actual_test), sec

    rows = []
    for cls in (KFACSolver, EKFACSolver):
        value, sec = run(cls())
        rows.append((f"{cls.__name__}() (default: fisher='auto' → exact)", f"{value:.3f}",
                     f"{sec:.2f}"))  # fmt: skip
        runs = np.array([run(cls(fisher="sampled", seed=k)) for k in range(seeds)])
        rows.append((
            f"{cls.__name__}(fisher='sampled'), seeds 0–{seeds - 1} (the old default)",
            f"{runs[:, 0].mean():.3f} ± {runs[:, 0].std():.3f} (seed 0: {runs[0, 0]:.3f})",
            f"{runs[:, 1].mean():.2f}",
        ))  # fmt: skip
    value, sec = run(EKFACSolver(damping_scope="layer"))
    rows.append(("EKFACSolver(damping_scope='layer') (per-layer λ)", f"{value:.3f}", f"{sec:.2f}"))
    S, sec, note = kronfluence_ekfac(gt.model, gt.train, gt.test)
    rows.append(("kronfluence EK-FAC (its defaults)", f"{lds(S, gt.masks, gt.actual_test):.3f}",
                 f"{sec:.2f} {note}"))  # fmt: skip
    return rows


def mnist_fit_seconds(n_train: int) -> list[tuple[str, float]]:
    """Seconds of the EK-FAC fit (both passes) on the MNIST MLP 784-512-256-10 (536k
    parameters, as in ``kfac_mnist.py``; untrained weights: the cost does not depend on
    them), sampled vs exact Fisher."""
    data = load_mnist(seed=0, n_train=n_train, n_val=10, n_test=10)
    X, y = torch.from_numpy(data.train.X), torch.from_numpy(data.train.y)
    model = mlp(784, 10, hidden=(512, 256), seed=0).eval()
    out = []
    for fisher in ("sampled", "exact"):
        t0 = time.perf_counter()
        fit_kfac_factors(model, ClassificationTask("all"), (X, y), fisher=fisher, batch_size=256)
        out.append((fisher, time.perf_counter() - t0))
    return out


def mnist_lds_rows(wd: float) -> list[tuple[str, str, str]]:
    """K-FAC / EK-FAC with the sampled vs the exact Fisher on ``kfac_mnist.py``'s set-up
    (MLP 784-512-256-10, 536k parameters, 2,000 rows, 16 test points, 50 subset models)."""
    from kfac_mnist import mnist_lds

    cfg = TrainConfig(
        epochs=15, batch_size=64, lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=wd,
        seed=0,
    )  # fmt: skip
    gt = mnist_lds(2000, 16, 50, cfg)
    task = ClassificationTask("all")
    common = {"weight_decay": wd, "tracked": "task", "block_rows": 256, "gradient_method": "hooks"}
    rows = []
    for cls in (KFACSolver, EKFACSolver):
        for fisher in ("sampled", "auto"):
            solver = cls(fisher=fisher)
            S, sec, _ = run_method(gt.model, task, "if-cg", {"solver": solver, **common},
                                   gt.train, gt.test)  # fmt: skip
            res = gt.lds(S)
            label = f"{cls.__name__}(fisher={fisher!r})" + (" → exact" if fisher == "auto" else "")
            rows.append((label, f"{res.score:.3f} ± {np.nanstd(res.per_test):.3f}", f"{sec:.1f}"))
    return rows


def print_report(rows, lib, mnist, mnist_lds, errors, noise, args, dims) -> None:
    n, m, v, D = dims
    print(
        f"\n## Decomposition: MLP 64-32-10 on digits (n = {n}, {m} test points for the LDS, "
        f"{v} validation points to choose λ, {args.models_used} models on α = 0.5 subsets, "
        f"{args.epochs_used} epochs; tracked: all, D = {D}; weight decay 1e-3 added to every C)"
        "\n"
    )
    print(
        "| curvature C | tr(C)/D | default λ | LDS @ default λ | LDS @ λ = 0.01 "
        "| Pearson vs exact IF (λ = 0.01) | val-chosen λ | LDS @ val-chosen λ |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['name']} | {r['mean_eig']:.4g} | {r['lam_def']:.3g} | {r['lds_def']:.3f} "
            f"| {r['lds_ref']:.3f} | {r['pearson_ref']:.3f} | {r['lam_val']:.3g} "
            f"| {r['lds_val']:.3f} |"
        )
    by = {r["name"]: r for r in rows}
    print("\n### Which step loses the LDS (test points; λ chosen on the validation points)\n")
    print("| from | step | LDS before | LDS after | change | change @ default λ |")
    print("|---|---|---:|---:|---:|---:|")
    for (a, step), (b, _) in zip(STEPS, STEPS[1:], strict=False):
        ra, rb = by[a], by[b]
        print(
            f"| {a} | {step} | {ra['lds_val']:.3f} | {rb['lds_val']:.3f} "
            f"| {rb['lds_val'] - ra['lds_val']:+.3f} | {rb['lds_def'] - ra['lds_def']:+.3f} |"
        )
    print("\n### Kronecker approximation error per layer, ‖C_l − G_l‖_F / ‖G_l‖_F\n")
    print("| curvature | hidden layer (32 × 65) | head (10 × 33) |")
    print("|---|---:|---:|")
    print("\n".join(errors))
    print(
        f"\n### Noise of the sampled Fisher (whole D × D matrix; {args.seeds_used} label seeds)\n"
    )
    print("| labels per sample | tr(F) / tr(GGN) | ‖F − GGN‖_F / ‖GGN‖_F |")
    print("|---:|---:|---:|")
    print("\n".join(noise))
    for key, title in (("sweep", "test points (the LDS)"), ("sweep_val", "validation points")):
        print(f"\n### Damping sweep (λ on top of the weight decay), LDS on the {title}\n")
        print("| curvature C | " + " | ".join(f"λ = {x:g}" for x in GRID) + " |")
        print("|---|" + "---:|" * len(GRID))
        for r in rows:
            print(f"| {r['name']} | " + " | ".join(f"{x:.3f}" for x in r[key]) + " |")
    print("\n### The library's solvers (float32, `InfluenceScorer`, default damping), test LDS\n")
    print("| solver | LDS | wall s (fit + scores) |")
    print("|---|---:|---:|")
    for row in lib:
        print("| " + " | ".join(row) + " |")
    if mnist_lds:
        print(
            "\n### MNIST MLP 784-512-256-10 (536k parameters; the set-up of `kfac_mnist.py`: "
            "2,000 rows, 16 test points, 50 subset models), test LDS\n"
        )
        print("| solver | LDS mean ± std over test points | wall s (fit + scores) |")
        print("|---|---:|---:|")
        for row in mnist_lds:
            print("| " + " | ".join(row) + " |")
    if mnist:
        print(
            f"\nCost of the exact Fisher: EK-FAC fit (both passes) on the MNIST MLP "
            f"784-512-256-10 (536k parameters), {args.mnist_rows} rows, batch 256: "
            + ", ".join(f"{k} {sec:.1f} s" for k, sec in mnist)
            + "."
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=5, help="label seeds of the sampled rows")
    parser.add_argument("--mnist-rows", type=int, default=2000, help="0: skip the MNIST cost")
    parser.add_argument(
        "--mnist-lds", action="store_true", help="also the MNIST LDS, sampled vs exact (~4 min)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_models, epochs = (8, 5) if args.quick else (args.models, args.epochs)
    args.models_used, args.epochs_used = n_models, epochs
    args.seeds_used = 2 if args.quick else args.seeds
    wd = 1e-3
    t_start = time.perf_counter()
    gt = ground_truth(n_models, epochs, 0.5, wd)
    task = ClassificationTask("all")
    model64 = copy.deepcopy(gt.model).double()
    tr = (gt.train[0].double(), gt.train[1])
    Gtr = per_sample_grads(model64, task, *tr)
    Gte = per_sample_grads(model64, task, gt.test[0].double(), gt.test[1])
    Gva = per_sample_grads(model64, task, gt.val[0].double(), gt.val[1])
    m = len(Gte)
    layers = layer_index(model64, task)
    curv = build_curvatures(model64, task, tr, Gtr, layers, args.quick)
    scorer = Scorer(Gtr, np.concatenate([Gte, Gva]), wd)
    rows, ref = [], None
    k_ref = 1 + GRID.index(REF_DAMPING)
    for name, C in curv.items():
        lam_def = default_damping(name, C)
        lams = [lam_def, *GRID]
        sweeps = scorer.sweep(C, lams)
        test = [lds(S[:, :m], gt.masks, gt.actual_test) for S in sweeps]
        val = [lds(S[:, m:], gt.masks, gt.actual_val) for S in sweeps]
        ref = sweeps[k_ref][:, :m] if ref is None else ref  # exact Hessian, λ = 0.01
        best = 1 + int(np.nanargmax(val[1:]))
        rows.append({
            "name": name, "mean_eig": float(np.trace(C)) / C.shape[0], "lam_def": lam_def,
            "lds_def": test[0], "lds_ref": test[k_ref],
            "pearson_ref": float(pearsonr(sweeps[k_ref][:, :m].ravel(), ref.ravel())[0]),
            "lam_val": lams[best], "lds_val": test[best], "sweep": test[1:], "sweep_val": val[1:],
        })  # fmt: skip
        print(f"{name}: default {test[0]:.3f}, sweep {np.round(test[1:], 3)}", file=sys.stderr)
    ggn = curv["GGN (= true Fisher, exact)"]
    errors = kron_errors(ggn, curv, layers)
    noise = fisher_noise(model64, task, tr[0], ggn, 2 if args.quick else args.seeds)
    lib = library_rows(gt, task, wd, 2 if args.quick else args.seeds)
    mnist = mnist_fit_seconds(args.mnist_rows) if args.mnist_rows > 0 else []
    dims = (len(Gtr), m, len(Gva), Gtr.shape[1])
    mnist_lds = mnist_lds_rows(wd) if args.mnist_lds else []
    print_report(rows, lib, mnist, mnist_lds, errors, noise, args, dims)
    print(f"\nTotal {time.perf_counter() - t_start:.0f} s, torch threads {args.threads}.")


if __name__ == "__main__":
    main()
