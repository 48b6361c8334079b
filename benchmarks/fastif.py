"""FastIF with preconditioned retrieval against full influence on MNIST (issue 13).

Influence is ``⟨s_t, g_i⟩`` with ``s_t = (H+λI)⁻¹ g_t``, so the exact top-k of a test point
is a maximum-inner-product search with query ``s_t`` over the training gradients. FastIF
indexes (projected) training gradients, queries with the projected ``P s_t`` (half the
``k`` candidates from ``+P s_t``: helpful, half from ``−P s_t``: harmful), and re-ranks the
candidates with the exact influence. It is compared, in one run, on the same test points
and the same solver, with

- **full (store)**: ``s_tᵀ g_i`` for every training row from the stored, unprojected
  training gradients (streaming top-100, :func:`gradsift.influence.fastif.full_influence`);
- **full (on demand)**: the same with per-sample training gradients recomputed per call
  (the baseline of the FastIF paper, which stores no gradients).

Default setting (what a user with a small MLP meets): MLP 784→``--hidden``→10 trained 3
epochs (Adam, weight decay 1e-4), **every parameter tracked** (D = 25,450 for hidden 32),
curvature EK-FAC (:class:`EKFACSolver`, default damping) fitted once on the training set,
so a test point's solve is two eigenbasis rotations. ``--tracked last_linear --solver
exact`` gives the previous last-layer setting (D = 1,290, exact Hessian of
``--hessian-rows`` rows, Cholesky). The training gradients (store) and the indexes are
built once and timed as one-offs. End-to-end time = test gradients + solve + retrieval +
re-ranking (FastIF) or + full scoring (full), for 1, 50 and ``--n-test`` test points.

Candidate spaces (``k`` per test point):

- ``exact-ip, P = I``: flat inner-product index over the unprojected gradients (checks
  that retrieval is exact: recall 1; as slow as full, skip it on big runs);
- ``flat-ip, random P``: seeded Gaussian projection to ``p`` numbers per tracked tensor,
  exact search — any miss is **projection** error;
- ``flat-ip, PCA r``: the top ``r`` principal directions of ``--pca-rows`` training
  gradients (``FastIFConfig(basis="pca")``), exact search — projection error of a
  data-aware basis;
- ``ivf-ip`` / ``hnsw-ip, PCA r``: the same rows in faiss IVF / HNSW — the difference to
  ``flat-ip, PCA r`` is **ANN** error;
- ``features-l2``: the paper's penultimate-feature neighbours (k = 1000), for comparison.

For the PCA space the script also reports the ``k`` that exact search in that space
would need for recall@10 ≥ 0.95 (the rank, in projected influence, of the full method's
top-10): what projection error costs in candidates.

Usage (the tables are printed and written to ``--out`` with the command on top)::

    # benchmarks/results/fastif.md, run C (MNIST 50k, D = 12,730; ~6 min wall at load 2,
    # recall@10 >= 0.95): runs A and B there use PCA 256 / k = 400 and other indexes.
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/fastif.py --hidden 16 \
        --pca-rows 3000 --pca-dim 1024 --k 160 --nprobe 128 \
        --skip exact-ip,random,features --on-demand-max 50
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fastif.py --n-train 5000 --n-test 100 \\
        --out /tmp/fastif.md                                                  # quick
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradsift.experiments.datasets import load_mnist
from gradsift.experiments.models import mlp
from gradsift.experiments.training import TrainConfig, accuracy, train_classifier
from gradsift.grads.projection import ProjectionConfig
from gradsift.influence import EKFACSolver, ExactSolver
from gradsift.influence.fastif import FastIF, FastIFConfig, full_influence
from gradsift.influence.fastif.candidates import gradient_basis
from gradsift.influence.neighbors import IndexConfig, build_index, recall_at_k
from gradsift.task import ClassificationTask

PAPER_SPEEDUP = 80  # FastIF (Guo et al., 2021), reported on MNLI with BERT
OUT: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def setup(args: argparse.Namespace) -> dict[str, Any]:
    data = load_mnist(seed=args.seed, n_train=args.n_train)
    model = mlp(784, 10, hidden=(args.hidden,), seed=args.seed)
    config = TrainConfig(epochs=3, batch_size=128, weight_decay=1e-4, seed=args.seed)
    _, train_s = timed(train_classifier, model, data.train.X, data.train.y, config, progress=False)
    model.eval()
    picks = np.sort(np.random.default_rng(args.seed).choice(len(data.test), args.n_test, False))
    return {
        "model": model,
        "task": ClassificationTask(tracked=args.tracked),
        "train": (torch.as_tensor(data.train.X), torch.as_tensor(data.train.y)),
        "test": (torch.as_tensor(data.test.X[picks]), torch.as_tensor(data.test.y[picks])),
        "train_s": train_s,
        "test_acc": accuracy(model, data.test.X, data.test.y),
    }


def fit_solver(args: argparse.Namespace, env: dict[str, Any]) -> Any:
    """EK-FAC on the whole training set, or the exact Hessian of ``--hessian-rows`` rows."""
    model, task, (X, y) = env["model"], env["task"], env["train"]
    if args.solver == "ekfac":
        return EKFACSolver().fit(model, task, (X, y), weight_decay=1e-4, batch_size=1024)
    rows = np.random.default_rng(args.seed).choice(len(X), args.hessian_rows, False)
    return ExactSolver(damping=1e-3).fit(model, task, (X[rows], y[rows]), weight_decay=1e-4)


def head(test: tuple[torch.Tensor, torch.Tensor], m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return test[0][:m], test[1][:m]


def end_to_end(fast: FastIF, test: Any, full: bool = False) -> tuple[Any, dict[str, float]]:
    """Test gradients + solve + (FastIF retrieval and re-ranking | full scoring), timed
    stage by stage (``total`` is their sum, measured as one span)."""
    t0 = time.perf_counter()
    G = fast.test_gradients(test)
    t1 = time.perf_counter()
    S = fast.solve(G)
    t2 = time.perf_counter()
    out = full_influence(fast, S, 100) if full else fast.influence(test, S)
    t3 = time.perf_counter()
    return out, {"grads": t1 - t0, "solve": t2 - t1, "score": t3 - t2, "total": t3 - t0}


def variants(args: argparse.Namespace) -> list[tuple[str, FastIFConfig]]:
    k, r = args.k, args.pca_dim
    ip: dict[str, Any] = {"space": "gradients", "batch_size": 4096}
    pca = {**ip, "basis": "pca", "pca_dim": r, "pca_rows": args.pca_rows}
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


class SharedPCA:
    """One PCA basis and one projected training matrix for every PCA variant (built on
    first use, timed once): the variants differ only in the index over the same rows."""

    def __init__(self, G: torch.Tensor, args: argparse.Namespace) -> None:
        self.G, self.args = G, args
        self.basis: torch.Tensor | None = None
        self.rows: np.ndarray | None = None
        self.seconds = 0.0

    def get(self, config: FastIFConfig) -> tuple[torch.Tensor, np.ndarray]:
        if self.basis is None:
            t0 = time.perf_counter()
            n = len(self.G)
            rng = np.random.default_rng(config.index.seed)  # FastIF's own sample rule
            take = np.sort(rng.choice(n, min(config.pca_rows, n), False))
            self.basis = gradient_basis(self.G[torch.as_tensor(take)], config.pca_dim)
            self.rows = torch.cat(
                [self.G[s : s + 4096] @ self.basis for s in range(0, n, 4096)]
            ).numpy()
            self.seconds = time.perf_counter() - t0
        assert self.rows is not None
        return self.basis, self.rows


def effective_dim(solver: Any) -> str:
    """For EK-FAC: ``Σ c/(c+λ)`` over the curvature's eigenvalues ``c`` (with weight decay),
    the number of directions the preconditioned inner product does not damp away."""
    op = getattr(solver, "operator", None)
    if not hasattr(op, "layer_eigenvalues"):
        return ""
    c = torch.cat([v.flatten().double() for v in op.layer_eigenvalues().values()])
    c = c + op.weight_decay
    d_eff = float((c / (c + solver.damping)).sum())
    return (
        f" Effective dimension of the preconditioned inner product Σ c/(c+λ) over the "
        f"EK-FAC eigenvalues: {d_eff:,.0f} of {len(c):,}."
    )


def k_needed(
    fast: FastIF, test: Any, rows: np.ndarray, truth: tuple[np.ndarray, np.ndarray]
) -> dict[str, int]:
    """Smallest ``k`` (``k/2`` per side, exact search in the PCA space; at most ``n``) with
    mean recall of the full top-10 ≥ 0.95 (and = 1), from the rank of each true top-10 row
    under the projected influence ``(P s_t)ᵀ(P g_i)``."""
    approx = rows @ fast.project(fast.solve(fast.test_gradients(test))).float().numpy().T
    out = {}
    for side, true, sign in (("helpful", truth[0], 1.0), ("harmful", truth[1], -1.0)):
        col = sign * approx  # [n, m]
        ranks = np.concatenate(
            [(col[:, t][None, :] > col[true[t, :10], t][:, None]).sum(1) for t in range(len(true))]
        )
        for target in (0.95, 1.0):
            out[f"{side}@{target:g}"] = min(len(rows), 2 * (int(np.quantile(ranks, target)) + 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--tracked", default="all", help="all | last_linear")
    parser.add_argument("--solver", default="ekfac", help="ekfac | exact (small D only)")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--proj-dim", type=int, default=64)
    parser.add_argument("--pca-dim", type=int, default=256)
    parser.add_argument("--pca-rows", type=int, default=5000)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--hessian-rows", type=int, default=5000)
    parser.add_argument(
        "--on-demand-max", type=int, default=None, help="largest m for full (on demand)"
    )
    parser.add_argument(
        "--skip",
        default="",
        help="skip variants whose name contains one of these (comma-separated)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/fastif.md")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    say(f"# FastIF (preconditioned retrieval) vs full influence on MNIST\n\n```\n{command}\n```\n")
    say(
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, load average "
        f"{os.getloadavg()[0]:.1f} at start (shared machine)."
    )
    env = setup(args)
    model, task, train, test = env["model"], env["task"], env["train"], env["test"]
    solver, fit_s = timed(fit_solver, args, env)
    on_demand = FastIF(model, task, train, solver, FastIFConfig(k=1, batch_size=2048))
    G, store_s = timed(
        lambda: torch.cat([g for _, g in on_demand.gradient_blocks(np.arange(len(train[0])), None)])
    )
    full = FastIF(model, task, train, solver, FastIFConfig(k=1, batch_size=4096), train_gradients=G)
    sizes = sorted({1, min(50, args.n_test), args.n_test})
    full_t, demand_t = {}, {}
    for m in sizes:
        truth, full_t[m] = end_to_end(full, head(test, m), full=True)
        if args.on_demand_max is None or m <= args.on_demand_max:
            _, demand_t[m] = end_to_end(on_demand, head(test, m), full=True)
    (h_true, _), (a_true, _) = truth
    solver_name = f"{type(solver).__name__} (damping {solver.damping:.3g})"
    say(
        f"\nn = {len(train[0]):,} training rows, MLP 784-{args.hidden}-10, tracked "
        f"{args.tracked}: D = {full.computer.dim:,}; {args.n_test} test points; test accuracy "
        f"{env['test_acc']:.3f}; training {env['train_s']:.0f} s; solver {solver_name} fitted "
        f"once in {fit_s:.1f} s; training gradients extracted once (the 'store', "
        f"{G.numel() * 4 / 2**30:.1f} GiB float32) {store_s:.1f} s.{effective_dim(solver)}\n"
    )
    shared = SharedPCA(G, args)
    table = []
    for name, config in variants(args):
        if any(s.strip() in name for s in args.skip.split(",") if s.strip()):
            continue
        pca = config.space == "gradients" and config.basis == "pca"
        index = None
        if pca:
            basis, rows = shared.get(config)
            index, index_s = timed(build_index, rows, config.index)
        fast = FastIF(model, task, train, solver, config, train_gradients=G, index=index)
        if pca:
            fast.basis = basis
        else:
            _, index_s = timed(fast.build_index)
        times = {}
        for m in sizes:
            result, times[m] = end_to_end(fast, head(test, m))
        h, a = result.helpful(100)[0], result.harmful(100)[0]
        row = {
            "name": name,
            "k": config.k,
            "index_s": index_s + (shared.seconds if pca else 0.0),
            "times": times,
            "h10": recall_at_k(h[:, :10], h_true[:, :10]),
            "a10": recall_at_k(a[:, :10], a_true[:, :10]),
            "h100": recall_at_k(h, h_true),
            "a100": recall_at_k(a, a_true),
        }
        if name.startswith("flat-ip, PCA"):
            row["need"] = k_needed(fast, test, rows, (h_true, a_true))
        table.append(row)
    report(args, table, sizes, full_t, demand_t)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(OUT) + "\n")


def report(
    args: argparse.Namespace,
    table: list[dict],
    sizes: list[int],
    full_t: dict[int, dict[str, float]],
    demand_t: dict[int, dict[str, float]],
) -> None:
    say(f"## Recall of the full method's top-m over {args.n_test} test points\n")
    say("| candidates | k | index build s | helpful@10 | harmful@10 | helpful@100 | harmful@100 |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    for r in table:
        say(
            f"| {r['name']} | {r['k']} | {r['index_s']:.1f} | {r['h10']:.3f} | {r['a10']:.3f} | "
            f"{r['h100']:.3f} | {r['a100']:.3f} |"
        )
    for r in table:
        if "need" in r:
            nd = r["need"]
            say(
                f"\nExact search in the {r['name'].split(', ')[1]} space would need k = "
                f"{nd['helpful@0.95']} (helpful) / {nd['harmful@0.95']} (harmful) candidates "
                f"for recall@10 ≥ 0.95, and k = {nd['helpful@1']} / {nd['harmful@1']} for 1."
            )
    say("\n## End-to-end seconds and speed-up vs full (same solver, same test points)\n")
    say(
        "`total` = test gradients + solve + scoring (FastIF: retrieval + re-ranking); nan: "
        "full (on demand) not run at that size (it costs at least full (store)).\n"
    )
    head_row = " | ".join(f"{m} test: s | × full | × on demand" for m in sizes)
    say(f"| method | {head_row} |")
    say("|---|" + "---:|" * (3 * len(sizes)))
    d = {m: demand_t[m]["total"] if m in demand_t else float("nan") for m in sizes}
    f = {m: full_t[m]["total"] for m in sizes}
    say(
        "| full (store) | "
        + " | ".join(f"{f[m]:.2f} | 1 | {d[m] / f[m]:.2f}" for m in sizes)
        + " |"
    )
    if demand_t:
        say("| full (on demand) | " + " | ".join(f"{d[m]:.2f} | {f[m] / d[m]:.2f} | 1" for m in sizes) + " |")  # fmt: skip
    for r in table:
        t = {m: r["times"][m]["total"] for m in sizes}
        say(
            f"| FastIF {r['name']} | "
            + " | ".join(f"{t[m]:.3f} | {f[m] / t[m]:.1f} | {d[m] / t[m]:.1f}" for m in sizes)
            + " |"
        )
    m = sizes[-1]
    say(f"\n## Where the time goes at {m} test points (seconds)\n")
    say("| method | test gradients | solve | scoring / retrieval + re-ranking | total |")
    say("|---|---:|---:|---:|---:|")
    rows = [("full (store)", full_t[m])]
    rows += [("full (on demand)", demand_t[m])] if m in demand_t else []
    rows += [(f"FastIF {r['name']}", r["times"][m]) for r in table]
    for name, t in rows:
        say(
            f"| {name} | {t['grads']:.2f} | {t['solve']:.2f} | {t['score']:.2f} | {t['total']:.2f} |"
        )
    common = full_t[m]["grads"] + full_t[m]["solve"]
    say(
        f"\nCeiling: with free retrieval and re-ranking the speed-up over full (store) at {m} "
        f"test points is at most total / (test gradients + solve) = {f[m] / common:.1f}×. "
        f"The FastIF paper reports about {PAPER_SPEEDUP}× (BERT on MNLI)."
    )


if __name__ == "__main__":
    main()
