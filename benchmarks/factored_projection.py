"""Factored (Kronecker) gradient projection: cost against training, and quality.

All ratios are measured side by side in one run, on the same rows and batch size:

1. **MNIST MLP 784-512-256-10 and MNIST CNN, all parameters.** Seconds to extract projected
   per-sample gradients of ``--n-train`` MNIST rows with
   :class:`gradsift.grads.kronecker.FactoredProjector` at ``k_out = k_in = k`` per layer
   (k ∈ ``--ks``) ÷ seconds of one plain training epoch over the same rows (SGD, forward +
   backward + step). The dense path (``vmap`` per-sample gradients, then the per-block
   Gaussian :class:`~gradsift.grads.projection.Projector` of ``k²`` per parameter block)
   runs on ``--n-vmap`` rows, against an epoch over those rows. "Peak extra memory" is the
   rise of the process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``)
   over its RSS before the call; the script re-executes itself with
   ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed blocks of 64 KiB or more go back to the
   system at once and the peak RSS follows the live tensors (training and extraction
   run under the same setting). That setting makes every allocation of 64 KiB or more a
   fresh ``mmap`` whose pages fault on first touch, which slows both sides (most the side
   that allocates most); ``--no-mmap-threshold`` times under the default allocator (the
   memory column is then less faithful). Each timed extraction builds a new projector, so
   its one-time checks (row independence, and the first chunk's sum check, the one chunk
   whose backward also forms weight gradients) are part of the time. ``--baseline FILE``
   times, in the same rounds, the ``FactoredProjector`` of another copy of
   ``grads/kronecker.py`` (e.g. an older commit's, its imports pointed at a copy of that
   commit's ``grads/capture.py``) as "factored (baseline)".
2. **SmolLM2-135M, all linear layers** (7 per block × 30 blocks; ``lm_head`` is tied to the
   embeddings and left out): tokens/s of the factored extraction ÷ tokens/s of an AdamW
   fine-tuning step of the same parameters on the same batches.
3. **Quality** on ``--n-quality`` rows (MLP and CNN): inner products of projected rows
   against those of the exact per-sample gradients (vmap), for the factored projection and
   for a dense Gaussian projection of the same dimension per layer (``k_out·k_in``, weight
   and bias together): relative Frobenius error of the Gram matrix, mean |error| of the
   off-diagonal inner products ÷ ``‖g_i‖‖g_j‖``, Pearson r of the off-diagonal inner
   products, and recall of the 10 nearest rows by inner product.
4. **LDS** of the gradient-dot score on the digits MLP of
   ``benchmarks/influence_fidelity.py`` (all parameters): exact gradients, factored rows
   and dense Gaussian rows of the same per-layer width (``--lds-ks``), mean ± std over
   ``--lds-seeds`` projection seeds.

    nice -n 10 .venv/bin/python benchmarks/factored_projection.py \\
        --out benchmarks/results/factored_projection.md   # ~15-25 min, 2 cores
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from grad_throughput import epoch_seconds  # benchmarks/ is on sys.path when run as a script

from gradsift.experiments.datasets import load_mnist
from gradsift.experiments.models import mlp, small_cnn
from gradsift.grads.computer import GradientComputer
from gradsift.grads.kronecker import FactoredProjector, factorable_modules
from gradsift.grads.layout import Block
from gradsift.grads.projection import ProjectionConfig, Projector
from gradsift.task import ClassificationTask


# ----------------------------------------------------------------------------- measuring
def _status_kib(key: str) -> int:
    match = re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


def measured(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """``(seconds, peak extra MiB, result)`` of ``fn()``; memory is NaN off Linux."""
    gc.collect()
    try:
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    except OSError:
        before = -1
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    extra = (_status_kib("VmHWM") - before) / 1024 if before >= 0 else float("nan")
    return seconds, extra, out


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, tuple[float, float]]:
    """``{name: (min seconds, max peak extra MiB)}`` over ``rounds`` rounds, each running
    every function once in turn: on a shared machine the minimum is the least disturbed."""
    out: dict[str, tuple[float, float]] = {}
    for r in range(rounds):
        for name, fn in fns.items():
            secs, mem, _ = measured(fn)
            best, peak = out.get(name, (float("inf"), 0.0))
            out[name] = (min(best, secs), max(peak, mem))
            print(f"  round {r}: {name}: {secs:.2f}s", flush=True)
    return out


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, ...]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def run_all(computer: Any, parts: list[Any], projector: Projector | None = None) -> None:
    for batch in parts:
        G, _ = computer.compute(batch)
        if projector is not None:
            projector.project(G)


def kron(k: int, seed: int = 0) -> ProjectionConfig:
    return ProjectionConfig(dim=k, kind="kronecker", seed=seed)


# ----------------------------------------------------------------------------- 1. MNIST
def projector_classes(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """``[("factored", FactoredProjector)]``, plus ``("factored (baseline)", cls)`` loaded
    from ``--baseline`` (its directory goes on ``sys.path`` for its own imports)."""
    out: list[tuple[str, Any]] = [("factored", FactoredProjector)]
    if args.baseline is not None:
        import importlib.util

        sys.path.insert(0, str(args.baseline.parent))
        spec = importlib.util.spec_from_file_location("baseline_kronecker", args.baseline)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out.append(("factored (baseline)", module.FactoredProjector))
    return out


def mnist_models() -> list[tuple[str, torch.nn.Module]]:
    return [
        ("MNIST MLP 784-512-256-10", mlp(784, 10, hidden=(512, 256), seed=0)),
        ("MNIST CNN (small_cnn)", small_cnn(1, 10, 28, seed=0)),
    ]


def mnist_cost(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    return [row for name, model in mnist_models() for row in model_cost(args, name, model, x, y)]


def model_cost(
    args: argparse.Namespace, name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> list[dict]:
    """Rows of the cost table for one model (timings interleaved, see :func:`interleaved`)."""
    rows: list[dict] = []
    task = ClassificationTask("all")
    n_params = sum(p.numel() for p in model.parameters())
    common = dict(model=name, params=n_params)
    full = batches(x, y, args.batch)
    sub = batches(x[: args.n_vmap], y[: args.n_vmap], args.batch)
    fns: dict[str, Callable[[], Any]] = {
        "epoch": lambda: epoch_seconds(model, x, y, args.batch),
        "epoch (vmap rows)": lambda: epoch_seconds(
            model, x[: args.n_vmap], y[: args.n_vmap], args.batch
        ),
    }
    dims: dict[str, tuple[str, int | None, int]] = {}  # key -> (path, k, row dim)
    for label, cls in projector_classes(args):
        for k in args.ks:
            fp = cls(model.eval(), task, kron(k), chunk_size=args.batch)
            run_all(fp, full[:1])  # warm-up
            key = f"{label} {k}"  # a new projector per run: its one-time checks are timed
            fns[key] = lambda cls=cls, k=k: run_all(
                cls(model, task, kron(k), chunk_size=args.batch), full
            )
            dims[key] = (label, k, fp.dim)
    vmap = GradientComputer(model, task, "vmap", chunk_size=args.batch)
    fns["vmap, no projection"] = lambda: run_all(vmap, sub)
    dims["vmap, no projection"] = ("vmap, no projection", None, vmap.dim)
    for k in args.ks:
        cfg = ProjectionConfig(k * k, "gaussian", 0)
        proj = Projector(vmap.layout, cfg, cache_bytes=int(args.dense_cache_gib * 2**30))
        need = sum(b.numel * k * k * 4 for b in vmap.layout if b.numel > k * k)
        if need > proj.cache_bytes:  # regenerated every batch: minutes per batch
            rows.append(
                dict(
                    common,
                    k=k,
                    path="vmap + dense Gaussian",
                    n=0,
                    dim=proj.out_dim,
                    seconds=None,
                    epoch=None,
                    mem=need / 2**20,
                    note=f"not run: its matrix is {need / 2**30:.1f} GiB",
                )
            )
            continue
        run_all(vmap, sub[:1], proj)  # fills the matrix cache (generation not timed)
        fns[f"vmap + dense {k}"] = lambda p=proj: run_all(vmap, sub, p)
        dims[f"vmap + dense {k}"] = ("vmap + dense Gaussian", k, proj.out_dim)
    timing = interleaved(fns, args.rounds)
    for key, (path, k, dim) in dims.items():
        on_sub = key.startswith("vmap")
        rows.append(
            dict(
                common,
                k=k,
                path=path,
                n=min(args.n_vmap, len(x)) if on_sub else len(x),
                dim=dim,
                seconds=timing[key][0],
                mem=timing[key][1],
                epoch=timing["epoch (vmap rows)" if on_sub else "epoch"][0],
            )
        )
    return rows


def cost_table(rows: list[dict], batch: int) -> str:
    malloc = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    lines = [
        f"Batch size {batch}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"allocator: {f'MALLOC_MMAP_THRESHOLD_={malloc}' if malloc else 'glibc default'}. "
        "Ratio = extraction seconds ÷ plain training-epoch seconds over the same rows.",
        "",
        "| model | tracked params | path | k_out×k_in per layer | row dim | rows | "
        "extraction s | epoch s | ratio | peak extra MiB |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        k = "–" if r["k"] is None else f"{r['k']}²"
        if r["seconds"] is None:
            lines.append(
                f"| {r['model']} | {r['params']:,} | {r['path']} | {k} | {r['dim']:,} | "
                f"– | {r['note']} | | | (matrix {r['mem']:,.0f}) |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['path']} | {k} | {r['dim']:,} | {r['n']:,} | "
            f"{r['seconds']:.2f} | {r['epoch']:.2f} | {r['seconds'] / r['epoch']:.2f}× | "
            f"{r['mem']:,.0f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 2. SmolLM2
def smollm2_cost(args: argparse.Namespace) -> str:
    from gradsift.experiments.llm_tasks import CausalLMData, load_influence_task
    from gradsift.hf.models import load_smollm2
    from gradsift.hf.tasks import CausalLMTask

    model, tok = load_smollm2()
    tracked = factorable_modules(model)
    task = CausalLMTask(tracked)
    params = task.tracked_parameters(model)
    for p in model.parameters():  # fine-tune exactly the tracked (linear) parameters
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    records = load_influence_task("sentence_transformations").train[: args.smol_seqs]
    data = CausalLMData(tok, records)
    parts = [
        data.collate([data[j] for j in range(i, min(i + args.smol_batch, len(data)))])
        for i in range(0, len(data), args.smol_batch)
    ]
    tokens = int(sum(int(b["attention_mask"].sum()) for b in parts))
    opt = torch.optim.AdamW(list(params.values()), lr=1e-5)

    def finetune() -> None:  # one AdamW step per batch, as a fine-tuning epoch does
        model.train()
        for b in parts:
            opt.zero_grad(set_to_none=True)
            task.per_sample_loss(model, b).mean().backward()
            opt.step()
        model.eval()

    paths: dict[str, Callable[[], Any]] = {"fine-tuning step (AdamW)": finetune}
    finetune()  # warm-up; allocates the optimizer state
    for label, cls in projector_classes(args):
        for k in args.ks:
            fp = cls(model, task, kron(k), chunk_size=args.smol_batch)
            run_all(fp, parts[:1])  # warm-up
            paths[f"{label} {k}² per layer (row dim {fp.dim:,})"] = lambda cls=cls, k=k: run_all(
                cls(model, task, kron(k), chunk_size=args.smol_batch), parts
            )  # a new projector per run: its one-time checks are timed
    results = interleaved(paths, args.smol_rounds)
    base = results["fine-tuning step (AdamW)"][0]
    n_params = sum(p.numel() for p in params.values())
    lines = [
        f"SmolLM2-135M, {len(tracked)} linear layers, {n_params:,} tracked parameters; "
        f"{len(data)} sequences, {tokens:,} tokens, batch {args.smol_batch}.",
        "",
        "| path | seconds | tokens/s | time ÷ fine-tuning step | peak extra MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (secs, mem) in results.items():
        lines.append(
            f"| {name} | {secs:.1f} | {tokens / secs:,.0f} | {secs / base:.2f}× | {mem:,.0f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 3. quality
def dense_same_dims(G: torch.Tensor, fp: FactoredProjector, seed: int) -> torch.Tensor:
    """Dense Gaussian projection of each layer's [weight, bias] gradient to that layer's
    factored width ``k_out·k_in`` (identity where the layer is no wider)."""
    blocks = {b.name: b for b in fp.layout}
    parts = []
    for j, (layer, out) in enumerate(zip(fp.layers, fp.out_blocks, strict=True)):
        cols = torch.cat(
            [
                G[:, blocks[p].offset : blocks[p].stop]
                for p in (layer.weight, layer.bias)
                if p is not None
            ],
            dim=1,
        )
        proj = Projector(
            [Block(layer.module_name, (cols.shape[1],), 0)],
            ProjectionConfig(out.numel, "gaussian", seed + j),
            cache_bytes=0,
        )
        parts.append(proj.project(cols))
    return torch.cat(parts, dim=1)


def agreement(Z: torch.Tensor, G: torch.Tensor, top: int = 10) -> dict[str, float]:
    exact, approx = G @ G.T, Z @ Z.T
    norms = exact.diag().sqrt()
    off = ~torch.eye(len(G), dtype=torch.bool)
    err = (approx - exact).abs() / torch.outer(norms, norms)
    a, b = exact[off], approx[off]
    pearson = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    masked_e = exact.masked_fill(~off, -torch.inf).topk(top, dim=1).indices
    masked_a = approx.masked_fill(~off, -torch.inf).topk(top, dim=1).indices
    recall = sum(
        len(set(r.tolist()) & set(s.tolist())) for r, s in zip(masked_e, masked_a, strict=True)
    ) / (top * len(G))
    return dict(
        gram=float((approx - exact).norm() / exact.norm()),
        err=float(err[off].mean()),
        pearson=pearson,
        recall=recall,
    )


def quality(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> str:
    lines = [
        f"{args.n_quality} MNIST rows; exact = vmap per-sample gradients of all parameters. "
        "Gram err = ‖ZZᵀ−GGᵀ‖_F/‖GGᵀ‖_F; |ip err| = mean over pairs of "
        "|⟨z_i,z_j⟩−⟨g_i,g_j⟩|/(‖g_i‖‖g_j‖); r = Pearson of off-diagonal inner products; "
        "recall@10 = overlap of the 10 largest inner products per row.",
        "",
        "| model | k_out×k_in per layer | row dim | projection | Gram err | |ip err| | r | recall@10 |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    task = ClassificationTask("all")
    xs, ys = x[: args.n_quality], y[: args.n_quality]
    for name, model in mnist_models():
        epoch_seconds(model, x, y, args.batch)  # one epoch of training: realistic gradients
        model.eval()
        G = GradientComputer(model, task, "vmap", chunk_size=64).compute((xs, ys))[0].double()
        for k in args.ks:
            fp = FactoredProjector(model, task, kron(k, seed=1), chunk_size=args.batch)
            Z = fp.compute((xs, ys))[0].double()
            for label, rows in (("factored", Z), ("dense Gaussian", dense_same_dims(G, fp, 1))):
                m = agreement(rows, G)
                lines.append(
                    f"| {name} | {k}² | {fp.dim:,} | {label} | {m['gram']:.3f} | "
                    f"{m['err']:.4f} | {m['pearson']:.3f} | {m['recall']:.2f} |"
                )
            print(f"  quality {name} k={k} done", flush=True)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 4. LDS
def lds_quality(args: argparse.Namespace) -> str:
    """LDS of the gradient-dot score ``⟨z_i, z_t⟩`` (all parameters of the digits MLP
    64-32-10 of ``benchmarks/influence_fidelity.py``, same subsets and subset models)
    with exact gradients, factored rows and dense Gaussian rows of the same per-layer
    width, over ``--lds-seeds`` projection seeds."""
    import numpy as np
    from influence_fidelity import digits_lds  # benchmarks/ is on sys.path

    gt = digits_lds(args.lds_models, args.lds_epochs)
    task = ClassificationTask("all")
    vmap = GradientComputer(gt.model, task, "vmap", chunk_size=64)
    G, T = (vmap.compute(part)[0].double() for part in (gt.train, gt.test))

    def lds(train: torch.Tensor, test: torch.Tensor) -> float:
        result = gt.lds((train @ test.T).numpy())
        return float("nan") if result is None else result.score

    lines = [
        f"Digits MLP 64-32-10, all {G.shape[1]:,} parameters; {len(G)} train and {len(T)} "
        f"test points; {args.lds_models} models on α = 0.5 subsets, {args.lds_epochs} epochs "
        f"each (`benchmarks/influence_fidelity.py`'s recipe). Score = gradient dot "
        f"⟨z_i, z_t⟩ (positive = helpful) against −loss of each subset model; mean ± std "
        f"over {args.lds_seeds} projection seeds.",
        "",
        "| k_out×k_in per layer | row dim | projection | LDS |",
        "|---|---:|---|---|",
        f"| – | {G.shape[1]:,} | none (exact gradients) | {lds(G, T):.4f} |",
    ]
    for k in args.lds_ks:
        for label in ("factored", "dense Gaussian"):
            scores, dim = [], 0
            for seed in range(args.lds_seeds):
                fp = FactoredProjector(gt.model, task, kron(k, seed=seed))
                dim = fp.dim
                if label == "factored":
                    Zg, Zt = (fp.compute(part)[0].double() for part in (gt.train, gt.test))
                else:
                    Zg, Zt = dense_same_dims(G, fp, seed), dense_same_dims(T, fp, seed)
                scores.append(lds(Zg, Zt))
            lines.append(
                f"| {k}² | {dim:,} | {label} | {np.mean(scores):.4f} ± {np.std(scores):.4f} |"
            )
        print(f"  lds k={k} done", flush=True)
    return "\n".join(lines)


def main() -> None:
    mmap = "--no-mmap-threshold" not in sys.argv
    if mmap and "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # see the module docstring
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--n-vmap", type=int, default=1_024)
    parser.add_argument("--n-quality", type=int, default=256)
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--dense-cache-gib", type=float, default=3.0)
    parser.add_argument("--smol-seqs", type=int, default=16)
    parser.add_argument("--smol-batch", type=int, default=8)
    parser.add_argument("--smol-rounds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lds-models", type=int, default=50)
    parser.add_argument("--lds-epochs", type=int, default=30)
    parser.add_argument("--lds-ks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--lds-seeds", type=int, default=5)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["mnist", "smollm2", "quality", "lds"]
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline", type=Path, default=None, help="another kronecker.py")
    parser.add_argument("--no-mmap-threshold", action="store_true", help="default allocator")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_mnist(n_train=args.n_train, n_val=10, n_test=10)
    x, y = torch.tensor(data.train.X), torch.tensor(data.train.y)
    out = []
    if "mnist" not in args.skip:
        out.append(cost_table(mnist_cost(args, x, y), args.batch))
    if "smollm2" not in args.skip:
        out.append(smollm2_cost(args))
    if "quality" not in args.skip:
        out.append(quality(args, x, y))
    if "lds" not in args.skip:
        out.append(lds_quality(args))
    text = "\n\n".join(out)
    print(text)
    if args.out is not None:
        command = " ".join(["nice -n 10 .venv/bin/python", *sys.argv])
        header = f"# Factored (Kronecker) gradient projection\n\nCommand: `{command}`\n\n"
        args.out.write_text(header + text + "\n")


if __name__ == "__main__":
    main()
