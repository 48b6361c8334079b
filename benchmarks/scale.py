"""Memory and time scaling of the store-based pipeline (issue 7).

For n_train in {1e4, 1e5, 1e6} rows × 1024 dims (float32 stores) and 1,000 test rows,
measure wall time and peak resident memory (RSS) of

- extraction to a store with a small real model (MLP 64→64→16 on a lazily generated
  data set; per-sample gradients of the head weight, 16 × 64 = 1,024 values, closed
  form, stored unprojected),
- streaming pairwise top-k scoring (dot product, k = 10, helpful and harmful),
- the L2-norm detector (streamed) and Isolation Forest (fit on a 10,000-row seeded
  sample, then streamed),
- FastIF candidate search with a faiss IVF-PQ index (trained on a sample, filled in
  streaming blocks), with its recall against the exact top-k,

and the speed-up of 2 processes (torchrun, gloo) over 1.

Every measurement runs in a fresh child process; its peak RSS is read from
``os.wait4`` (per child, so numbers never accumulate). Under torchrun the figure is the
largest of the agent and the workers (i.e. per process, not summed). Times are those of
the operation itself, measured inside the child between barriers (interpreter start,
imports and process-group set-up excluded; they are reported once as "startup").

Scoring uses synthetic projected gradients (float32): 32 class-like clusters with a
rank-64 within-cluster spread, isotropic noise, log-normal per-row scales (like loss
magnitudes) and 1% planted outliers, so nearest-neighbour search has structure to find.

Usage::

    nice -n 10 .venv/bin/python benchmarks/scale.py                 # full run
    .venv/bin/python benchmarks/scale.py --sizes 10000 --speedup-size 10000   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

HERE = Path(__file__).resolve()
DIM, N_TEST, K, ROWS_PER_SHARD = 1024, 1000, 10, 4096
FIT_SAMPLE = 10_000
IVF = {"nlist": 256, "nprobe": 16, "pq_m": 64, "train_size": 20_000}


# ----------------------------------------------------------------------------- data


def _generator(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "centres": rng.standard_normal((32, DIM)).astype(np.float32),
        "basis": (rng.standard_normal((64, DIM)) / 8.0).astype(np.float32),
        "noise": (0.1 * rng.standard_normal((8191, DIM))).astype(np.float32),
    }


def synthetic_rows(rows: int, seed: int, base: dict[str, np.ndarray]) -> np.ndarray:
    """``[rows, DIM]`` float32 synthetic projected gradients (see module docstring)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 32, rows)
    spread = rng.standard_normal((rows, 64), dtype=np.float32) @ base["basis"]
    noise = base["noise"][rng.integers(0, len(base["noise"]), rows)]  # isotropic, pooled
    G = base["centres"][label] + spread + noise
    outlier = rng.random(rows) < 0.01
    G[outlier] = 3.0 * base["centres"][rng.integers(0, 32, int(outlier.sum()))]
    scale = rng.lognormal(-1.0, 0.75, rows).astype(np.float32)
    return G * scale[:, None]


def make_store(path: Path, n: int) -> None:
    from gradsift.store.gradient_store import GradientStore, StoreSettings

    settings = StoreSettings(
        fingerprint="synthetic-projected-gradients",
        tracked=[{"name": "synthetic", "shape": [DIM]}],
        dim=DIM,
        n_rows=n,
        rows_per_shard=ROWS_PER_SHARD,
        extra={"generator": "benchmarks/scale.py", "seed": 0},
    )
    store = GradientStore.create(path, settings, overwrite=True)
    base = _generator(0)
    for shard in range(store.n_shards):
        a, b = store.shard_range(shard)
        store.write_shard(shard, synthetic_rows(b - a, 1000 + shard, base), np.zeros(b - a))
    store.finalize()
    np.save(path.parent / "test.npy", synthetic_rows(N_TEST, 7, base))


class SyntheticInputs(Dataset):
    """A lazy data set of ``n`` rows ``(x float32 [64], y int64)``; nothing is held per row,
    so its memory does not grow with ``n`` (like a data set read from disk)."""

    def __init__(self, n: int) -> None:
        import torch

        g = torch.Generator().manual_seed(0)
        self.n = n
        self.a = torch.randn(1009, 64, generator=g)
        self.b = torch.randn(997, 64, generator=g)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch

        return self.a[i % 1009] + self.b[i % 997], torch.tensor((i * 7919) % 16)


# ----------------------------------------------------------------------------- workers


def _timed(fn) -> tuple[Any, float]:
    from gradsift.distributed import process_group as D

    D.barrier()
    start = time.perf_counter()
    out = fn()
    D.barrier()
    return out, time.perf_counter() - start


def worker(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one measured operation; returns rank 0's measurements."""
    import torch

    from gradsift.distributed import process_group as D
    from gradsift.store.gradient_store import GradientStore

    ctx = D.init_distributed()
    out: dict[str, Any] = {"world_size": ctx.world_size, "threads": torch.get_num_threads()}
    if op == "baseline":
        import sklearn.ensemble  # noqa: F401

        import gradsift.distributed.scoring  # noqa: F401

        with contextlib.suppress(ImportError):  # faiss is only needed for the IVF rows
            import gradsift.influence.neighbors  # noqa: F401
    elif op == "extract":
        from torch import nn

        from gradsift.distributed.sharded_extract import sharded_extract
        from gradsift.grads.extract import ExtractConfig
        from gradsift.task import ClassificationTask

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16)).eval()
        config = ExtractConfig(rows_per_shard=ROWS_PER_SHARD, batch_size=1024)
        task = ClassificationTask(tracked=["2.weight"])  # 16 × 64 = 1,024 values per row
        data = SyntheticInputs(args["n"])
        run, out["seconds"] = _timed(
            lambda: sharded_extract(model, task, data, args["path"], config, overwrite=True)
        )
        out["dim"] = run.store.dim
    else:
        store = GradientStore.open(args["path"])
        test = np.load(args["test"])
        if op == "topk":
            from gradsift.distributed.scoring import distributed_topk

            (helpful, _), out["seconds"] = _timed(lambda: distributed_topk(store, test, K))
            if ctx.is_main and args.get("save"):
                np.save(args["save"], helpful.result()[1])
        elif op in ("l2", "iforest"):
            import gradsift.detect  # noqa: F401  (scikit-learn import: not part of the timing)
            from gradsift.distributed.scoring import distributed_scores

            (scores, _), out["seconds"] = _timed(
                lambda: distributed_scores(store, op, sample_size=FIT_SAMPLE, seed=0)
            )
        elif op == "ivf":
            out.update(_ivf(store, test, args))
        else:
            raise SystemExit(f"unknown op {op}")
    D.shutdown()
    return out


def _ivf(store: Any, test: np.ndarray, args: dict[str, Any]) -> dict[str, Any]:
    from gradsift.influence.neighbors import IndexConfig, build_index, recall_at_k

    config = IndexConfig(
        backend="ivf",
        metric="ip",
        nlist=IVF["nlist"],
        nprobe=IVF["nprobe"],
        pq_m=IVF["pq_m"],
        train_size=IVF["train_size"],
    )
    start = time.perf_counter()
    index = build_index(store, config)
    build = time.perf_counter() - start
    start = time.perf_counter()
    _, found = index.search(test, 100)
    search = time.perf_counter() - start
    exact = np.load(args["exact"])[:, :K]
    return {
        "seconds": build + search,
        "build_seconds": build,
        "search_seconds": search,
        "recall_at_10": recall_at_k(found[:, :K], exact),
        "recall_10_in_100": recall_at_k(found, exact),
    }


# ----------------------------------------------------------------------------- driver


def run_child(op: str, args: dict[str, Any], nproc: int = 1) -> dict[str, Any]:
    """Run ``op`` in a child (torchrun with ``nproc`` > 1); add its wall time and peak RSS.

    The machine's cores are split evenly: each of the ``nproc`` processes gets
    ``cores // nproc`` threads (torch and OpenMP), so 1 process uses every core.
    """
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "GRADSIFT_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}
    env.update(OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")  # no spinning threads
    head = [sys.executable]
    if nproc > 1:
        head += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [*head, str(HERE), "--worker", op, "--args", json.dumps(args)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    lines = [ln for ln in output.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{op} (nproc={nproc}) failed:\n{output[-4000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result.update(peak_rss_mib=usage.ru_maxrss / 1024, process_wall=wall, nproc=nproc)
    return result


def fmt_n(n: int) -> str:
    exp = round(math.log10(n)) if n > 0 else 0
    return f"1e{exp}" if 10**exp == n else str(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="n_train values")
    parser.add_argument("--ops", default=",".join(OPS), help="subset of " + ",".join(OPS))
    parser.add_argument("--procs", default="1,2", help="process counts compared at --speedup-size")
    parser.add_argument("--speedup-size", type=int, default=None, help="default: the largest size")
    parser.add_argument("--workdir", default="/tmp/gradsift-scale")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        result = worker(opts.worker, json.loads(opts.args))
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(result), flush=True)
        return
    sizes = [int(s) for s in opts.sizes.split(",")]
    ops = [op for op in opts.ops.split(",") if op]
    procs = sorted({1, *(int(p) for p in opts.procs.split(","))})
    speedup_n = opts.speedup_size or max(sizes)
    work = Path(opts.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    baseline = run_child("baseline", {})
    print(
        f"startup (1 process, imports only): peak RSS {baseline['peak_rss_mib']:.0f} MiB",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    try:
        for n in sorted(set(sizes) | {speedup_n}):
            rows += measure_size(work, n, ops, procs if n == speedup_n else [1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nbenchmark wall time {time.perf_counter() - started:.0f} s, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    print_tables(rows, baseline, sizes, ops, speedup_n)


def measure_size(work: Path, n: int, ops: list[str], procs: list[int]) -> list[dict[str, Any]]:
    store, test, exact = work / f"store-{n}", work / "test.npy", work / f"exact-{n}.npy"
    rows: list[dict[str, Any]] = []
    scoring = [op for op in ("topk", "l2", "iforest", "ivf") if op in ops]
    if scoring:
        start = time.perf_counter()
        make_store(store, n)
        print(f"n={n}: synthetic store written in {time.perf_counter() - start:.1f} s", flush=True)
    for nproc in procs:
        args = {"path": str(store), "test": str(test), "exact": str(exact)}
        for op in scoring:
            if op == "ivf" and nproc > 1:
                continue  # the index is built by one process
            if op == "ivf" and not exact.exists():
                run_child("topk", {**args, "save": str(exact)})  # reference for the recall
            save = {"save": str(exact)} if op == "topk" and nproc == 1 else {}
            rows.append({"op": op, "n": n, **run_child(op, {**args, **save}, nproc)})
            _progress(rows[-1])
    shutil.rmtree(store, ignore_errors=True)
    if "extract" in ops:
        for nproc in procs:
            args = {"path": str(work / "ext"), "n": n}
            rows.append({"op": "extract", "n": n, **run_child("extract", args, nproc)})
            _progress(rows[-1])
            shutil.rmtree(work / "ext", ignore_errors=True)
    return rows


def _progress(row: dict[str, Any]) -> None:
    print(
        f"  {row['op']:8s} n={row['n']:>8d} procs={row['nproc']} threads={row['threads']} "
        f"{row['seconds']:8.2f} s  peak {row['peak_rss_mib']:6.0f} MiB",
        flush=True,
    )


OPS = ("extract", "topk", "l2", "iforest", "ivf")
LABELS = {
    "extract": "extraction → store (MLP 64→64→16, head weight grads)",
    "topk": f"streaming top-k (dot, k={K}, {N_TEST} test rows)",
    "l2": "L2-norm detector (streamed)",
    "iforest": f"Isolation Forest (fit on {FIT_SAMPLE:,} rows, streamed)",
    "ivf": f"IVF-PQ index (nlist {IVF['nlist']}, m {IVF['pq_m']}) build + 1,000 searches",
}


def print_tables(
    rows: list[dict[str, Any]],
    baseline: dict[str, Any],
    sizes: list[int],
    ops: list[str],
    speedup_n: int,
) -> None:
    one = {(r["op"], r["n"]): r for r in rows if r["nproc"] == 1}
    ops = [op for op in OPS if op in ops]
    print(f"\n### Scaling, 1 process ({DIM} dims, float32 store, {N_TEST} test rows)\n")
    head = " | ".join(f"n={fmt_n(n)}: s | MiB" for n in sizes)
    print(f"| operation | {head} | time ×, n {fmt_n(sizes[0])}→{fmt_n(sizes[-1])} |")
    print("|---|" + "---:|---:|" * len(sizes) + "---:|")
    for op in ops:
        cells = []
        for n in sizes:
            r = one.get((op, n))
            cells += [f"{r['seconds']:.2f}", f"{r['peak_rss_mib']:.0f}"] if r else ["–", "–"]
        a, b = one.get((op, sizes[0])), one.get((op, sizes[-1]))
        ratio = (
            f"{b['seconds'] / a['seconds']:.0f}× (n ×{sizes[-1] // sizes[0]})" if a and b else "–"
        )
        print(f"| {LABELS[op]} | " + " | ".join(cells) + f" | {ratio} |")
    print(
        f"\nPeak RSS of a process that only imports gradsift, torch, scikit-learn and faiss: "
        f"{baseline['peak_rss_mib']:.0f} MiB."
    )
    print("\n### Microseconds per row (1 process)\n")
    print("| operation | " + " | ".join(f"n={fmt_n(n)}" for n in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for op in ops:
        cells = [
            f"{1e6 * one[(op, n)]['seconds'] / n:.1f}" if (op, n) in one else "–" for n in sizes
        ]
        print(f"| {op} | " + " | ".join(cells) + " |")
    if "ivf" in ops:
        print(
            f"\n### IVF-PQ against exact dot-product top-{K} ({N_TEST} queries, nprobe {IVF['nprobe']})\n"
        )
        print(f"| n | build (s) | search (s) | recall@{K} | exact top-{K} within IVF top-100 |")
        print("|---:|---:|---:|---:|---:|")
        for n in sizes:
            r = one.get(("ivf", n))
            if r:
                print(
                    f"| {fmt_n(n)} | {r['build_seconds']:.2f} | {r['search_seconds']:.2f} | "
                    f"{r['recall_at_10']:.3f} | {r['recall_10_in_100']:.3f} |"
                )
    multi = sorted({r["nproc"] for r in rows} - {1})
    if not multi:
        return
    at = {(r["op"], r["nproc"]): r for r in rows if r["n"] == speedup_n}
    print(
        f"\n### Processes vs 1 (torchrun, gloo, n={fmt_n(speedup_n)}, {os.cpu_count()} cores split "
        "evenly into threads)\n"
    )
    print(
        "| operation | 1 process (s) | "
        + " | ".join(f"{p} processes (s) | speed-up" for p in multi)
        + " | peak RSS per process (MiB) |"
    )
    print("|---|---:|" + "---:|---:|" * len(multi) + "---:|")
    for op in ops:
        base = at.get((op, 1))
        if base is None or op == "ivf":
            continue
        cells, rss = [], [f"{base['peak_rss_mib']:.0f}"]
        for p in multi:
            r = at.get((op, p))
            cells += (
                [f"{r['seconds']:.2f}", f"{base['seconds'] / r['seconds']:.2f}×"]
                if r
                else ["–", "–"]
            )
            rss += [f"{r['peak_rss_mib']:.0f}"] if r else []
        print(f"| {op} | {base['seconds']:.2f} | " + " | ".join(cells) + f" | {' → '.join(rss)} |")


if __name__ == "__main__":
    main()
