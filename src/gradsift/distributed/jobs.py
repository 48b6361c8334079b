"""The Python API of ``gradsift extract`` and ``gradsift score``: :func:`run_extract`, :func:`run_score`.

Both run unchanged as one process or under ``torchrun`` (the command modules in
:mod:`gradsift.cli` only parse options and print)::

    gradsift extract runs/grads --dataset digits --checkpoint runs/mlp.pt
    torchrun --standalone --nproc-per-node 2 "$(which gradsift)" extract runs/grads \\
        --model mypkg.setup:make --project-dim 1024
    torchrun --standalone --nproc-per-node 2 "$(which gradsift)" score runs/grads \\
        --detector iforest --out scores.csv

The model and data come from ``--model module:factory`` (see :mod:`gradsift.factory`;
every rank calls the factory, which must be deterministic) or from a built-in data set
with a zoo model (``--dataset digits --arch mlp``, see
:func:`gradsift.experiments.pipeline.builtin_setup`): rank 0 loads the weights from
``--checkpoint`` (or trains the model, seeded, and saves it there when the file does not
exist yet) and broadcasts them, so every rank extracts with the same weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gradsift.detect.result import Budget
from gradsift.distributed import process_group as D
from gradsift.distributed.scoring import distributed_scores, distributed_topk, self_influence
from gradsift.distributed.sharded_extract import sharded_extract
from gradsift.errors import GradsiftError
from gradsift.factory import UserSetup, load_factory
from gradsift.grads.extract import ExtractConfig
from gradsift.grads.projection import ProjectionConfig
from gradsift.store.gradient_store import GradientStore
from gradsift.task import TrackSpec

if TYPE_CHECKING:
    from gradsift.experiments.pipeline import BuiltinModel

__all__ = ["resolve_setup", "run_extract", "run_score"]


def resolve_setup(
    model: str | None, builtin: BuiltinModel | None, tracked: TrackSpec | None = None
) -> UserSetup:
    """``--model module:factory`` or a built-in data set (exactly one of them).

    ``tracked`` overrides the task's tracked parameters (``None``: the task's own choice).
    """
    if (model is None) == (builtin is None):
        raise GradsiftError("give exactly one of --model module:factory and --dataset NAME")
    if model is not None:
        return load_factory(model).with_tracked(tracked)
    from gradsift.experiments.pipeline import builtin_setup  # scikit-learn: built-in data only

    return builtin_setup(builtin, tracked)  # type: ignore[arg-type]


def run_extract(
    out: str,
    *,
    model: str | None = None,
    builtin: BuiltinModel | None = None,
    tracked: TrackSpec | None = None,
    project_dim: int = 0,
    projection_kind: str = "rademacher",
    projection_seed: int = 0,
    rows_per_shard: int = 4096,
    batch_size: int = 256,
    dtype: str = "float32",
    method: str = "auto",
    measurement: bool = False,
    overwrite: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Run a (possibly distributed) extraction into ``out``; returns a JSON summary.

    Give exactly one of ``model`` (``'pkg.module:factory'``) and ``builtin``. ``tracked``
    (e.g. ``"all"`` or ``["fc1", "fc2"]``, see :func:`gradsift.task.parse_tracked`)
    overrides the task's tracked parameters.

    ``device="auto"`` puts the model on ``cuda:LOCAL_RANK`` when the process group uses
    nccl (one GPU per rank) or a single process has CUDA, and on the CPU otherwise.
    """
    with D.distributed_session() as ctx:
        setup = resolve_setup(model, builtin, tracked)
        setup.model.to(_device(device, ctx))
        config = ExtractConfig(
            projection=ProjectionConfig(project_dim, projection_kind, projection_seed)  # type: ignore[arg-type]
            if project_dim
            else None,
            rows_per_shard=rows_per_shard,
            batch_size=batch_size,
            method=method,  # type: ignore[arg-type]
            dtype=dtype,
            measurement=measurement,
        )
        run = sharded_extract(
            setup.model, setup.task, setup.dataset, out, config, overwrite=overwrite
        )
        written = sum(D.all_gather_objects(len(run.written)))
        return {
            "store": str(run.store.path),
            "rows": run.store.n_rows,
            "dim": run.store.dim,
            "dtype": run.store.settings.dtype,
            "shards": run.store.n_shards,
            "shards_written": written,
            "shards_resumed": run.resumed,
            "world_size": ctx.world_size,
            "backend": ctx.backend or "none (single process)",
            "device": str(next(setup.model.parameters()).device),
            "seconds": run.seconds,
            "is_main": ctx.is_main,
        }


def _device(device: str, ctx: D.DistInfo) -> torch.device:
    """``auto``: the rank's GPU under nccl (or the GPU of a single process), else the CPU."""
    if device != "auto":
        return torch.device(device)
    if ctx.backend == "nccl" or (ctx.backend is None and torch.cuda.is_available()):
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def run_score(
    store: str,
    *,
    out: str | None = None,
    detector: str = "l2",
    sample_size: int = 10_000,
    seed: int = 0,
    budget: Budget = 0.1,
    test: str | None = None,
    k: int = 10,
    metric: str = "dot",
    preconditioner: str | None = None,
    block_rows: int | None = None,
) -> dict[str, Any]:
    """Detection scores (``--detector``) or, with ``--test``, pairwise top-k of a store.

    ``budget``: flagged fraction (float < 1) or count (int) in the CSV's ``is_issue``.

    Rank 0 writes ``out``: ``.csv`` (index, score, rank, is_issue, detector) or ``.npy``
    (float64 scores) for detectors; ``.npz`` (``helpful_values``, ``helpful_indices``,
    ``harmful_values``, ``harmful_indices``, each ``[m, k]``) for top-k.
    """
    with D.distributed_session() as ctx:
        start = time.perf_counter()
        grads = GradientStore.open(store)
        if test is not None:
            summary = _topk(grads, test, k, metric, block_rows, out, ctx.is_main)
        else:
            summary = _detect(
                grads,
                detector,
                sample_size,
                seed,
                budget,
                preconditioner,
                block_rows,
                out,
                ctx.is_main,
            )
        D.barrier()
        summary.update(
            world_size=ctx.world_size, seconds=time.perf_counter() - start, is_main=ctx.is_main
        )
        return summary


def _load_matrix(path: str) -> np.ndarray | GradientStore:
    p = Path(path)
    if p.is_dir():
        return GradientStore.open(p)
    if p.suffix != ".npy" or not p.exists():
        raise GradsiftError(
            f"{path} is neither a gradient store directory nor an existing .npy file"
        )
    return np.load(p)


def _topk(
    grads: GradientStore,
    test: str,
    k: int,
    metric: str,
    block_rows: int | None,
    out: str | None,
    main: bool,
) -> dict[str, Any]:
    source = _load_matrix(test)
    matrix = source.load() if isinstance(source, GradientStore) else source
    helpful, harmful = distributed_topk(grads, matrix, k, metric, block_rows)  # type: ignore[arg-type]
    hv, hi = helpful.result()
    lv, li = harmful.result()
    target = out or "topk.npz"
    if main:
        np.savez(
            target, helpful_values=hv, helpful_indices=hi, harmful_values=lv, harmful_indices=li
        )
    return {
        "mode": "topk",
        "metric": metric,
        "k": int(hi.shape[1]),
        "n_test": len(matrix),
        "rows": grads.n_rows,
        "out": target,
    }


def _detect(
    grads: GradientStore,
    detector: str,
    sample_size: int,
    seed: int,
    budget: Budget,
    preconditioner: str | None,
    block_rows: int | None,
    out: str | None,
    main: bool,
) -> dict[str, Any]:
    from gradsift.detect.result import DetectionResult

    if detector.replace("_", "-") == "self-influence":
        p = _load_matrix(preconditioner) if preconditioner else None
        scores, settings = (
            self_influence(grads, p, block_rows),
            {"name": "self-influence", "preconditioner": preconditioner},
        )
    else:
        if preconditioner:
            raise GradsiftError("--preconditioner applies to --detector self-influence only")
        scores, info = distributed_scores(
            grads, detector, sample_size=sample_size, seed=seed, block_rows=block_rows
        )
        settings = {**info["detector"], "fit_sample": info.get("fit_sample")}
    result = DetectionResult(scores, settings["name"], settings, budget)
    target = out or "scores.csv"
    if main:
        if target.endswith(".npy"):
            np.save(target, scores)
        else:
            result.to_csv(target)
    return {"mode": "detect", **result.summary(), "out": target}
