"""Recall and speed of the approximate nearest-neighbour backends against exact search.

At 10^5 rows (default) × 128 dims, 1,000 queries: build time, search time and recall@10
/ recall@100 of faiss IVFFlat, IVF-PQ and HNSW against the exact top-k (gradsift's torch
brute force; faiss flat is listed too, as a check that it is exact). IVF quantisers are
trained on a seeded random sample of ``--train-size`` rows, then the index is filled in
blocks of ``--block-rows`` rows (the path a gradient store takes).

The data imitate projected gradients / penultimate features: 64 clusters with a rank-16
within-cluster spread, isotropic noise and log-normal row scales; queries come from the
same distribution. Every number comes from one run of this script.

Usage::

    nice -n 10 .venv/bin/python benchmarks/ann_recall.py            # 10^5 rows, ip and l2
    .venv/bin/python benchmarks/ann_recall.py --rows 20000 --metrics l2   # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from gradsift.influence.neighbors import IndexConfig, build_index, recall_at_k


def make_data(n: int, m: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows [n, d], queries [m, d])`` float32 from one seeded mixture."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((64, d)) * 2.0
    bases = rng.standard_normal((64, 16, d)) / np.sqrt(16)

    def draw(count: int) -> np.ndarray:
        c = rng.integers(0, 64, count)
        coef = rng.standard_normal((count, 16))
        x = (
            centers[c]
            + np.einsum("nk,nkd->nd", coef, bases[c])
            + 0.5 * rng.standard_normal((count, d))
        )
        return (x * rng.lognormal(0.0, 0.3, (count, 1))).astype(np.float32)

    return draw(n), draw(m)


def configs(n: int, args: argparse.Namespace, metric: str) -> list[tuple[str, IndexConfig]]:
    nlist = args.nlist or int(4 * np.sqrt(n))
    common = {
        "metric": metric,
        "train_size": args.train_size,
        "block_rows": args.block_rows,
        "seed": 0,
    }
    out: list[tuple[str, IndexConfig]] = [
        ("faiss flat", IndexConfig(backend="flat", **common)),
    ]
    for nprobe in (1, 8, 32):
        out.append(
            (
                f"IVFFlat nlist={nlist} nprobe={nprobe}",
                IndexConfig(backend="ivf", nlist=nlist, nprobe=nprobe, **common),
            )
        )
    for nprobe in (8, 32):
        out.append(
            (
                f"IVF-PQ nlist={nlist} m={args.pq_m}×8b nprobe={nprobe}",
                IndexConfig(backend="ivf", nlist=nlist, nprobe=nprobe, pq_m=args.pq_m, **common),
            )
        )
    for ef in (64, 256):
        out.append(
            (
                f"HNSW M=32 efSearch={ef}",
                IndexConfig(backend="hnsw", hnsw_m=32, ef_search=ef, **common),
            )
        )
    return out


def blocks(X: np.ndarray, size: int):
    for start in range(0, len(X), size):
        yield start, X[start : start + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--metrics", default="ip,l2")
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--pq-m", type=int, default=16)
    parser.add_argument("--train-size", type=int, default=50_000)
    parser.add_argument("--block-rows", type=int, default=16_384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X, Q = make_data(args.rows, args.queries, args.dim, args.seed)
    print(
        f"# ANN recall: {args.rows:,} rows × {args.dim} dims, {args.queries:,} queries; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {os.getloadavg()[0]:.1f} at start\n"
    )
    for metric in args.metrics.split(","):
        exact_cfg = IndexConfig(backend="exact", metric=metric, block_rows=args.block_rows)
        t0 = time.perf_counter()
        exact = build_index(blocks(X, args.block_rows), exact_cfg)
        build_exact = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, truth = exact.search(Q, 100)
        search_exact = time.perf_counter() - t0
        print(f"## metric = {metric}\n")
        print("| index | build s | search s | speed-up vs exact search | recall@10 | recall@100 |")
        print("|---|---:|---:|---:|---:|---:|")
        print(
            f"| exact (torch, blocked) | {build_exact:.2f} | {search_exact:.2f} | 1.0 | 1.000 | 1.000 |"
        )
        for name, config in configs(args.rows, args, metric):
            t0 = time.perf_counter()
            index = build_index(X, config)  # seeded training sample, then blocks
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, found = index.search(Q, 100)
            search = time.perf_counter() - t0
            r10 = recall_at_k(found[:, :10], truth[:, :10])
            r100 = recall_at_k(found, truth)
            print(
                f"| {name} | {build:.2f} | {search:.3f} | {search_exact / search:.1f} | "
                f"{r10:.3f} | {r100:.3f} |"
            )
        print()


if __name__ == "__main__":
    main()
