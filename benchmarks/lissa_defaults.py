"""LiSSA with default arguments against the exact inverse on convex problems.

Three L2-regularised logistic regressions, trained to stationarity by L-BFGS in float64:

- ``breast-cancer``: scikit-learn's breast_cancer (binary, 30 standardised features,
  weight decay 1e-2, 455 train / 114 test rows);
- ``digits``: scikit-learn's digits (10 classes, 64 standardised pixels, weight decay
  1e-3, 1,078 train rows);
- ``mnist-pca``: 2,000 MNIST training images reduced to 100 PCA dimensions (10 classes,
  weight decay 1e-3) — the setting where LiSSA's full-batch scale diverged with
  mini-batches of 64 (issue 13).

For each, ``InfluenceScorer(model, task, "if-lissa", weight_decay=wd, seed=s)`` with every
other argument at its default is compared with ``"if-exact"`` (same damping) on 20 test
points: Pearson over all (train, test) scores, for seeds 0–2, and the solver's scale,
minibatch-curvature estimate and automatic restarts. ``--old`` repeats it with the
previous full-batch scale rule (``scale_from="full", max_restarts=0``), and that rule
with automatic restarts, for comparison.

Usage::

    nice -n 10 .venv/bin/python benchmarks/lissa_defaults.py
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.decomposition import PCA

from gradsift.experiments.models import logistic_regression
from gradsift.influence import InfluenceScorer
from gradsift.task import BinaryClassificationTask, ClassificationTask, Task


def fit_logistic(X: np.ndarray, y: np.ndarray, n_classes: int, wd: float) -> torch.nn.Module:
    """L2-logistic regression trained by L-BFGS to stationarity (float64)."""
    out = 1 if n_classes == 2 else n_classes
    model = logistic_regression(X.shape[1], out).double()
    x, t = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y)
    opt = torch.optim.LBFGS(
        model.parameters(), max_iter=2000, tolerance_grad=1e-12, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = model(x)
        loss = (
            F.binary_cross_entropy_with_logits(z[:, 0], t.double())
            if out == 1
            else F.cross_entropy(z, t)
        )
        loss = loss + wd / 2 * sum(p.pow(2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model.eval()


def standardise(X: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (X - ref.mean(0)) / np.where(ref.std(0) > 0, ref.std(0), 1.0)


def problem(name: str, n_test: int = 20) -> dict[str, Any]:
    """Model, task, train/test tensors and weight decay of one convex setting."""
    rng = np.random.default_rng(0)
    if name == "breast-cancer":
        X, y = load_breast_cancer(return_X_y=True)
        wd, classes = 1e-2, 2
    elif name == "digits":
        X, y = load_digits(return_X_y=True)
        wd, classes = 1e-3, 10
    elif name == "mnist-pca":
        from gradsift.experiments.datasets import load_mnist

        data = load_mnist(n_train=2000, n_test=500, seed=0)
        Xtr = PCA(100, random_state=0).fit(data.train.X)
        X = np.vstack([Xtr.transform(data.train.X), Xtr.transform(data.test.X)])
        y = np.concatenate([data.train.y, data.test.y])
        wd, classes = 1e-3, 10
        perm = np.arange(len(y))
        n_train = 2000
    else:
        raise ValueError(name)
    if name != "mnist-pca":
        perm = rng.permutation(len(y))
        n_train = int(0.8 * len(y)) if name == "breast-cancer" else int(0.6 * len(y))
    tr, te = perm[:n_train], perm[n_train:][:n_test]
    Xtr, Xte = standardise(X[tr], X[tr]), standardise(X[te], X[tr])
    model = fit_logistic(Xtr, y[tr], classes, wd)
    task: Task = BinaryClassificationTask() if classes == 2 else ClassificationTask()
    ytype = torch.float64 if classes == 2 else torch.long
    return {
        "model": model,
        "task": task,
        "wd": wd,
        "train": (torch.as_tensor(Xtr), torch.as_tensor(y[tr], dtype=ytype)),
        "test": (torch.as_tensor(Xte), torch.as_tensor(y[te], dtype=ytype)),
    }


def scores(p: dict[str, Any], method: str, **kw: Any) -> tuple[np.ndarray, Any, float]:
    t0 = time.perf_counter()
    scorer = InfluenceScorer(p["model"], p["task"], method, weight_decay=p["wd"], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        S = scorer.fit(p["train"]).scores(p["train"], p["test"])
    return S, scorer.solver, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="breast-cancer,digits,mnist-pca")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--old", action="store_true", help="also the full-batch scale rule")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    variants = [("defaults", {})]
    if args.old:
        variants.append(("full-batch scale (old rule)", {"scale_from": "full", "max_restarts": 0}))
        variants.append(("full-batch scale + restarts", {"scale_from": "full"}))
    print(
        "| setting | n × D | LiSSA variant | seed | Pearson vs exact | scale | "
        "λ_max full / minibatch q | restarts | s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.settings.split(","):
        p = problem(name)
        exact, ex_solver, _ = scores(p, "if-exact")
        dims = f"{len(p['train'][0])} × {ex_solver.dim}"
        for label, kw in variants:
            for seed in range(args.seeds):
                try:
                    S, solver, sec = scores(p, "if-lissa", seed=seed, **kw)
                    r = float(pearsonr(S.ravel(), exact.ravel())[0])
                    d = solver.diagnostics
                    full = (
                        "—" if solver.full_eigenvalue is None else f"{solver.full_eigenvalue:.3g}"
                    )
                    mb = (
                        "—" if solver.batch_eigenvalue is None else f"{solver.batch_eigenvalue:.3g}"
                    )
                    print(
                        f"| {name} | {dims} | {label} | {seed} | {r:.4f} | {d.scale:.3g} | "
                        f"{full} / {mb} | {d.restarts} | {sec:.1f} |"
                    )
                except Exception as err:  # noqa: BLE001  (a diverged chain is a result here)
                    print(f"| {name} | {dims} | {label} | {seed} | failed: {err} | | | | |")


if __name__ == "__main__":
    main()
