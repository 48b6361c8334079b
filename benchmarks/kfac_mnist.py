"""EK-FAC / K-FAC vs CG on the MNIST MLP (536k parameters): LDS and seconds, side by side.

Issue 12 part 2, second half: the MNIST MLP 784-512-256-10 with **every** parameter
tracked (D = 535,818), where an explicit Hessian is impossible. One run scores the same
model, training rows, α-subsets and test points with

- ``dot`` (``g_tᵀ g_i``, no curvature: the floor),
- ``if-kfac`` and ``if-ekfac`` (gradsift's defaults: ``fisher="auto"``, i.e. the exact
  Fisher for this 10-class head, damping
  0.1 × the curvature's mean eigenvalue),
- ``if-cg`` on the **GGN** (positive semi-definite; the matrix K-FAC / EK-FAC approximate)
  with the *same* ``λ`` as EK-FAC's fitted damping, so the two differ only in the curvature
  approximation and the solve. Each CG iteration is one full-data GGN product per active
  test vector, so CG is capped at ``--cg-iters`` iterations (relative residual reported),
- ``if-cg`` on the **Hessian** (the scorer's own operator) with the same ``λ``: the ReLU
  network's Hessian is indefinite, so CG may refuse (negative curvature); that is a row,
- random scores (a control).

Ground truth (:mod:`gradsift.evaluate`): ``--models`` models retrained on seeded α = 0.5
subsets (:func:`gradsift.evaluate.lds.subset_indices`, seed 0) with the full model's
recipe, initialisation and shuffling seed, through :func:`gradsift.evaluate.run_retrains`;
their ``−loss`` on the test points; LDS by :func:`gradsift.evaluate.lds_from_outputs`
(Spearman over subsets per test point, mean over test points). Wall seconds are
``fit`` + all pairwise scores of each method, measured in this run on one torch thread.

Sizes (defaults, chosen so the whole run takes ≤ 25 minutes on the shared 2-core machine):
2,000 MNIST training rows (stratified subsample, seed 0), 16 random clean test points,
50 subset models of 1,000 rows, 15 epochs of SGD + momentum each, CG ≤ 30 iterations.

    nice -n 10 .venv/bin/python benchmarks/kfac_mnist.py            # ~12-20 min on 2 cores
    nice -n 10 .venv/bin/python benchmarks/kfac_mnist.py --cg-iters 80 --no-hessian-cg
    nice -n 10 .venv/bin/python benchmarks/kfac_mnist.py --quick    # a check of the script
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gradsift.errors import GradsiftError
from gradsift.evaluate import LDSResult, lds_from_outputs, run_retrains, subset_masks
from gradsift.evaluate.lds import subset_indices
from gradsift.experiments.datasets import load_mnist
from gradsift.experiments.models import mlp
from gradsift.experiments.training import TrainConfig, accuracy, train_classifier
from gradsift.influence import CGSolver, EKFACSolver, KFACSolver
from gradsift.influence.ggn import GGNOperator
from gradsift.task import ClassificationTask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from influence_fidelity import run_method, vs_exact  # noqa: E402

HIDDEN = (512, 256)


@dataclass
class MnistLDS:
    """The full model, its data, the subset masks ``[M, n]`` and the subset models'
    ``−loss`` on each test point ``[M, m]``; ``seconds`` = time to train the subsets."""

    model: torch.nn.Module
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    masks: np.ndarray
    actual: np.ndarray
    seconds: float
    test_accuracy: float

    def lds(self, S: np.ndarray) -> LDSResult | None:
        return None if np.isnan(S).any() else lds_from_outputs(S, self.masks, self.actual)


def mnist_lds(
    n_train: int,
    n_test: int,
    n_models: int,
    cfg: TrainConfig,
    alpha: float = 0.5,
    cache: str | None = None,
) -> MnistLDS:
    """Train the MLP on ``n_train`` MNIST rows and ``n_models`` copies on α-subsets."""
    data = load_mnist(seed=0, n_train=n_train, n_val=100, n_test=2000)
    Xtr, ytr = data.train.X, data.train.y
    pick = np.random.default_rng(0).choice(len(data.test.y), n_test, replace=False)
    Xte, yte = data.test.X[pick], data.test.y[pick]

    def fresh() -> torch.nn.Module:
        return mlp(784, 10, hidden=HIDDEN, seed=0)

    def retrain(keep: np.ndarray, seed: int) -> np.ndarray:
        """``−loss`` per test point of a model trained on rows ``keep`` (same init and
        shuffling seed as the full model; ``seed`` unused)."""
        sub = fresh()
        train_classifier(sub, Xtr[keep], ytr[keep], cfg, progress=False)
        with torch.no_grad():
            out = sub.eval()(torch.from_numpy(Xte))
            return -F.cross_entropy(out, torch.from_numpy(yte), reduction="none").numpy()

    model = fresh()
    train_classifier(model, Xtr, ytr, cfg, progress=False)
    model.eval()
    acc = accuracy(model, data.test.X, data.test.y)
    t0 = time.perf_counter()
    subsets = subset_indices(len(ytr), n_models, alpha, seed=0)
    actual = run_retrains(retrain, subsets, [0] * n_models, cache_dir=cache, name="mnist_lds")
    return MnistLDS(
        model,
        (torch.from_numpy(Xtr), torch.from_numpy(ytr)),
        (torch.from_numpy(Xte), torch.from_numpy(yte)),
        subset_masks(len(ytr), n_models, alpha, seed=0),
        actual,
        time.perf_counter() - t0,
        acc,
    )


def fitted_damping(model, task, train, wd: float) -> float:
    """EK-FAC's default ``λ`` (0.1 × mean EK-FAC eigenvalue), from a throw-away fit (not
    timed: the EK-FAC row refits from scratch)."""
    solver = EKFACSolver().fit(model, task, train, weight_decay=wd)
    return float(solver.damping)


def cg_hessian(lam: float, a: argparse.Namespace) -> CGSolver:
    """CG on the Hessian (``if-cg``'s own operator, fitted by the scorer)."""
    return CGSolver(damping=lam, tol=a.cg_tol, max_iter=a.cg_iters)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=16)
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--cg-iters", type=int, default=30)
    ap.add_argument("--cg-tol", type=float, default=1e-4)
    ap.add_argument("--no-hessian-cg", action="store_true", help="skip the Hessian CG row")
    ap.add_argument("--cache", default=None, help="cache the subset models' outputs here")
    ap.add_argument("--quick", action="store_true", help="500 rows, 5 tests, 8 models, 3 epochs")
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_test, a.models, a.epochs, a.cg_iters = 500, 5, 8, 3, 5
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    wd = 1e-3
    cfg = TrainConfig(
        epochs=a.epochs, batch_size=64, lr=0.01, optimizer="sgd", momentum=0.9,
        weight_decay=wd, seed=0,
    )  # fmt: skip
    gt = mnist_lds(a.n_train, a.n_test, a.models, cfg, cache=a.cache)
    model, train, test = gt.model, gt.train, gt.test
    task = ClassificationTask("all")
    dim = sum(p.numel() for p in task.tracked_parameters(model).values())
    lam = fitted_damping(model, task, train, wd)
    grads = {"tracked": "task", "block_rows": 256, "gradient_method": "hooks"}
    common = {"weight_decay": wd, **grads}

    def ggn_cg() -> CGSolver:
        """CG on the GGN (positive semi-definite, the matrix EK-FAC approximates)."""
        op = GGNOperator(model, task, train, weight_decay=wd, batch_size=256)
        return CGSolver(damping=lam, tol=a.cg_tol, max_iter=a.cg_iters).fit_operator(op)

    it = f"λ = EK-FAC's, ≤ {a.cg_iters} it"
    rows = [
        ("dot (no curvature)", "dot", lambda: grads),
        ("if-kfac (defaults)", "if-kfac", lambda: {"solver": KFACSolver(), **common}),
        ("if-ekfac (defaults)", "if-ekfac", lambda: {"solver": EKFACSolver(), **common}),
        (f"if-cg (GGN, {it})", "if-cg", lambda: {"solver": ggn_cg(), **common}),
        (f"if-cg (Hessian, {it})", "if-cg", lambda: {"solver": cg_hessian(lam, a), **common}),
    ][: 4 if a.no_hessian_cg else 5]
    results = []
    for label, method, kwargs in rows:
        t0 = time.perf_counter()
        kw = kwargs()
        setup = time.perf_counter() - t0
        try:
            S, sec, note = run_method(model, task, method, kw, train, test)
        except GradsiftError as err:  # CG's negative-curvature refusal, reported as a row
            S = np.full((len(train[1]), len(test[1])), np.nan)
            sec, note = time.perf_counter() - t0 - setup, f"refused: {err}"
        results.append((label, S, sec + setup, note))
        print(f"[{label}] {sec + setup:.1f} s {note}", flush=True)
    control = np.random.default_rng(1).standard_normal(results[0][1].shape)
    results.append(("random scores (control)", control, 0.0, ""))
    ref = results[3][1]
    print(
        f"\n## LDS: MLP 784-512-256-10 on MNIST (n = {len(train[1])}, {len(test[1])} test "
        f"points, {a.models} models on α = 0.5 subsets, {a.epochs} epochs SGD+momentum, "
        f"wd {wd:g}; full-model test accuracy {gt.test_accuracy:.3f}; subsets trained in "
        f"{gt.seconds:.0f} s; tracked: all, D = {dim:,}; λ = {lam:.3g}; torch threads 1)\n"
    )
    print("| method | LDS mean ± std over test points | Pearson vs if-cg (GGN) | wall s | notes |")
    print("|---|---:|---:|---:|---|")
    for label, S, sec, note in results:
        res = gt.lds(S)
        cell = "—" if res is None else f"{res.score:.3f} ± {np.nanstd(res.per_test):.3f}"
        print(f"| {label} | {cell} | {vs_exact(S, ref):.3f} | {sec:.1f} | {note} |")
    print(f"\nTotal wall time {time.perf_counter() - t_all:.0f} s.")


if __name__ == "__main__":
    main()
