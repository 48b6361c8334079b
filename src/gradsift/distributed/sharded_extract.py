"""Sharded gradient extraction: every rank of a ``torchrun`` job writes its own shards.

Protocol (one :class:`~gradsift.store.gradient_store.GradientStore`, any number of ranks and nodes
sharing its directory):

1. Every rank builds the store settings from its model; ranks whose settings differ
   from rank 0's (another model fingerprint, projection, …) stop the job with a message.
2. Rank 0 creates (or re-opens, or with ``overwrite`` replaces) the manifest, checks
   the written shards, removes temporary files a crashed run left behind, and lists
   the **missing** shards. The list is broadcast (this is also the barrier: no rank
   writes before the manifest exists).
3. Rank *r* of *W* writes ``missing[r::W]`` with :func:`gradsift.grads.extract.extract`
   (``finalize=False``). Shard *i* always holds rows ``[i·S, (i+1)·S)`` and is written
   atomically with its done marker last, so a shard is written by exactly one rank and
   a crashed rank leaves no half shard.
4. All ranks report success or failure (a collective); rank 0 then marks the manifest
   ``complete`` and everyone returns the finished store.

Resuming after a crash of any rank is re-running the same command: finished shards are
kept (never rewritten, never duplicated) and the missing ones are spread over the ranks
of the new run, whatever its size. The result is bit-identical to a single-process
extraction because each shard depends only on its own rows.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map
from torch.utils.data import Dataset, default_collate

from gradsift.distributed import process_group as D
from gradsift.errors import GradsiftError
from gradsift.grads.extract import ExtractConfig, Extractor, as_dataset, extract
from gradsift.store.gradient_store import GradientStore, StoreSettings
from gradsift.task import Task

__all__ = ["ShardedExtraction", "on_model_device", "sharded_extract"]

_TMP = re.compile(r"\.tmp\d+$")


@dataclass
class ShardedExtraction:
    """What one rank did in :func:`sharded_extract`.

    Attributes:
        store: the finished store (``store.complete`` is True on every rank).
        written: shard indices this rank wrote in this run.
        resumed: shards that were already complete when the run started (all ranks).
        rank, world_size: this process's place in the job.
        seconds: wall time of this rank, from start to the finished store.
    """

    store: GradientStore
    written: list[int]
    resumed: int
    rank: int
    world_size: int
    seconds: float


def sharded_extract(
    model: nn.Module,
    task: Task,
    data: Dataset | tuple[Any, ...],
    path: str | Path,
    config: ExtractConfig = ExtractConfig(),
    *,
    overwrite: bool = False,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    extra: dict[str, Any] | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> ShardedExtraction:
    """Per-sample gradients of every row of ``data`` into the store at ``path``, split over
    the ranks of the current ``torch.distributed`` job (a plain process is a job of one).

    Call it on every rank with the same arguments. The process group is joined
    automatically under ``torchrun`` (gloo on CPU, nccl with one GPU per rank) and left
    open for the caller. Batches are moved to the model's device (put the model on
    ``cuda:LOCAL_RANK`` for GPUs). Row *i* of the store is ``data[i]``; rows are
    ``[dim]`` in ``config.dtype`` (float32 by default) and losses float64, exactly as
    :func:`gradsift.grads.extract.extract` writes them.

    Raises:
        GradsiftError: on every rank, when any rank fails (settings differ between
            ranks, the store holds another extraction, a sample is bad, ...).
    """
    start = time.perf_counter()
    ctx = D.init_distributed()
    dataset = as_dataset(data)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise GradsiftError("the data set is empty: nothing to extract")
    collate_fn = on_model_device(collate_fn, model)
    settings = Extractor(model, task, config).settings(n, extra)
    _check_same_settings(settings)
    missing, done = D.run_on_main(lambda: _prepare(Path(path), settings, overwrite))
    mine = D.assign(missing)
    error: BaseException | None = None
    try:
        extract(
            model,
            task,
            dataset,
            path,
            config,
            collate_fn=collate_fn,
            shards=mine,
            extra=extra,
            finalize=False,
            on_shard=on_shard,
        )
    except Exception as err:  # reported to every rank by agree()
        error = err
    D.agree(error)
    D.run_on_main(lambda: GradientStore.create(path, settings).finalize())
    store = GradientStore.open(path)
    return ShardedExtraction(
        store, mine, done, ctx.rank, ctx.world_size, time.perf_counter() - start
    )


def on_model_device(
    collate_fn: Callable[[list[Any]], Any], model: nn.Module
) -> Callable[[list[Any]], Any]:
    """``collate_fn`` followed by a move of every tensor to the model's device (identity
    for a CPU model), so a model placed on ``cuda:LOCAL_RANK`` gets batches there."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cpu":
        return collate_fn

    def collate(items: list[Any]) -> Any:
        return tree_map(
            lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, collate_fn(items)
        )

    return collate


def _check_same_settings(settings: StoreSettings) -> None:
    """Every rank must extract the same thing (same model weights, projection, rows)."""
    mine = settings.to_dict()
    reference = D.broadcast_object(mine)
    differ = sorted(k for k in mine if mine[k] != reference.get(k))
    verdicts = D.all_gather_objects(differ)
    bad = {rank: keys for rank, keys in enumerate(verdicts) if keys}
    if bad:
        raise GradsiftError(
            f"ranks {sorted(bad)} disagree with rank 0 on {sorted({k for v in bad.values() for k in v})}. "
            "Every rank must build the same model and data: seed the factory, or load the "
            "weights from a file (e.g. --checkpoint)."
        )


def _prepare(path: Path, settings: StoreSettings, overwrite: bool) -> tuple[list[int], int]:
    """Rank 0: create/re-open the store, drop stale temporaries, list missing shards."""
    store = GradientStore.create(path, settings, overwrite=overwrite)
    store.check()
    for leftover in path.iterdir():
        if _TMP.search(leftover.name):
            leftover.unlink(missing_ok=True)
    missing = store.missing_shards()
    return missing, store.n_shards - len(missing)
