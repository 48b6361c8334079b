"""FastIF with preconditioned retrieval against full influence on MNIST (issue 13).

Influence is ``⟨s_t, g_i⟩`` with ``s_t = (H+λI)⁻¹ g_t``, so the exact top-k of a test point
is a maximum-inner-product search with query ``s_t`` over the training gradients. This
script indexes the (projected) training gradients, queries with the projected
``P s_t`` (half the ``k`` candidates from ``+P s_t``: helpful, half from ``−P s_t``:
harmful), re-ranks the candidates with the exact influence, and compares it — in one
run, on the same test points and the same ``s_t`` — with

- **full**: ``s_tᵀ g_i`` for every training row from the stored gradients (streaming
  top-100, :func:`gradsift.influence.fastif.full_influence`), and
- **full, on demand**: the same with per-sample gradients recomputed per call (the
  baseline of the FastIF paper, which stores no gradients).

Model: MLP 784→128→10 trained 3 epochs (Adam, weight decay 1e-4); tracked: the head's
1,290 parameters; curvature: the exact Hessian of ``--hessian-rows`` training rows,
factorised **once** (Cholesky, :class:`ExactSolver`), so a test point's solve is two
triangular solves. The training gradients are extracted once (the "store", timed as a
one-off like the index builds). End-to-end time = test gradients + solve + retrieval +
re-ranking (FastIF) or + full scoring (full), for 1, 50 and ``--n-test`` test points.

Candidate spaces (``k`` per test point):

- ``exact-ip, P = I``: flat inner-product index over the unprojected gradients (checks
  that retrieval is exact: recall 1);
- ``flat-ip, random P``: seeded Gaussian projection to ``p`` numbers per tracked tensor,
  exact search — any miss is **projection** error;
- ``flat-ip, PCA r``: the top ``r`` principal directions of 10,000 training gradients
  (``FastIFConfig(basis="pca")``), exact search — projection error of a data-aware basis;
- ``ivf-ip`` / ``hnsw-ip, PCA r``: the same rows in faiss IVF / HNSW — the difference to
  ``flat-ip, PCA r`` is **ANN** error;
- ``features-l2``: the paper's penultimate-feature neighbours (k = 1000), for comparison.

Usage::

    nice -n 10 .venv/bin/python benchmarks/fastif.py                       # 50k train, 1,000 test
    .venv/bin/python benchmarks/fastif.py --n-train 10000 --n-test 200      # quick
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

from gradsift.experiments.datasets import load_mnist
from gradsift.experiments.models import mlp
from gradsift.experiments.training import TrainConfig, accuracy, train_classifier
from gradsift.grads.projection import ProjectionConfig
from gradsift.influence import ExactSolver
from gradsift.influence.fastif import FastIF, FastIFConfig, full_influence
from gradsift.influence.neighbors import IndexConfig, recall_at_k
from gradsift.task import ClassificationTask

PAPER_SPEEDUP = 80  # FastIF (Guo et al., 2021), reported on MNLI with BERT


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def setup(args: argparse.Namespace) -> dict[str, Any]:
    data = load_mnist(seed=args.seed, n_train=args.n_train)
    model = mlp(784, 10, hidden=(128,), seed=args.seed)
    config = TrainConfig(epochs=3, batch_size=128, weight_decay=1e-4, seed=args.seed)
    _, train_s = timed(train_classifier, model, data.train.X, data.train.y, config, progress=False)
    model.eval()
    picks = np.sort(np.random.default_rng(args.seed).choice(len(data.test), args.n_test, False))
    return {
        "model": model,
        "task": ClassificationTask(tracked="last_linear"),
        "train": (torch.as_tensor(data.train.X), torch.as_tensor(data.train.y)),
        "test": (torch.as_tensor(data.test.X[picks]), torch.as_tensor(data.test.y[picks])),
        "train_s": train_s,
        "test_acc": accuracy(model, data.test.X, data.test.y),
    }


def head(test: tuple[torch.Tensor, torch.Tensor], m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return test[0][:m], test[1][:m]


def end_to_end(fast: FastIF, test: Any, full: str | None = None) -> tuple[Any, float]:
    """Test gradients + solve + (FastIF retrieval and re-ranking | full scoring)."""
    t0 = time.perf_counter()
    S = fast.solve(fast.test_gradients(test))
    out = full_influence(fast, S, 100) if full else fast.influence(test, S)
    return out, time.perf_counter() - t0


def variants(args: argparse.Namespace) -> list[tuple[str, FastIFConfig]]:
    k, r = args.k, args.pca_dim
    ip: dict[str, Any] = {"space": "gradients", "batch_size": 4096}
    pca = {**ip, "basis": "pca", "pca_dim": r}
    rand = ProjectionConfig(dim=args.proj_dim, seed=args.seed)
    return [
        ("exact-ip, P = I", FastIFConfig(k=k, projection=None, index=IndexConfig("flat"), **ip)),
        (
            f"flat-ip, random P = {args.proj_dim}/tensor",
            FastIFConfig(k=k, projection=rand, index=IndexConfig("flat"), **ip),
        ),
        (f"flat-ip, PCA {r}", FastIFConfig(k=k, index=IndexConfig("flat"), **pca)),
        (
            f"ivf-ip (nprobe {args.nprobe}), PCA {r}",
            FastIFConfig(k=k, index=IndexConfig("ivf", nprobe=args.nprobe), **pca),
        ),
        (f"hnsw-ip, PCA {r}", FastIFConfig(k=k, index=IndexConfig("hnsw"), **pca)),
        (
            "features-l2 (paper)",
            FastIFConfig(
                k=1000, space="features", index=IndexConfig("flat", "l2"), batch_size=4096
            ),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--proj-dim", type=int, default=256)
    parser.add_argument("--pca-dim", type=int, default=256)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--hessian-rows", type=int, default=5000)
    parser.add_argument("--skip", default="", help="comma-separated variant prefixes to skip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    print(
        f"# FastIF (preconditioned retrieval) vs full influence on MNIST — {os.cpu_count()} "
        f"CPUs, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    env = setup(args)
    model, task, train, test = env["model"], env["task"], env["train"], env["test"]
    rows = np.random.default_rng(args.seed).choice(len(train[0]), args.hessian_rows, False)
    solver, fit_s = timed(
        ExactSolver(damping=1e-3).fit,
        model,
        task,
        (train[0][rows], train[1][rows]),
        weight_decay=1e-4,
    )
    on_demand = FastIF(model, task, train, solver, FastIFConfig(k=1, batch_size=4096))
    G, store_s = timed(
        lambda: torch.cat([g for _, g in on_demand.gradient_blocks(np.arange(len(train[0])), None)])
    )
    full = FastIF(model, task, train, solver, FastIFConfig(k=1, batch_size=4096), train_gradients=G)
    sizes = sorted({1, min(50, args.n_test), args.n_test})
    full_t, demand_t = {}, {}
    for m in sizes:
        truth, full_t[m] = end_to_end(full, head(test, m), full="stored")
        _, demand_t[m] = end_to_end(on_demand, head(test, m), full="on demand")
    (h_true, _), (a_true, _) = truth
    print(
        f"\nn = {len(train[0]):,} training rows, D = {full.computer.dim:,} tracked parameters, "
        f"{args.n_test} test points; test accuracy {env['test_acc']:.3f}; training "
        f"{env['train_s']:.0f} s; one Hessian factorisation ({args.hessian_rows} rows) "
        f"{fit_s:.1f} s; training gradients extracted once ('store') {store_s:.1f} s\n"
    )
    table = []
    for name, config in variants(args):
        if any(name.startswith(s) for s in args.skip.split(",") if s):
            continue
        fast = FastIF(model, task, train, solver, config, train_gradients=G)
        _, index_s = timed(fast.build_index)
        times = {}
        for m in sizes:
            result, times[m] = end_to_end(fast, head(test, m))
        h, a = result.helpful(100)[0], result.harmful(100)[0]
        table.append(
            {
                "name": name,
                "k": config.k,
                "index_s": index_s,
                "times": times,
                "h10": recall_at_k(h[:, :10], h_true[:, :10]),
                "a10": recall_at_k(a[:, :10], a_true[:, :10]),
                "h100": recall_at_k(h, h_true),
                "a100": recall_at_k(a, a_true),
            }
        )
    print(f"Recall of the full method's top-m over {args.n_test} test points:\n")
    print(
        "| candidates | k | index build s | helpful@10 | harmful@10 | helpful@100 | harmful@100 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in table:
        print(
            f"| {r['name']} | {r['k']} | {r['index_s']:.1f} | {r['h10']:.3f} | {r['a10']:.3f} | "
            f"{r['h100']:.3f} | {r['a100']:.3f} |"
        )
    print("\nEnd-to-end seconds (test gradients + solve + scoring) and speed-up vs full:\n")
    head_row = " | ".join(f"{m} test s | × full | × on demand" for m in sizes)
    print(f"| method | {head_row} |")
    print("|---|" + "---:|" * (3 * len(sizes)))
    print(
        "| full (stored gradients) | " + " | ".join(f"{full_t[m]:.2f} | 1 | " for m in sizes) + " |"
    )
    print(
        "| full (gradients on demand) | "
        + " | ".join(f"{demand_t[m]:.2f} | {full_t[m] / demand_t[m]:.2f} | 1" for m in sizes)
        + " |"
    )
    for r in table:
        t = r["times"]
        print(
            f"| FastIF {r['name']} | "
            + " | ".join(
                f"{t[m]:.3f} | {full_t[m] / t[m]:.1f} | {demand_t[m] / t[m]:.1f}" for m in sizes
            )
            + " |"
        )
    print(f"\nThe FastIF paper reports about {PAPER_SPEEDUP}× (BERT on MNLI).")


if __name__ == "__main__":
    main()
