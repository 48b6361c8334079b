"""FastIF against full inverse-HVP influence on MNIST (50,000 training images).

For each setting, one run measures, on the same test points and with the same
inverse-HVPs ``s_t = (H+λI)⁻¹ g_t`` (solved once, timed once, shared):

- **full**: ``s_tᵀ g_i`` for all 50,000 training rows (per-sample gradients computed on
  the fly in blocks, streaming top-100 helpful and harmful);
- **FastIF** with k ∈ {100, 1000} candidates from a faiss index over penultimate
  features (L2, the paper's setting) — and, for the last-layer setting, over projected
  gradients queried with ``P s_t`` (inner product);

and reports the time of each, the speed-up (excluding and including the shared solve;
index building is a one-off cost, listed separately), and the recall of the full
method's top-10 / top-100 most helpful and most harmful samples.

Settings (MLP 784→128→10 trained 3 epochs, or 784→32→10 for "all"):

- ``last``: the head's 1,290 parameters (closed-form per-sample gradients), exact
  inverse (Cholesky) of the mean Hessian;
- ``all``: all 25,450 parameters of a 784→32→10 MLP (``torch.func`` per-sample
  gradients), LiSSA (``--lissa-steps`` steps × 2 repetitions, mini-batches of 64, scale
  from power iteration).

Both solvers see the Hessian of a seeded sample of ``--hessian-rows`` training rows (both
methods use the same ``s_t``, so this changes neither the recall nor the speed-up of the
scoring). FastIF's advantage is per test point (k ≪ n gradients instead of n); scoring
many test points together, their candidate sets overlap and their union approaches n,
so both "all test points at once" and "one test point at a time" are reported.

A last table times 1 against 2 worker processes (spawn) for the LiSSA repetitions and
the candidate scoring of the ``all`` setting, and checks that the results are identical.

Usage::

    nice -n 10 .venv/bin/python benchmarks/fastif.py             # both settings (~15 min)
    .venv/bin/python benchmarks/fastif.py --settings last --n-test 20   # quick
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
from gradsift.influence import ExactSolver, LiSSASolver
from gradsift.influence.fastif import FastIF, FastIFConfig, full_influence
from gradsift.influence.neighbors import IndexConfig, recall_at_k
from gradsift.task import ClassificationTask

PAPER_SPEEDUP = 80  # FastIF (Guo et al., 2021), reported on MNLI with BERT


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def setup(hidden: int, tracked: str, args: argparse.Namespace) -> dict[str, Any]:
    data = load_mnist(seed=args.seed)
    model = mlp(784, 10, hidden=(hidden,), seed=args.seed)
    _, train_s = timed(
        train_classifier,
        model,
        data.train.X,
        data.train.y,
        TrainConfig(epochs=3, batch_size=128, weight_decay=1e-4, seed=args.seed),
        progress=False,
    )
    model.eval()
    rng = np.random.default_rng(args.seed)
    picks = np.sort(rng.choice(len(data.test), args.n_test, replace=False))
    return {
        "data": data,
        "model": model,
        "task": ClassificationTask(tracked=tracked),
        "train": (torch.as_tensor(data.train.X), torch.as_tensor(data.train.y)),
        "test": (torch.as_tensor(data.test.X[picks]), torch.as_tensor(data.test.y[picks])),
        "train_s": train_s,
        "test_acc": accuracy(model, data.test.X, data.test.y),
    }


def make_solver(setting: str, env: dict[str, Any], args: argparse.Namespace) -> Any:
    model, task, train = env["model"], env["task"], env["train"]
    rows = np.random.default_rng(args.seed).choice(len(train[0]), args.hessian_rows, False)
    sub = (train[0][rows], train[1][rows])
    if setting == "last":
        return ExactSolver(damping=1e-3).fit(model, task, sub, weight_decay=1e-4)
    return LiSSASolver(
        damping=1e-3,
        steps=args.lissa_steps,
        repetitions=2,
        batch_size=64,
        seed=args.seed,
        residual_tol=np.inf,
    ).fit(model, task, sub, weight_decay=1e-4, batch_size=1024)


def run_setting(setting: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    hidden, tracked = (128, "last_linear") if setting == "last" else (32, "all")
    env = setup(hidden, tracked, args)
    solver, fit_s = timed(make_solver, setting, env, args)
    model, task, train, test = env["model"], env["task"], env["train"], env["test"]
    batch = 1024 if setting == "last" else 256
    base = FastIF(model, task, train, solver, FastIFConfig(k=1, batch_size=batch))
    S, solve_s = timed(lambda: base.solve(base.test_gradients(test)))
    (full_h, full_a), full_s = timed(full_influence, base, S, 100)
    _, full_one_s = timed(full_influence, base, S[:1], 100)
    print(
        f"\n### setting `{setting}`: D = {base.computer.dim:,} tracked parameters, "
        f"{base.n_train:,} training rows, {len(S)} test points; test accuracy "
        f"{env['test_acc']:.3f}; training {env['train_s']:.1f} s; solver {solver.name} "
        f"fit {fit_s:.1f} s, solve {solve_s:.1f} s (shared by both methods); "
        f"full method {full_s:.1f} s ({full_one_s:.1f} s for a single test point)\n"
    )
    spaces: list[tuple[str, str, int]] = [("features", "l2", 0)]
    if setting == "last":
        spaces.append(("gradients", "ip", 256))
    rows = []
    for space, metric, dim in spaces:
        for k in (100, 1000):
            config = FastIFConfig(
                k=k,
                space=space,  # type: ignore[arg-type]
                index=IndexConfig(backend="flat", metric=metric),  # type: ignore[arg-type]
                projection=ProjectionConfig(dim=max(dim, 1), seed=args.seed),
                batch_size=batch,
            )
            fast = FastIF(model, task, train, solver, config)
            _, index_s = timed(fast.build_index)
            result, fast_s = timed(fast.influence, test, S)
            h, a = result.helpful(100)[0], result.harmful(100)[0]
            singles = [
                timed(fast.influence, (test[0][t : t + 1], test[1][t : t + 1]), S[t : t + 1])[1]
                for t in range(min(args.singles, len(S)))
            ]
            rows.append(
                {
                    "setting": setting,
                    "space": space if not dim else f"{space} (proj. {dim}/block)",
                    "k": k,
                    "distinct": int(len(np.unique(result.candidates[result.candidates >= 0]))),
                    "one_s": float(np.mean(singles)),
                    "full_one_s": full_one_s,
                    "index_s": index_s,
                    "fastif_s": fast_s,
                    "full_s": full_s,
                    "solve_s": solve_s,
                    "speedup": full_s / fast_s,
                    "speedup_incl_solve": (full_s + solve_s) / (fast_s + solve_s),
                    "h10": recall_at_k(h[:, :10], full_h[0][:, :10]),
                    "a10": recall_at_k(a[:, :10], full_a[0][:, :10]),
                    "h100": recall_at_k(h, full_h[0]),
                    "a100": recall_at_k(a, full_a[0]),
                }
            )
    if setting == "all" and args.parallel:
        rows.append(parallel_check(env, solver, S, batch))
    return rows


def parallel_check(env: dict[str, Any], solver: Any, S: torch.Tensor, batch: int) -> dict[str, Any]:
    """1 vs 2 spawn workers: LiSSA repetitions and candidate scoring (k=1000)."""
    model, task, train, test = env["model"], env["task"], env["train"], env["test"]
    out: dict[str, Any] = {"parallel": True}
    results = {}
    for workers in (1, 2):
        config = FastIFConfig(k=1000, batch_size=batch, workers=workers, unit_rows=2048)
        with FastIF(model, task, train, solver, config) as fast:
            fast.build_index()
            if workers > 1:
                _, out["pool_start_s"] = timed(lambda f=fast: list(f._executor().map(abs, [1, 2])))
            G = fast.test_gradients(test)
            S_w, out[f"solve_s_{workers}"] = timed(fast.solve, G)
            res, out[f"score_s_{workers}"] = timed(fast.influence, test, S_w)
            results[workers] = (S_w, res)
    (S1, r1), (S2, r2) = results[1], results[2]
    out["identical"] = bool(
        torch.equal(S1, S2)
        and np.array_equal(r1.candidates, r2.candidates)
        and np.array_equal(r1.scores, r2.scores)
    )
    out["s_rel_diff"] = float((S1 - S2).abs().max() / S1.abs().max())
    out["score_rel_diff"] = float(
        np.nanmax(np.abs(r1.scores - r2.scores)) / np.nanmax(np.abs(r1.scores))
    )
    out["same_top10"] = bool(np.array_equal(r1.helpful(10)[0], r2.helpful(10)[0]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="last,all")
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--hessian-rows", type=int, default=5000)
    parser.add_argument("--lissa-steps", type=int, default=100)
    parser.add_argument("--singles", type=int, default=5, help="test points timed one by one")
    parser.add_argument("--no-parallel", dest="parallel", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    print(
        f"# FastIF vs full influence on MNIST — {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.1f} at start"
    )
    rows = []
    for setting in args.settings.split(","):
        rows += run_setting(setting, args)
    print(
        f"\nAll {args.n_test} test points at once (the candidates of all of them are scored "
        "together; 'distinct' = their union):\n"
    )
    print(
        "| setting | candidate space | k | distinct candidates | index build s | FastIF s | "
        "full s | speed-up | speed-up incl. solve | recall helpful@10 | harmful@10 | "
        "helpful@100 | harmful@100 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    plain = [r for r in rows if not r.get("parallel")]
    for r in plain:
        print(
            f"| {r['setting']} | {r['space']} | {r['k']} | {r['distinct']:,} | "
            f"{r['index_s']:.2f} | {r['fastif_s']:.2f} | {r['full_s']:.2f} | "
            f"{r['speedup']:.1f}× | {r['speedup_incl_solve']:.2f}× | {r['h10']:.3f} | "
            f"{r['a10']:.3f} | {r['h100']:.3f} | {r['a100']:.3f} |"
        )
    print(
        f"\nOne test point at a time (FastIF: mean over {args.singles} points; full: one point; "
        "solve excluded, index built beforehand):\n"
    )
    print("| setting | candidate space | k | FastIF s | full s | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for r in plain:
        print(
            f"| {r['setting']} | {r['space']} | {r['k']} | {r['one_s']:.3f} | "
            f"{r['full_one_s']:.2f} | {r['full_one_s'] / r['one_s']:.1f}× |"
        )
    best = max((r["full_one_s"] / r["one_s"] for r in plain), default=float("nan"))
    print(
        f"\nThe FastIF paper reports about {PAPER_SPEEDUP}× (BERT on MNLI); here the largest "
        f"measured speed-up (one test point, solve excluded) is {best:.1f}× — see the recall "
        "columns for what it costs."
    )
    for r in rows:
        if r.get("parallel"):
            print(
                "\n| `all` setting, k=1000 | 1 process s | 2 processes s | speed-up |\n"
                "|---|---:|---:|---:|\n"
                f"| LiSSA, 2 repetitions | {r['solve_s_1']:.2f} | {r['solve_s_2']:.2f} | "
                f"{r['solve_s_1'] / r['solve_s_2']:.2f}× |\n"
                f"| candidate scoring | {r['score_s_1']:.2f} | {r['score_s_2']:.2f} | "
                f"{r['score_s_1'] / r['score_s_2']:.2f}× |\n\n"
                f"Pool start-up (2 spawn workers, not included above): {r['pool_start_s']:.1f} s. "
                f"Bit-identical between 1 and 2 processes: {r['identical']}; largest difference "
                f"relative to the largest value: inverse-HVPs {r['s_rel_diff']:.1e}, scores "
                f"{r['score_rel_diff']:.1e}; same top-10 helpful: {r['same_top10']} (worker "
                "processes run 1 BLAS thread each, the single process 2)."
            )


if __name__ == "__main__":
    main()
