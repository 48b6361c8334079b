"""Per-sample gradient throughput for transformers, against a plain fine-tuning step.

Three settings, each on one fixed batch:

- ``MiniLM head``: all-MiniLM-L6-v2 + linear head, encoder frozen; gradients of the
  head (closed form: one forward pass) — and vmap / loop for comparison;
- ``MiniLM LoRA``: LoRA r=8 on query/value (+ the head trained): gradients of the LoRA
  matrices by the hooks path (one batched forward/backward), vmap and the per-sample loop;
- ``SmolLM2 LoRA``: SmolLM2-135M-Instruct, LoRA r=8 on q_proj/v_proj, causal-LM loss on
  the answer tokens of sentence_transformations samples: hooks, vmap, loop.

"plain step" = forward + backward of the batch-mean loss + an AdamW step over the same
trainable parameters, on the same batch. Every path is timed ``--repeats`` times after a
warm-up, interleaved, and the median is reported; ratio = per-sample-gradient time /
plain-step time (so 1.0 means "as costly as one fine-tuning step"). All gradient paths
are checked against each other (relative error printed).

    nice -n 10 .venv/bin/python benchmarks/hf_throughput.py            # CPU
    python benchmarks/hf_throughput.py --device cuda --gguf PATH       # GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradsift.experiments.llm_tasks import CausalLMData, load_influence_task
from gradsift.experiments.text_data import TokenizedText, collate_trimmed, load_rotten_tomatoes
from gradsift.grads.computer import GradientComputer
from gradsift.grads.hooks import LinearHookGradients
from gradsift.hf.models import (
    LoraSettings,
    add_lora,
    load_minilm_tokenizer,
    load_smollm2,
    minilm_classifier,
)
from gradsift.hf.tasks import CausalLMTask, SequenceClassificationTask


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def plain_step(model: torch.nn.Module, task: Any, batch: Any) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step() -> None:
        model.train()
        loss = task.per_sample_loss(model, batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.eval()

    return step


def grads(computer: Any, batch: Any) -> Callable[[], torch.Tensor]:
    return lambda: computer.compute(batch)[0]


def bench(
    label: str,
    batch: Any,
    n: int,
    step: Callable[[], None],
    paths: dict[str, Callable[[], torch.Tensor]],
    repeats: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    fns: dict[str, Callable[[], Any]] = {"plain step": step, **paths}
    times: dict[str, list[float]] = {k: [] for k in fns}
    outputs: dict[str, torch.Tensor] = {}
    for rep in range(repeats + 1):  # first round = warm-up
        for name, fn in fns.items():
            seconds, out = timed(fn, device)
            if rep > 0:
                times[name].append(seconds)
            if name != "plain step":
                outputs[name] = out.detach().float().cpu()
            print(f"  {label} / {name}: {seconds:.3f}s", flush=True)
    ref_name = next(iter(paths))
    ref = outputs[ref_name]
    base = statistics.median(times["plain step"])
    rows = []
    for name in fns:
        t = statistics.median(times[name])
        err = (
            float((outputs[name] - ref).norm() / ref.norm().clamp_min(1e-30))
            if name in outputs
            else None
        )
        rows.append(
            {
                "setting": label,
                "path": name,
                "batch": n,
                "seconds": t,
                "samples_per_s": n / t,
                "ratio_to_step": t / base,
                "rel_err_vs_" + ref_name: err,
            }
        )
    return rows


def minilm_batch(tok: Any, n: int, device: torch.device) -> Any:
    data = load_rotten_tomatoes(seed=0)
    ds = TokenizedText(tok, data.train.subset(range(n)), max_length=64)
    inputs, labels = collate_trimmed([ds[i] for i in range(n)])
    return ({k: v.to(device) for k, v in inputs.items()}, labels.to(device))


def run_minilm(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    tok = load_minilm_tokenizer()
    batch = minilm_batch(tok, args.minilm_batch, device)
    rows = []
    # head only: encoder frozen
    model = minilm_classifier(2, seed=0).to(device)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    head = SequenceClassificationTask("head")
    paths = {
        "closed form": grads(GradientComputer(model, head, "closed_form"), batch),
        "hooks": grads(LinearHookGradients(model, head, chunk_size=args.minilm_batch), batch),
        "vmap": grads(GradientComputer(model, head, "vmap", chunk_size=args.minilm_batch), batch),
    }
    rows += bench(
        "MiniLM head",
        batch,
        args.minilm_batch,
        plain_step(model, head, batch),
        paths,
        args.repeats,
        device,
    )
    # LoRA r=8 on query/value, head trained too
    lora = (
        add_lora(
            minilm_classifier(2, seed=0),
            LoraSettings(r=args.rank, modules_to_save=["head"], init_lora_weights=False, seed=0),
        )
        .to(device)
        .eval()
    )
    task = SequenceClassificationTask("lora")
    paths = {
        "hooks": grads(LinearHookGradients(lora, task, chunk_size=args.minilm_batch), batch),
        "vmap": grads(GradientComputer(lora, task, "vmap", chunk_size=args.minilm_batch), batch),
        "loop": grads(GradientComputer(lora, task, "loop"), batch),
    }
    rows += bench(
        "MiniLM LoRA",
        batch,
        args.minilm_batch,
        plain_step(lora, task, batch),
        paths,
        args.repeats,
        device,
    )
    return rows


def run_smollm2(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    base, tok = load_smollm2(gguf_path=args.gguf)
    model = (
        add_lora(base, LoraSettings(r=args.rank, init_lora_weights=False, seed=0)).to(device).eval()
    )
    task_data = load_influence_task("sentence_transformations")
    data = CausalLMData(tok, task_data.train[:: 900 // args.smol_batch][: args.smol_batch])
    batch = {k: v.to(device) for k, v in data.collate(list(data)).items()}
    task = CausalLMTask()
    paths = {
        "hooks": grads(LinearHookGradients(model, task, chunk_size=args.smol_batch), batch),
        "vmap": grads(
            GradientComputer(model, task, "vmap", chunk_size=args.smol_vmap_chunk), batch
        ),
        "loop": grads(GradientComputer(model, task, "loop"), batch),
    }
    return bench(
        "SmolLM2 LoRA",
        batch,
        args.smol_batch,
        plain_step(model, task, batch),
        paths,
        args.repeats,
        device,
    )


def markdown(rows: list[dict[str, Any]], device_name: str) -> str:
    lines = [
        f"Device: {device_name}.",
        "",
        "| setting | path | batch | seconds | samples/s | time ÷ plain step | rel. err. vs first path |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        err = next((v for k, v in r.items() if k.startswith("rel_err")), None)
        lines.append(
            f"| {r['setting']} | {r['path']} | {r['batch']} | {r['seconds']:.3f} | "
            f"{r['samples_per_s']:.1f} | {r['ratio_to_step']:.2f} | "
            f"{'–' if err is None else f'{err:.1e}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--minilm-batch", type=int, default=32)
    p.add_argument("--smol-batch", type=int, default=8)
    p.add_argument("--smol-vmap-chunk", type=int, default=8)
    p.add_argument("--skip-smollm2", action="store_true")
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--gguf", default=None)
    p.add_argument("--out", default="runs/hf_throughput")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU ({platform.machine()}, {args.threads} torch threads)")
    )
    rows = [] if args.skip_minilm else run_minilm(args, device)
    if not args.skip_smollm2:
        rows += run_smollm2(args, device)
    table = markdown(rows, name)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"hf_throughput-{device.type}.json").write_text(
        json.dumps({"device": name, "rows": rows}, indent=2)
    )
    (out / f"hf_throughput-{device.type}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
