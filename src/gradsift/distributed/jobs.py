"""The Python API of ``gradsift extract`` and ``gradsift score``: :func:`run_extract`, :func:`run_score`.

Both run unchanged as one process or under ``torchrun`` (the command modules in
:mod:`gradsift.cli` only parse options and print)::

    gradsift extract runs/grads --dataset digits --checkpoint runs/mlp.pt
    torchrun --standalone --nproc-per-node 2 "$(which gradsift)" extract runs/grads \\
        --model mypkg.setup:make --project-dim 1024
    torchrun --standalone --nproc-per-node 2 "$(which gradsift)" score runs/grads \\
        --detector iforest --out scores.csv

Opening a store verifies it (``verify="full"``: sizes, headers and sha256 of every shard;
``"header"``: no hashing). Under ``torchrun`` only rank 0 hashes; the other ranks check
sizes and headers, and all ranks agree before any work. A test store (``--test``) must
match the train store (:func:`gradsift.store.compatible.check_compatible`). Outputs are
written by rank 0, atomically; detector ranks in the CSV are 1-based (1 = most suspicious).

The model and data come from ``--model module:factory`` (see :mod:`gradsift.factory`;
every rank calls the factory, which must be deterministic) or from a built-in data set
with a zoo model (``--dataset digits --arch mlp``, see
:func:`gradsift.experiments.pipeline.builtin_setup`): rank 0 loads the weights from
``--checkpoint`` (or trains the model, seeded, and saves it there when the file does not
exist yet) and broadcasts them, so every rank extracts with the same weights.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gradsift.detect.result import Budget
from gradsift.distributed import process_group as D
from gradsift.distributed.scoring import distributed_scores, distributed_topk, self_influence
from gradsift.distributed.sharded_extract import sharded_extract
from gradsift.errors import GradsiftError, StoreError
from gradsift.factory import UserSetup, load_factory
from gradsift.grads.extract import ExtractConfig
from gradsift.grads.projection import ProjectionConfig
from gradsift.store.compatible import check_compatible
from gradsift.store.gradient_store import GradientStore
from gradsift.store.verify import Verify, is_full
from gradsift.task import TrackSpec

if TYPE_CHECKING:
    from gradsift.experiments.pipeline import BuiltinModel

__all__ = ["open_store", "resolve_setup", "run_extract", "run_score"]


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
    projection_dim_out: int | None = None,
    rows_per_shard: int = 4096,
    batch_size: int = 256,
    dtype: str = "float32",
    method: str = "auto",
    measurement: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    verify: Verify = "full",
) -> dict[str, Any]:
    """Run a (possibly distributed) extraction into ``out``; returns a JSON summary.

    ``verify``: how shards of an earlier run are checked before resuming (rank 0 only):
    ``"full"`` hashes them, ``"header"`` checks sizes and headers. The summary's
    ``shards_repaired`` lists the shards that failed the check and were recomputed.

    Give exactly one of ``model`` (``'pkg.module:factory'``) and ``builtin``. ``tracked``
    (e.g. ``"all"`` or ``["fc1", "fc2"]``, see :func:`gradsift.task.parse_tracked`)
    overrides the task's tracked parameters. ``projection_dim_out`` is ``k_out`` of the
    ``"kronecker"`` projection (``None``: ``project_dim``).

    ``device="auto"`` puts the model on ``cuda:LOCAL_RANK`` when the process group uses
    nccl (one GPU per rank) or a single process has CUDA, and on the CPU otherwise.
    """
    with D.distributed_session() as ctx:
        setup = resolve_setup(model, builtin, tracked)
        setup.model.to(_device(device, ctx))
        config = ExtractConfig(
            projection=ProjectionConfig(
                project_dim,
                projection_kind,  # type: ignore[arg-type]
                projection_seed,
                projection_dim_out,
            )
            if project_dim
            else None,
            rows_per_shard=rows_per_shard,
            batch_size=batch_size,
            method=method,  # type: ignore[arg-type]
            dtype=dtype,
            measurement=measurement,
        )
        run = sharded_extract(
            setup.model, setup.task, setup.dataset, out, config, overwrite=overwrite, verify=verify
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
            "shards_repaired": list(run.repaired),
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
    verify: Verify = "full",
) -> dict[str, Any]:
    """Detection scores (``--detector``) or, with ``--test``, pairwise top-k of a store.

    ``budget``: flagged fraction (float < 1) or count (int) in the CSV's ``is_issue``.
    ``verify``: how the stores are checked on open (see :func:`open_store`).

    Rank 0 writes ``out`` atomically: ``.csv`` (index, score, rank (1-based: 1 = most
    suspicious), is_issue, detector) or ``.npy`` (float64 scores) for detectors; ``.npz``
    (``helpful_values``, ``helpful_indices``, ``harmful_values``, ``harmful_indices``,
    each ``[m, k]``) for top-k.

    Raises:
        GradsiftError: a bad output name, a missing, corrupted or mismatched store
            (before any scoring).
    """
    target = _output(out, "topk.npz" if test is not None else "scores.csv", test is not None)
    is_full(verify)
    with D.distributed_session() as ctx:
        start = time.perf_counter()
        grads = open_store(store, verify)
        if test is not None:
            summary = _topk(grads, test, k, metric, block_rows, target, ctx.is_main, verify)
        else:
            summary = _detect(
                grads,
                detector,
                sample_size,
                seed,
                budget,
                preconditioner,
                block_rows,
                target,
                ctx.is_main,
                verify,
            )
        D.barrier()
        summary.update(
            world_size=ctx.world_size, seconds=time.perf_counter() - start, is_main=ctx.is_main
        )
        return summary


def _output(out: str | None, default: str, topk: bool) -> str:
    """The output path, checked before any work: suffix and an existing folder."""
    target = out or default
    allowed = (".npz",) if topk else (".csv", ".npy")
    if Path(target).suffix not in allowed:
        raise GradsiftError(
            f"--out {target}: {'top-k' if topk else 'scores'} are written as "
            f"{' or '.join(allowed)}; change the file name"
        )
    if not Path(target).parent.is_dir():
        raise GradsiftError(f"--out {target}: the folder {Path(target).parent} does not exist")
    return target


def open_store(path: str | Path, verify: Verify = "full") -> GradientStore:
    """Open a finished store on every rank; only rank 0 hashes (``verify="full"``), the
    others check sizes and headers, then all ranks agree (any failure fails all).

    Raises:
        StoreError: not a store directory, an incomplete manifest, a partial or
            corrupted store (the message says what to do).
    """
    mine: Verify = verify if D.info().is_main or not is_full(verify) else "header"
    store, error = None, None
    try:
        store = _open_one(Path(path), mine)
    except Exception as err:  # every rank must reach agree(), whatever went wrong
        error = err
    D.agree(error)
    return store  # type: ignore[return-value]


def _open_one(path: Path, verify: Verify) -> GradientStore:
    if path.exists() and not path.is_dir():
        raise StoreError(
            f"{path} is a file, not a gradient store; give the folder `gradsift extract` wrote"
        )
    try:
        return GradientStore.open(path, verify=verify)
    except (KeyError, TypeError) as err:
        raise StoreError(
            f"the manifest of {path} is incomplete or from another version ({err!r} missing or "
            "wrong); re-run the extraction with --overwrite"
        ) from None


def _load_matrix(path: str, verify: Verify) -> np.ndarray | GradientStore:
    p = Path(path)
    if p.is_dir():
        return open_store(p, verify)
    if p.suffix != ".npy" or not p.exists():
        raise GradsiftError(
            f"{path} is neither a gradient store directory nor an existing .npy file"
        )
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise GradsiftError(f"cannot read {path} as a .npy array ({err})") from None


def _write_atomically(target: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` next to ``target``, then rename: no partial output on failure."""
    path = Path(target)
    tmp = str(path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}"))
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _topk(
    grads: GradientStore,
    test: str,
    k: int,
    metric: str,
    block_rows: int | None,
    target: str,
    main: bool,
    verify: Verify,
) -> dict[str, Any]:
    source = _load_matrix(test, verify)
    if isinstance(source, GradientStore):
        check_compatible(grads, source)
    matrix = source.load() if isinstance(source, GradientStore) else source
    helpful, harmful = distributed_topk(grads, matrix, k, metric, block_rows)  # type: ignore[arg-type]
    hv, hi = helpful.result()
    lv, li = harmful.result()
    if main:
        arrays = dict(helpful_values=hv, helpful_indices=hi, harmful_values=lv, harmful_indices=li)
        _write_atomically(target, lambda tmp: np.savez(tmp, **arrays))
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
    target: str,
    main: bool,
    verify: Verify,
) -> dict[str, Any]:
    from gradsift.detect.result import DetectionResult

    if detector.replace("_", "-") == "self-influence":
        p = _load_matrix(preconditioner, verify) if preconditioner else None
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
    if main:
        if target.endswith(".npy"):
            _write_atomically(target, lambda tmp: np.save(tmp, scores))
        else:
            frame = result.to_frame()
            frame["rank"] += 1  # 1-based for people: 1 = most suspicious
            _write_atomically(target, lambda tmp: frame.to_csv(tmp, index=False))
    return {"mode": "detect", **result.summary(), "out": target}
