"""Sharded gradient extraction: every rank of a ``torchrun`` job writes its own shards.

Protocol (one :class:`~gradsift.store.gradient_store.GradientStore`, any number of ranks and nodes
sharing its directory):

1. Every rank builds the store settings from its model; ranks whose settings differ
   from rank 0's (another model fingerprint, projection, …) stop the job with a message.
2. Rank 0 takes the store's writer lock for the whole job (another job or ``extract``
   writing the same store stops this one at once, with a message naming it; the ranks
   of one job never lock each other out), creates (or re-opens, or with ``overwrite``
   replaces) the manifest, removes temporary files a crashed run left behind, verifies
   the written shards (sizes, headers, sha256 unless ``verify="header"``), discards the
   corrupted ones, and lists the **missing** shards. The list is broadcast (this is also
   the barrier: no rank writes before the manifest exists).
3. Rank *r* of *W* writes ``missing[r::W]`` with :func:`gradsift.grads.extract.write_shards`.
   Shard *i* always holds rows ``[i·S, (i+1)·S)`` and is written atomically with its
   done marker last, so a shard is written by exactly one rank and a crashed rank
   leaves no half shard.
4. All ranks report success or failure (a collective); rank 0 then marks the manifest
   ``complete``, releases the lock, and everyone returns the finished store.

Resuming after a crash of any rank is re-running the same command: finished shards that
verify are kept (never rewritten, never duplicated), corrupted ones are recomputed, and
the missing ones are spread over the ranks of the new run, whatever its size. The result
is bit-identical to a single-process extraction because each shard depends only on its
own rows.
"""

from __future__ import annotations

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
from gradsift.grads.extract import (
    ExtractConfig,
    Extractor,
    as_dataset,
    prepare_resume,
    write_shards,
)
from gradsift.store.gradient_store import GradientStore, StoreSettings
from gradsift.store.lock import WriterLock
from gradsift.store.verify import Verify
from gradsift.task import Task

__all__ = ["ShardedExtraction", "on_model_device", "sharded_extract"]


@dataclass
class ShardedExtraction:
    """What one rank did in :func:`sharded_extract`.

    Attributes:
        store: the finished store (``store.complete`` is True on every rank).
        written: shard indices this rank wrote in this run.
        resumed: shards that were already complete, and verified, when the run started.
        repaired: shards that were written but failed verification, so were recomputed.
        rank, world_size: this process's place in the job.
        seconds: wall time of this rank, from start to the finished store.
    """

    store: GradientStore
    written: list[int]
    resumed: int
    rank: int
    world_size: int
    seconds: float
    repaired: list[int]


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
    verify: Verify = "full",
) -> ShardedExtraction:
    """Per-sample gradients of every row of ``data`` into the store at ``path``, split over
    the ranks of the current ``torch.distributed`` job (a plain process is a job of one).

    Call it on every rank with the same arguments. The process group is joined
    automatically under ``torchrun`` (gloo on CPU, nccl with one GPU per rank) and left
    open for the caller. Batches are moved to the model's device (put the model on
    ``cuda:LOCAL_RANK`` for GPUs). Row *i* of the store is ``data[i]``; rows are
    ``[dim]`` in ``config.dtype`` (float32 by default) and losses float64, exactly as
    :func:`gradsift.grads.extract.extract` writes them. ``verify`` says how the shards
    of an earlier run are checked before they are resumed (see
    :func:`gradsift.grads.extract.prepare_resume`).

    ``config.projection`` may be any kind, ``"kronecker"`` included (the factored
    projection of :class:`gradsift.grads.kronecker.FactoredProjector`): its per-layer
    factors depend only on the seed and the layer names, so every rank draws the same
    matrices; their seeds and sha256 are part of the settings that step 1 compares.

    Raises:
        GradsiftError: on every rank, when any rank fails (settings differ between
            ranks, the store holds another extraction, another process is writing it,
            a sample is bad, ...). A single process gets the original
            :class:`~gradsift.errors.StoreError`.
    """
    start = time.perf_counter()
    ctx = D.init_distributed()
    dataset = as_dataset(data)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise GradsiftError("the data set is empty: nothing to extract")
    collate_fn = on_model_device(collate_fn, model)
    extractor = Extractor(model, task, config)
    settings = extractor.settings(n, extra)
    _check_same_settings(settings)
    lock: list[WriterLock] = []  # rank 0's, held for the whole job
    role = f"extraction job of {ctx.world_size} rank(s), lock held by rank 0"

    def prepare() -> tuple[list[int], list[int]]:
        lock.append(GradientStore.lock(path, role))
        return _prepare(Path(path), settings, overwrite, verify)

    try:
        missing, repaired = D.run_on_main(prepare)
        mine = D.assign(missing)
        error: BaseException | None = None
        try:
            store = GradientStore.create(path, settings)
            write_shards(store, extractor, dataset, mine, config.batch_size, collate_fn, on_shard)
        except Exception as err:  # reported to every rank by agree()
            error = err
        D.agree(error)
        D.run_on_main(lambda: GradientStore.create(path, settings).finalize())
    finally:
        for held in lock:
            held.release()
    store = GradientStore.open(path, verify="header")  # just verified and written
    resumed = store.n_shards - len(missing)
    return ShardedExtraction(
        store, mine, resumed, ctx.rank, ctx.world_size, time.perf_counter() - start, repaired
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


def _prepare(
    path: Path, settings: StoreSettings, overwrite: bool, verify: Verify
) -> tuple[list[int], list[int]]:
    """Rank 0, holding the lock: create/re-open the store, drop stale temporaries and
    corrupted shards; returns ``(missing shards, repaired shards)``."""
    store = GradientStore.create(path, settings, overwrite=overwrite)
    repaired = prepare_resume(store, verify)
    return store.missing_shards(), repaired
