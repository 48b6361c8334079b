"""Per-sample gradient throughput: closed form vs vmap vs an autograd loop.

Each path's time per sample is divided by the time per sample of one plain training epoch
(forward + backward + optimizer step, same batch size), measured in the same run, so the
ratios hold on a noisy machine. The autograd loop runs on a subset and is reported per
sample. Gradients are taken w.r.t. the last linear layer (the OGA default; all three paths)
and w.r.t. all parameters (vmap and loop).

    .venv/bin/python benchmarks/grad_throughput.py            # ~2-4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from gradsift.experiments.datasets import load_digits
from gradsift.experiments.models import mlp, small_cnn
from gradsift.grads.computer import GradientComputer
from gradsift.task import ClassificationTask


def epoch_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
        opt.step()
    model.eval()
    return time.perf_counter() - start


def grad_seconds(
    model: nn.Module, tracked: str, method: str, x: torch.Tensor, y: torch.Tensor, batch: int
) -> float:
    gc = GradientComputer(
        model, ClassificationTask(tracked=tracked), method=method, chunk_size=batch
    )
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        gc.compute((x[i : i + batch], y[i : i + batch]))
    return time.perf_counter() - start


def problems(n_mnist: int):
    digits = load_digits()
    xd, yd = torch.tensor(digits.train.X), torch.tensor(digits.train.y)
    g = torch.Generator().manual_seed(0)
    xm = torch.rand(
        n_mnist, 1, 28, 28, generator=g
    )  # MNIST-sized inputs; content does not change the cost
    ym = torch.randint(0, 10, (n_mnist,), generator=g)
    yield "digits MLP 64-256-10", mlp(64, 10, hidden=(256,)), xd, yd
    yield "MNIST-size MLP 784-512-256-10", mlp(784, 10, hidden=(512, 256)), xm, ym
    yield "MNIST-size CNN", small_cnn(1, 10, 28), xm, ym


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-mnist", type=int, default=4096)
    parser.add_argument("--loop-samples", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, model, x, y in problems(args.n_mnist):
        model.eval()
        n = len(x)
        epoch_grad = epoch_seconds(model, x, y, args.batch)  # warm-up
        epoch = min(epoch_seconds(model, x, y, args.batch) for _ in range(2)) / n
        for tracked in ("last_linear", "all"):
            for method in ("closed_form", "vmap", "loop"):
                if method == "closed_form" and tracked == "all":
                    continue
                m = args.loop_samples if method == "loop" else n
                secs = grad_seconds(model, tracked, method, x[:m], y[:m], args.batch) / m
                dim = GradientComputer(
                    model, ClassificationTask(tracked=tracked), method="loop"
                ).dim
                rows.append((name, tracked, dim, method, 1 / secs, secs / epoch))
        del epoch_grad
    print(
        f"\nbatch size {args.batch}; torch {torch.__version__}; threads {torch.get_num_threads()}\n"
    )
    print(
        "| model | tracked | D | method | samples/s | time ÷ training-epoch time (same samples) |"
    )
    print("|---|---|---:|---|---:|---:|")
    for name, tracked, dim, method, rate, ratio in rows:
        print(f"| {name} | {tracked} | {dim:,} | {method} | {rate:,.0f} | {ratio:.2f}× |")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
