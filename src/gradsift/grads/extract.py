"""Per-sample gradients of a whole data set, into a resumable :class:`GradientStore`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from gradsift.errors import GradsiftError
from gradsift.grads.computer import GradientComputer, Method
from gradsift.grads.kronecker import FactoredProjector
from gradsift.grads.projection import ProjectionConfig, Projector
from gradsift.progress import track
from gradsift.store.gradient_store import GradientStore, StoreSettings, model_fingerprint
from gradsift.store.verify import Verify
from gradsift.task import Task


@dataclass(frozen=True)
class ExtractConfig:
    """How gradients are computed and stored (all recorded in the store's manifest)."""

    projection: ProjectionConfig | None = None
    rows_per_shard: int = 4096
    batch_size: int = 256
    method: Method = "auto"
    chunk_size: int = 64
    dtype: str = "float32"
    measurement: bool = False


def as_dataset(data: Dataset | Sequence[Any] | tuple[Any, ...]) -> Dataset:
    """A torch ``Dataset`` from a Dataset, or from a tuple of equally long arrays/tensors."""
    if isinstance(data, Dataset):
        return data
    tensors = [
        torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a for a in data
    ]
    if any(len(t) != len(tensors[0]) for t in tensors):
        raise GradsiftError(f"arrays differ in length: {[len(t) for t in tensors]}")
    return TensorDataset(*tensors)


class Extractor:
    """Per-sample gradients (projected if configured) of ``model`` under ``task``.

    ``compute(batch) -> (rows [B, out_dim] numpy, losses [B] float64 numpy)``; rows are
    float32 (float64 for a float64 model) and cast to ``config.dtype`` by the store.

    With ``ProjectionConfig(kind="kronecker")`` the rows come from
    :class:`~gradsift.grads.kronecker.FactoredProjector` (every tracked parameter must be
    the weight or bias of an ``nn.Linear``/``nn.Conv2d``; the per-sample gradient is never
    formed, so ``method`` must stay ``"auto"``); otherwise from
    :class:`~gradsift.grads.computer.GradientComputer`, then the dense
    :class:`~gradsift.grads.projection.Projector` if one is configured.
    """

    def __init__(
        self, model: nn.Module, task: Task, config: ExtractConfig = ExtractConfig()
    ) -> None:
        self.model, self.task, self.config = model, task, config
        self.computer: GradientComputer | FactoredProjector
        self.projector: Projector | None = None
        if config.projection is not None and config.projection.kind == "kronecker":
            if config.method != "auto":
                raise GradsiftError(
                    f"method {config.method!r} does not apply to the kronecker projection, "
                    "which projects layer inputs and output gradients itself: use method 'auto'"
                )
            self.computer = FactoredProjector(
                model, task, config.projection, config.measurement, config.chunk_size
            )
            self.dim = self.computer.dim
            return
        self.computer = GradientComputer(
            model, task, config.method, config.chunk_size, config.measurement
        )
        if config.projection is not None:
            self.projector = Projector(self.computer.layout, config.projection)
        self.dim = self.projector.out_dim if self.projector else self.computer.dim

    def compute(self, batch: Any, first_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        G, losses = self.computer.compute(batch, first_index)
        if self.projector is not None:
            G = self.projector.project(G)
        return G.detach().cpu().numpy(), losses.detach().cpu().double().numpy()

    def settings(self, n_rows: int, extra: dict[str, Any] | None = None) -> StoreSettings:
        """The store settings of this extraction; a kronecker projection also records its
        per-layer factors (seeds, shapes, sha256) under ``extra["kronecker"]``."""
        if isinstance(self.computer, FactoredProjector):
            extra = {"kronecker": self.computer.manifest(), **(extra or {})}
        return StoreSettings(
            fingerprint=model_fingerprint(self.model),
            tracked=[{"name": b.name, "shape": list(b.shape)} for b in self.computer.layout],
            dim=self.dim,
            n_rows=n_rows,
            rows_per_shard=self.config.rows_per_shard,
            dtype=self.config.dtype,
            projection=self.config.projection.to_dict() if self.config.projection else None,
            extra={
                "task": type(self.task).__qualname__,
                "measurement": self.config.measurement,
                **(extra or {}),
            },
        )


def extract(
    model: nn.Module,
    task: Task,
    data: Dataset | tuple[Any, ...],
    path: str | Path,
    config: ExtractConfig = ExtractConfig(),
    *,
    overwrite: bool = False,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    shards: Iterable[int] | None = None,
    extra: dict[str, Any] | None = None,
    finalize: bool = True,
    on_shard: Callable[[int], None] | None = None,
    verify: Verify = "full",
) -> GradientStore:
    """Write per-sample gradients of every row of ``data`` to a store at ``path``.

    Resumable: re-running the same call after a crash continues where it stopped and
    gives bit-identical files. The shards already written are verified first (file sizes
    and headers, and sha256 unless ``verify="header"``: about 1 s per GB); a corrupted
    one is recomputed, with a warning naming it, the others are kept. ``shards``
    restricts the work to some shard indices. Row *i* of the store is ``data[i]``.

    Only one process writes a store at a time: this call holds the store's writer lock
    (see :mod:`gradsift.store.lock`) and raises :class:`~gradsift.errors.StoreError`,
    naming the other process, when another one holds it.
    """
    dataset = as_dataset(data)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise GradsiftError("the data set is empty: nothing to extract")
    extractor = Extractor(model, task, config)
    wanted = None if shards is None else list(shards)
    with GradientStore.lock(path):
        store = GradientStore.create(path, extractor.settings(n, extra), overwrite=overwrite)
        prepare_resume(store, verify, wanted)
        todo = store.missing_shards() if wanted is None else wanted
        write_shards(store, extractor, dataset, todo, config.batch_size, collate_fn, on_shard)
        if finalize and not store.missing_shards():
            store.finalize()
    return store


def prepare_resume(
    store: GradientStore, verify: Verify = "full", shards: list[int] | None = None
) -> list[int]:
    """Before writing into ``store`` (holding its lock): delete the temporary files of a
    killed writer, verify the written shards (of ``shards``, default all) and discard the
    corrupted ones so they are recomputed; returns those, after warning about them."""
    store.remove_temporaries()
    done = None if shards is None else [s for s in shards if store.shard_done(s)]
    bad = store.corrupted_shards(verify, done)
    if bad:
        store.discard_shards(list(bad))
        reasons = "; ".join(f"shard {s}: {why}" for s, why in list(bad.items())[:5])
        warnings.warn(
            f"{len(bad)} written shard(s) of {store.path} failed verification and are "
            f"recomputed ({reasons})",
            stacklevel=3,
        )
    return sorted(bad)


def write_shards(
    store: GradientStore,
    extractor: Extractor,
    dataset: Dataset,
    shards: Iterable[int],
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    on_shard: Callable[[int], None] | None = None,
) -> list[int]:
    """Compute and write the shards of ``shards`` not yet written; returns those written.

    No lock is taken: the caller holds the store's writer lock (or, in a distributed
    job, rank 0 holds it for every rank)."""
    todo = [s for s in shards if not store.shard_done(s)]
    for shard in track(todo, f"gradients → {store.path.name}", total=len(todo)):
        start, stop = store.shard_range(shard)
        rows, losses = [], []
        for b in range(start, stop, batch_size):
            batch = collate_fn([dataset[i] for i in range(b, min(b + batch_size, stop))])
            g, loss = extractor.compute(batch, first_index=b)
            rows.append(g)
            losses.append(loss)
        store.write_shard(shard, np.concatenate(rows), np.concatenate(losses))
        if on_shard is not None:
            on_shard(shard)
    return todo


def compute_gradients(
    model: nn.Module,
    task: Task,
    data: Dataset | tuple[Any, ...],
    config: ExtractConfig = ExtractConfig(),
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    description: str = "per-sample gradients",
) -> tuple[np.ndarray, np.ndarray]:
    """In-memory variant of :func:`extract` for data that fits: ``(G [n, D] float32, losses [n])``."""
    dataset = as_dataset(data)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise GradsiftError("the data set is empty: nothing to extract")
    extractor = Extractor(model, task, config)
    rows, losses = [], []
    starts = range(0, n, config.batch_size)
    for b in track(starts, description, total=len(starts)):
        batch = collate_fn([dataset[i] for i in range(b, min(b + config.batch_size, n))])
        g, loss = extractor.compute(batch, first_index=b)
        rows.append(g.astype(config.dtype, copy=False))
        losses.append(loss)
    return np.concatenate(rows), np.concatenate(losses)
