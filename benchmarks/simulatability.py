"""FastIF's explainability application: do the top-k influential samples explain a prediction?

FastIF (arXiv 2012.15781) shows people the most influential training samples of a
prediction and asks them to predict the model's output. Here the "person" is a simulator
(:mod:`gradsift.evaluate.simulatability`): the label vote of the k shown samples (ties →
the most influential), and a 1-NN over the shown samples in the model's penultimate-feature
space. The selections compared, on the same test points:

- ``helpful``: the k training samples with the largest influence ``g_tᵀ(H+λI)⁻¹g_i``
  on the test point's loss at the model's *own prediction* (``measurement``: loss at the
  predicted label, so the explanation is of the prediction, not of the true label);
- ``harmful``: the k most negative;
- ``nearest``: the k nearest training samples in the penultimate-feature space (the
  input of the last linear layer; FastIF's kNN candidate space);
- ``random``: k uniformly random training samples.

Influence is exact (Cholesky) over the last linear layer with full candidate sets — the
quantity FastIF approximates. Labels shown are the training labels the model saw (clean
here). Accuracy = fraction of test points where the simulator's label equals the model's
prediction, with a 95% Wilson interval. Run (≈ 2–3 min on 2 cores):

    nice -n 10 .venv/bin/python benchmarks/simulatability.py --out benchmarks/results/simulatability.md
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from markdown_out import emit  # benchmarks/ is on sys.path when run as a script

from gradsift.evaluate.simulatability import (
    compare_selections,
    nearest_selection,
    random_selection,
)
from gradsift.experiments.datasets import LabeledData, load_digits, load_mnist
from gradsift.experiments.models import build_model
from gradsift.experiments.training import TrainConfig, train_classifier
from gradsift.influence.hessian import HessianOperator
from gradsift.influence.scores import InfluenceScorer
from gradsift.influence.solvers import ExactSolver
from gradsift.task import ClassificationTask


def load(name: str, a: argparse.Namespace) -> LabeledData:
    if name == "digits":
        return load_digits(seed=a.seed)
    return load_mnist(seed=a.seed, n_train=a.mnist_train, n_val=500, n_test=a.n_test)


def run(name: str, a: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    t0 = time.perf_counter()
    data = load(name, a)
    Xtr, ytr = data.train.X, data.train.y
    test = np.arange(min(a.n_test, len(data.test)))
    Xte = data.test.X[test]
    model = build_model(
        "mlp", tuple(Xtr.shape[1:]), data.n_classes, seed=a.seed, hidden=(a.hidden,)
    )
    train_classifier(
        model,
        Xtr,
        ytr,
        TrainConfig(epochs=a.epochs, weight_decay=a.wd, seed=a.seed),
        progress=False,
    )
    model.eval()
    with torch.no_grad():
        pred = model(torch.as_tensor(Xte)).argmax(1).numpy()
        feats_tr = model[:-1](torch.as_tensor(Xtr)).numpy()
        feats_te = model[:-1](torch.as_tensor(Xte)).numpy()
    task = ClassificationTask()
    train = (torch.as_tensor(Xtr), torch.as_tensor(ytr))
    solver = ExactSolver(damping=a.damping).fit_operator(
        HessianOperator(model, task, train, weight_decay=a.wd)
    )
    scorer = InfluenceScorer(model, task, "if-exact", solver=solver, weight_decay=a.wd).fit(train)
    kmax = max(a.ks)
    # explain the prediction: the test "label" is the model's own prediction
    top = scorer.top_k(train, (torch.as_tensor(Xte), torch.as_tensor(pred)), k=kmax)
    selections = {
        "helpful": top.helpful_indices,
        "harmful": top.harmful_indices,
        "nearest (penultimate features)": nearest_selection(feats_tr, feats_te, kmax),
        "random": random_selection(len(ytr), len(test), kmax, seed=a.seed),
    }
    vote = compare_selections(selections, ytr, pred, ks=a.ks)
    knn = compare_selections(
        selections,
        ytr,
        pred,
        ks=a.ks,
        simulator="knn",
        train_features=feats_tr,
        test_features=feats_te,
    )
    lines = [
        f"### {name}: {len(ytr)} train, {len(test)} test points, MLP hidden {a.hidden}, "
        f"{a.epochs} epochs, test accuracy {float((pred == data.test.y_clean[test]).mean()):.3f}",
        "",
        "| selection | k | vote simulator acc [95% CI] | 1-NN-of-shown simulator acc [95% CI] |",
        "|---|---:|---:|---:|",
    ]
    for v, n in zip(vote, knn, strict=True):
        lines.append(
            f"| {v['selection']} | {v['k']} | {v['accuracy']:.3f} [{v['low']:.3f}, {v['high']:.3f}] | "
            f"{n['accuracy']:.3f} [{n['low']:.3f}, {n['high']:.3f}] |"
        )
    return lines + [""], {"seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="digits,mnist")
    ap.add_argument("--mnist-train", type=int, default=10000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--ks", default="1,5,10")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--wd", type=float, default=1e-3)
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    a.ks = tuple(int(k) for k in a.ks.split(","))
    torch.set_num_threads(2)
    out = [
        "## FastIF application: simulatability",
        "",
        f"Command: `{' '.join(['.venv/bin/python', *sys.argv])}`",
        "",
    ]
    for name in a.datasets.split(","):
        lines, info = run(name, a)
        out += lines + [f"({info['seconds']:.0f} s)", ""]
        print("\n".join(out[-len(lines) - 2 :]), flush=True)
    emit(out, a.out)


if __name__ == "__main__":
    main()
