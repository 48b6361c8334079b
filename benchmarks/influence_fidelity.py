"""Fidelity of every influence method: leave-one-out and the linear datamodeling score.

Run (about 4–6 minutes on 2 busy CPU cores)::

    nice -n 10 .venv/bin/python benchmarks/influence_fidelity.py
    nice -n 10 .venv/bin/python benchmarks/influence_fidelity.py --quick   # smoke run
    # LDS with every MLP parameter tracked (D = 2,410; the Hessian is indefinite there):
    nice -n 10 .venv/bin/python benchmarks/influence_fidelity.py --tracked all --damping 0.01

Part 1 — leave-one-out (LOO). L2-regularised logistic regression (weight decay 1e-2 on
all 31 parameters) on scikit-learn's breast_cancer data in float64, trained by Newton's
method to ‖∇‖ < 1e-13; each of the ``n`` LOO models is retrained the same way without one
sample (mean loss over the other n − 1 rows, warm start). For each of the highest-loss
test points, Pearson and Spearman correlation between ``score / n`` and the actual change
of the test loss, averaged over the test points. TracIn uses checkpoints of a separate
SGD run from zero to the same objective (the Newton solution has no trajectory).

Part 2 — LDS. An MLP (64-32-10) on digits, trained by SGD + momentum with weight decay
(checkpoints every 5 epochs for TracIn); ``M`` models retrained with the same recipe on
random α = 0.5 subsets. For each test point, the Spearman correlation over the subsets
between ``Σ_{i ∈ S} score_i`` and ``−loss`` of that subset's model, averaged over test
points (positive = the scores rank subsets correctly). Influence is computed on the
final model's last layer (330 tracked parameters) for every method.

Wall time is ``fit`` + all pairwise scores for the method, measured in this run.
"Pearson vs if-exact" pools every (train, test) score of the method against the exact
influence function's (how close each approximation gets to the quantity it approximates).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr
from sklearn.datasets import load_breast_cancer

from gradsift.checkpoints import CheckpointRecorder
from gradsift.errors import GradsiftError
from gradsift.evaluate import (
    LDSResult,
    lds_from_outputs,
    leave_one_out,
    run_retrains,
    subset_masks,
)
from gradsift.evaluate.lds import subset_indices
from gradsift.experiments.datasets import load_digits
from gradsift.experiments.models import logistic_regression, mlp
from gradsift.experiments.training import TrainConfig, train_classifier
from gradsift.influence import ConvergenceWarning, InfluenceScorer, LiSSASolver
from gradsift.task import BinaryClassificationTask, ClassificationTask, Task

# --------------------------------------------------------------------------- methods


def methods(
    checkpoints: CheckpointRecorder, wd: float, damping: float
) -> list[tuple[str, str, dict]]:
    """(row label, InfluenceScorer method, keyword arguments)."""
    return [
        ("dot", "dot", {}),
        ("cosine", "cosine", {}),
        ("tracin", "tracin", {"checkpoints": checkpoints}),
        ("if-exact", "if-exact", {"damping": damping, "weight_decay": wd}),
        ("if-cg", "if-cg", {"damping": damping, "weight_decay": wd}),
        ("if-lissa (auto scale)", "if-lissa", {"damping": damping, "weight_decay": wd}),
        (
            "if-lissa (FastIF d=5e-3, s=1e4, T=1000)",
            "if-lissa",
            {"solver": LiSSASolver.from_fastif(), "weight_decay": wd},
        ),
        ("datainf", "datainf", {"weight_decay": wd}),
    ]


def run_method(
    model: torch.nn.Module, task: Task, method: str, kw: dict, train: Any, test: Any
) -> tuple[np.ndarray, float, str]:
    """Scores [n_train, n_test] (NaN when the method refuses), seconds, a diagnostics note."""
    kw = {"tracked": "task", **kw}  # the task's tracked parameters, not the scorer's "auto"
    if "solver" in kw:
        kw["solver"] = copy.deepcopy(kw["solver"])
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        scorer = InfluenceScorer(model, task, method, **kw)
        try:
            S = scorer.fit(train).scores(train, test)
        except GradsiftError as err:
            n, m = len(train[0]), len(test[0])
            return np.full((n, m), np.nan), time.perf_counter() - t0, f"refused: {err}"
    seconds = time.perf_counter() - t0
    note = ""
    d = scorer.solver.diagnostics if scorer.solver is not None else None
    if d is not None and d.residual_max is not None:
        note = f"residual ≤ {d.residual_max:.2g}"
    if d is not None and d.scale is not None:
        note += f", scale {d.scale:.3g}"
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        note += " (ConvergenceWarning)"
    return S, seconds, note


def vs_exact(S: np.ndarray, exact: np.ndarray) -> float:
    """Pearson correlation of all pairwise scores with the exact influence scores."""
    if np.isnan(S).any() or np.isnan(exact).any():
        return float("nan")
    return float(pearsonr(S.ravel(), exact.ravel())[0])


# --------------------------------------------------------------------------- part 1: LOO


def newton(A: np.ndarray, y: np.ndarray, wd: float, theta: np.ndarray) -> np.ndarray:
    n = len(y)
    for _ in range(100):
        p = 1 / (1 + np.exp(-A @ theta))
        g = A.T @ (p - y) / n + wd * theta
        if np.linalg.norm(g) < 1e-13:
            return theta
        H = (A * (p * (1 - p))[:, None]).T @ A / n + wd * np.eye(A.shape[1])
        theta = theta - np.linalg.solve(H, g)
    raise RuntimeError("Newton did not converge")


def bce(A: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    z = A @ theta
    return np.logaddexp(0, z) - y * z


def sgd_checkpoints(X: torch.Tensor, y: torch.Tensor, wd: float, epochs: int) -> CheckpointRecorder:
    """Mini-batch SGD from zero on the same objective, a checkpoint after every 5 epochs."""
    model = logistic_regression(X.shape[1], 1).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=wd)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10, gamma=0.5)
    rec = CheckpointRecorder(every=5)
    gen = torch.Generator().manual_seed(0)
    step = 0
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(y), generator=gen).split(32):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(model(X[idx])[:, 0], y[idx].double()).backward()
            opt.step()
            step += 1
        rec.on_epoch_end(model, opt, epoch, step)
        sched.step()
    return rec


def part_loo(n_train: int, n_points: int, wd: float = 1e-2) -> list[dict]:
    X, y = load_breast_cancer(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    X, y = X[perm], y[perm].astype(np.int64)
    X = (X - X[:n_train].mean(0)) / X[:n_train].std(0)
    Xtr, ytr, Xte, yte = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    A = np.hstack([Xtr, np.ones((n_train, 1))])
    Ate = np.hstack([Xte, np.ones((len(yte), 1))])
    theta = newton(A, ytr, wd, np.zeros(A.shape[1]))
    base = bce(Ate, yte, theta)
    pts = np.argsort(-base)[:n_points]

    def retrain(keep: np.ndarray, seed: int) -> np.ndarray:
        """Test losses after Newton on the rows ``keep`` (warm start at θ; seed unused)."""
        return bce(Ate[pts], yte[pts], newton(A[keep], ytr[keep], wd, theta))

    model = logistic_regression(X.shape[1], 1).double().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(theta[:-1])[None])
        model[1].bias.copy_(torch.from_numpy(theta[-1:]))
    train = (torch.from_numpy(Xtr), torch.from_numpy(ytr))
    test = (torch.from_numpy(Xte[pts]), torch.from_numpy(yte[pts]))
    rec = sgd_checkpoints(*train, wd=wd, epochs=30)
    results = [
        (label, *run_method(model, BinaryClassificationTask(), method, kw, train, test))
        for label, method, kw in methods(rec, wd, damping=0.0)
    ]
    exact = next(S for label, S, _, _ in results if label == "if-exact")
    rows, loo_seconds = [], 0.0
    # gradsift.evaluate.leave_one_out: the n + 1 retrainings run once (first method) and
    # are read back from the cache for the others.
    with tempfile.TemporaryDirectory() as cache:
        for label, S, sec, note in results:
            t0 = time.perf_counter()
            loo = leave_one_out(S, retrain, cache_dir=cache)
            loo_seconds = max(loo_seconds, time.perf_counter() - t0)
            rows.append(
                {
                    "method": label,
                    "pearson": loo.pearson,
                    "pearson_min": float(np.min(loo.per_test_pearson)),
                    "spearman": loo.spearman,
                    "vs_exact": vs_exact(S, exact),
                    "seconds": sec,
                    "note": note,
                }
            )
    print(
        f"\n## Leave-one-out: logistic regression, breast_cancer (n = {n_train}, D = 31, "
        f"{n_points} highest-loss test points; {n_train} Newton retrainings took "
        f"{loo_seconds:.1f} s)\n"
    )
    print(
        "| method | Pearson vs LOO (mean) | Pearson vs LOO (min) | Spearman vs LOO (mean) "
        "| Pearson vs if-exact | wall s | notes |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['pearson']:.3f} | {r['pearson_min']:.3f} | "
            f"{r['spearman']:.3f} | {r['vs_exact']:.3f} | {r['seconds']:.2f} | {r['note']} |"
        )
    return rows


# --------------------------------------------------------------------------- part 2: LDS


@dataclass
class DigitsLDS:
    """The LDS ground truth on digits: the full model, its checkpoints, the data, the
    subset masks ``[M, n]`` and the subset models' ``−loss`` on every test point ``[M, m]``."""

    model: torch.nn.Module
    checkpoints: CheckpointRecorder
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    masks: np.ndarray
    actual: np.ndarray
    seconds: float

    def lds(self, S: np.ndarray) -> LDSResult | None:
        """:func:`gradsift.evaluate.lds_from_outputs` of scores ``[n, m]`` (None with NaNs)."""
        return None if np.isnan(S).any() else lds_from_outputs(S, self.masks, self.actual)


def digits_lds(n_models: int, epochs: int, alpha: float = 0.5, wd: float = 1e-3) -> DigitsLDS:
    """Train the MLP 64-32-10 on digits and ``n_models`` copies on seeded ``alpha``-subsets
    (:func:`gradsift.evaluate.subset_masks`, seed 0; each model gets its rows in draw
    order) with the same recipe and seed (:func:`gradsift.evaluate.run_retrains`); the
    outputs are ``−loss`` (helpful raises it)."""
    data = load_digits(seed=0)
    Xtr, ytr, Xte, yte = data.train.X, data.train.y, data.test.X, data.test.y
    cfg = TrainConfig(
        epochs=epochs, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=wd, seed=0
    )

    def fresh() -> torch.nn.Module:
        return mlp(64, 10, hidden=(32,), seed=0)

    def retrain(keep: np.ndarray, seed: int) -> np.ndarray:
        """``−loss`` per test point of a model trained on rows ``keep`` (seed unused: every
        subset model starts and shuffles like the full one)."""
        sub = fresh()
        train_classifier(sub, Xtr[keep], ytr[keep], cfg, progress=False)
        with torch.no_grad():
            out = sub.eval()(torch.from_numpy(Xte))
            return -F.cross_entropy(out, torch.from_numpy(yte), reduction="none").numpy()

    model = fresh()
    rec = CheckpointRecorder(every=5)
    train_classifier(model, Xtr, ytr, cfg, recorder=rec, progress=False)
    model.eval()
    masks = subset_masks(len(ytr), n_models, alpha, seed=0)
    t0 = time.perf_counter()
    subsets = subset_indices(len(ytr), n_models, alpha, seed=0)
    actual = run_retrains(retrain, subsets, [0] * n_models, name="lds")
    return DigitsLDS(
        model,
        rec,
        (torch.from_numpy(Xtr), torch.from_numpy(ytr)),
        (torch.from_numpy(Xte), torch.from_numpy(yte)),
        masks,
        actual,
        time.perf_counter() - t0,
    )


def part_lds(
    n_models: int,
    epochs: int,
    alpha: float = 0.5,
    wd: float = 1e-3,
    tracked: str = "last_linear",
    damping: float = 1e-3,
) -> list[dict]:
    gt = digits_lds(n_models, epochs, alpha, wd)
    model, rec, train, test = gt.model, gt.checkpoints, gt.train, gt.test
    n, subset_seconds = len(train[1]), gt.seconds

    def lds(S: np.ndarray) -> float:
        res = gt.lds(S)
        return float("nan") if res is None else res.score

    task = ClassificationTask(tracked)  # type: ignore[arg-type]
    dim = sum(p.numel() for p in task.tracked_parameters(model).values())
    results = [
        (label, *run_method(model, task, method, kw, train, test))
        for label, method, kw in methods(rec, wd, damping=damping)
    ]
    exact = next(S for label, S, _, _ in results if label == "if-exact")
    rows = [
        {
            "method": label,
            "lds": lds(S),
            "vs_exact": vs_exact(S, exact),
            "seconds": sec,
            "note": note,
        }
        for label, S, sec, note in results
    ]
    control = np.random.default_rng(1).standard_normal((n, len(test[1])))
    rows.append(
        {
            "method": "random scores (control)",
            "lds": lds(control),
            "vs_exact": vs_exact(control, exact),
            "seconds": 0.0,
            "note": "",
        }
    )
    print(
        f"\n## LDS: MLP 64-32-10 on digits (n = {n}, {len(test[1])} test points, {n_models} "
        f"models on α = {alpha} subsets, {epochs} epochs each; training them took "
        f"{subset_seconds:.1f} s; tracked: {tracked}, D = {dim}, damping {damping:g})\n"
    )
    print("| method | LDS (mean Spearman) | Pearson vs if-exact | wall s | notes |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['lds']:.3f} | {r['vs_exact']:.3f} | {r['seconds']:.2f} "
            f"| {r['note']} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--models", type=int, default=50, help="LDS subset models (>= 50)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--tracked", default="last_linear", help="LDS tracked parameters: last_linear | all"
    )
    parser.add_argument("--damping", type=float, default=1e-3, help="LDS damping λ")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.quick:
        part_loo(n_train=120, n_points=4)
        part_lds(n_models=8, epochs=5)
    else:
        part_loo(n_train=400, n_points=20)
        part_lds(n_models=args.models, epochs=30, tracked=args.tracked, damping=args.damping)
    print(f"\nTotal {time.perf_counter() - t0:.0f} s, torch threads {args.threads}.")


if __name__ == "__main__":
    main()
