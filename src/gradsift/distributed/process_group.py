"""torch.distributed plumbing: process group, rank/world, shard assignment, collectives.

gradsift scales out on the engine its users already run: ``torch.distributed``
launched by ``torchrun``. Everything here degrades to a no-op in a plain single
process, so the same code path serves ``python script.py`` and
``torchrun --nproc-per-node N script.py``.

- :func:`init_distributed` joins the process group when the environment says so
  (``torchrun`` sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``…; ``init_method="env://"``)
  or when an explicit ``init_method`` (e.g. ``file:///tmp/x``) is given. The backend is
  chosen automatically (:func:`pick_backend`): ``nccl`` when every local rank has a GPU,
  else ``gloo``; ``GRADSIFT_BACKEND=gloo|nccl`` overrides.
- Work is split by **store shard**: rank *r* of *W* takes ``shards[r::W]``
  (:func:`assign`). Shards are the unit of resumption, so a crashed run resumes by
  re-assigning only the missing shards across the ranks of the new run.
- Collectives move Python objects (pickled numpy arrays) with ``all_gather_object`` /
  ``broadcast_object_list``; they work on gloo (CPU) and nccl (the objects are staged
  through the current CUDA device). Volumes are small: per-rank top-k tables
  ``[n_test, k]`` and per-row score vectors (8 bytes per row), never gradients.
- :func:`agree` turns an exception on any rank into the same :class:`GradsiftError`
  on every rank, instead of leaving the others blocked in the next collective.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from gradsift.errors import GradsiftError
from gradsift.store.kernels import StreamingTopK

Backend = Literal["auto", "gloo", "nccl"]
T = TypeVar("T")

__all__ = [
    "DistInfo",
    "agree",
    "all_gather_objects",
    "assign",
    "barrier",
    "broadcast_object",
    "distributed_session",
    "gather_rows",
    "info",
    "init_distributed",
    "launched_by_torchrun",
    "merge_topk",
    "pick_backend",
    "run_on_main",
    "shutdown",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` in ``[0, world_size)``; ``backend`` is None
    when no process group is active (a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that creates and finalizes stores and writes outputs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is active, so collectives go through the backend
        (also with one rank); False in a plain process, where they are identities."""
        return self.backend is not None


def pick_backend() -> str:
    """The backend for ``backend="auto"``.

    ``GRADSIFT_BACKEND`` (``gloo`` | ``nccl``) wins when set. Otherwise ``"nccl"`` when
    CUDA and nccl are available and every local rank can have its own GPU
    (``LOCAL_WORLD_SIZE <= torch.cuda.device_count()``), else ``"gloo"`` (CPU; also used
    when more processes than GPUs run on a node, which nccl refuses).
    """
    forced = os.environ.get("GRADSIFT_BACKEND", "auto").lower()
    if forced in ("gloo", "nccl"):
        return forced
    if forced != "auto":
        raise GradsiftError(f"GRADSIFT_BACKEND must be auto, gloo or nccl, got {forced!r}")
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if (
        torch.cuda.is_available()
        and dist.is_nccl_available()
        and local_ranks <= torch.cuda.device_count()
    ):
        return "nccl"
    return "gloo"


def launched_by_torchrun() -> bool:
    """True when ``RANK`` and ``WORLD_SIZE`` are set (torchrun, or any env:// launcher)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def info() -> DistInfo:
    """The current process's :class:`DistInfo` (rank 0 of 1 without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        backend=str(dist.get_backend()),
    )


def init_distributed(
    backend: Backend = "auto",
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    timeout_s: float = 1800.0,
) -> DistInfo:
    """Join the process group if this process is part of a distributed job.

    Args:
        backend: ``"auto"`` (:func:`pick_backend`), ``"gloo"`` or ``"nccl"``.
        init_method: rendezvous URL; None means ``env://`` when launched by torchrun and
            no process group otherwise. ``file://`` URLs need ``rank`` and ``world_size``.
        rank, world_size: for explicit (non-torchrun) launches.
        timeout_s: how long a collective waits for a missing rank before failing.

    Returns:
        The :class:`DistInfo` of this process. Already-initialized groups are reused.
    """
    if dist.is_available() and dist.is_initialized():
        return info()
    if init_method is None and not launched_by_torchrun():
        return DistInfo()
    if not dist.is_available():
        raise GradsiftError("this torch build has no torch.distributed; run a single process")
    chosen = pick_backend() if backend == "auto" else backend
    if chosen not in ("gloo", "nccl"):
        raise GradsiftError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    kwargs: dict[str, Any] = {"timeout": timedelta(seconds=timeout_s)}
    if chosen == "nccl":
        if not torch.cuda.is_available():
            raise GradsiftError("backend 'nccl' needs CUDA; use backend='gloo' on CPU")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank or 0)))
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds the rank to its GPU (one GPU per rank)
    if rank is not None:
        kwargs["rank"] = rank
    if world_size is not None:
        kwargs["world_size"] = world_size
    _import_dynamo_first()
    dist.init_process_group(chosen, init_method=init_method or "env://", **kwargs)
    return info()


def _import_dynamo_first() -> None:
    """Import ``torch._dynamo`` before the process group exists.

    ``torch.func.grad`` imports it lazily; imported *after* ``init_process_group`` it
    keeps the gloo process group alive past ``destroy_process_group`` (torch 2.13), and
    the group's worker threads then abort the process at exit ("terminate called without
    an active exception") in about 1 run in 20, after the job has finished its work.
    """
    import torch._dynamo  # noqa: F401


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_session(
    backend: Backend = "auto", init_method: str | None = None, **kwargs: Any
) -> Iterator[DistInfo]:
    """``with distributed_session() as ctx:`` joins the group (if launched distributed)
    and leaves it on exit, unless the caller had already initialized one."""
    owned = not (dist.is_available() and dist.is_initialized())
    ctx = init_distributed(backend, init_method, **kwargs)
    try:
        yield ctx
    finally:
        if owned:
            shutdown()


# --------------------------------------------------------------------------- collectives


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if info().distributed:
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (pickled; identity in a single process)."""
    if not info().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: T) -> list[T]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    ctx = info()
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def agree(error: BaseException | None) -> None:
    """Collective error check: every rank passes its exception (or None).

    If any rank failed, every rank raises a :class:`GradsiftError` naming the failed
    ranks and their messages (a single process re-raises its own exception); this keeps healthy ranks from blocking in a later
    collective. It is also a barrier.
    """
    if not info().distributed:
        if error is not None:
            raise error
        return
    message = None if error is None else f"{type(error).__name__}: {error}"
    failed = [(r, m) for r, m in enumerate(all_gather_objects(message)) if m is not None]
    if not failed:
        return
    text = "; ".join(f"rank {r}: {m}" for r, m in failed)
    raise GradsiftError(f"the distributed job failed on {len(failed)} rank(s) — {text}") from error


def run_on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and broadcast its result (so this is also a barrier).

    An exception in ``fn`` is raised on every rank: unchanged on rank 0, as a
    :class:`GradsiftError` carrying its message on the others.
    """
    ctx = info()
    result: Any = None
    failure: Exception | None = None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as err:
            if not ctx.distributed:
                raise
            failure = err
    message = None if failure is None else f"{type(failure).__name__}: {failure}"
    ok, payload = broadcast_object((message is None, result if message is None else message))
    if failure is not None:
        raise failure
    if not ok:
        raise GradsiftError(f"rank 0 failed — {payload}")
    return payload


# --------------------------------------------------------------------------- work split


def assign(
    items: Sequence[int], rank: int | None = None, world_size: int | None = None
) -> list[int]:
    """This rank's share of ``items`` (e.g. shard indices): ``items[rank::world_size]``.

    Round-robin keeps the shares within one item of each other and, for a store whose
    shards are all the same size, balanced in rows.
    """
    ctx = info()
    rank = ctx.rank if rank is None else rank
    world_size = ctx.world_size if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise GradsiftError(f"rank {rank} is outside a world of size {world_size}")
    return list(items)[rank::world_size]


def merge_topk(topk: StreamingTopK) -> StreamingTopK:
    """Merge per-rank partial top-k results (over disjoint train rows) on every rank.

    Each rank sends its ``values [n_test, k']`` float64 and ``indices [n_test, k']``
    int64, i.e. ``16 · n_test · k`` bytes, and receives those of every other rank.
    The merge keeps the same tie order as a single pass (lower train index first), so
    the result equals the single-process :func:`gradsift.store.kernels.pairwise_topk`.
    """
    parts = all_gather_objects((topk.values.numpy(), topk.indices.numpy()))
    merged = StreamingTopK(topk.n_test, topk.k, topk.largest)
    for values, indices in parts:
        partial = StreamingTopK(topk.n_test, topk.k, topk.largest)
        partial.values = torch.from_numpy(np.asarray(values))
        partial.indices = torch.from_numpy(np.asarray(indices))
        merged.merge(partial)
    return merged


def gather_rows(n_rows: int, pieces: Sequence[tuple[int, np.ndarray]]) -> np.ndarray:
    """Assemble a per-row array ``[n_rows, ...]`` from every rank's ``(first_row, values)``
    pieces (disjoint row ranges covering ``[0, n_rows)`` together); result on every rank.

    Communication: each rank receives every row once (``8 · n_rows`` bytes for float64
    scores). Raises :class:`GradsiftError` if rows are missing or covered twice.
    """
    everything = [p for rank_pieces in all_gather_objects(list(pieces)) for p in rank_pieces]
    if not everything:
        raise GradsiftError("no rows were scored on any rank")
    first = np.asarray(everything[0][1])
    out = np.empty((n_rows, *first.shape[1:]), dtype=first.dtype)
    seen = np.zeros(n_rows, dtype=np.int32)
    for start, values in everything:
        values = np.asarray(values)
        out[start : start + len(values)] = values
        seen[start : start + len(values)] += 1
    if not (seen == 1).all():
        bad = np.flatnonzero(seen != 1)
        raise GradsiftError(
            f"rows {bad[:10].tolist()} were scored {seen[bad[0]]} times instead of once; "
            "the ranks disagree on the shard assignment (same store and world size?)"
        )
    return out
