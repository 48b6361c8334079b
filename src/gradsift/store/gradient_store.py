"""Chunked on-disk gradient store: memory-mapped ``.npy`` shards plus a JSON manifest.

Layout of a store directory::

    manifest.json            settings (fingerprint, tracked, projection, dtype, rows, dim;
                             for a kronecker projection, extra["kronecker"]: the seeding
                             and per-layer shapes, factor seeds and factor sha256)
                             and, once every shard is written, "complete": true
    grads-000000.npy         rows [0, S) of the gradient matrix, [rows, dim]
    loss-000000.npy          the same rows' per-sample losses, [rows] float64
    shard-000000.done.json   written last: row count and sha256 of the gradient bytes
                             (and of the loss bytes)
    writer.lock              held (``flock``) by the one process writing (:mod:`.lock`)

Shard *i* always holds rows ``[i·S, min((i+1)·S, n))``, so any process can write any
shard without coordination (ranks of a distributed job take disjoint shard indices).
Every file is written to a temporary name and renamed atomically, and the done marker
comes last: a shard whose marker exists is complete; anything else is redone on resume.
Opening a store verifies it (:mod:`.verify`): file sizes and ``.npy`` headers always,
sha256 of every shard by default (``verify="header"`` skips the hashing, which reads the
whole store at about 1 GB/s).
Plain ``.npy`` was chosen over zarr because numpy memory-maps it with no extra
dependency, the files are readable by any tool, and one file per shard makes the
atomic-rename protocol trivial.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradsift.errors import StoreError
from gradsift.store.lock import LOCK, WriterLock
from gradsift.store.verify import Verify, check_finite, is_full, shard_problem, short_json

MANIFEST = "manifest.json"
FORMAT = "gradsift-store/1"
DTYPES = ("float16", "float32", "float64")
_TMP = re.compile(r"\.tmp\d+$")


@dataclass
class StoreSettings:
    """Everything that must match for two extractions to be the same store."""

    fingerprint: str
    tracked: list[dict[str, Any]]  # [{"name": str, "shape": [int, ...]}, ...]
    dim: int
    n_rows: int
    rows_per_shard: int = 4096
    dtype: str = "float32"
    #: ``ProjectionConfig.to_dict()``: ``dim``, ``kind``, ``seed`` (+ ``dim_out`` for kronecker)
    projection: dict[str, Any] | None = None
    #: task, measurement and, for a kronecker projection, ``"kronecker"``
    #: (:meth:`gradsift.grads.kronecker.FactoredProjector.manifest`)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise StoreError(f"store dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.n_rows < 1:
            raise StoreError("cannot make a gradient store for an empty data set")
        if self.rows_per_shard < 1 or self.dim < 1:
            raise StoreError("rows_per_shard and dim must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # tuples → lists, as stored


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model class and every state_dict entry (name, shape, dtype, bytes)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(
            t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        )
    return h.hexdigest()[:32]


class GradientStore:
    """A directory of gradient shards. Use :meth:`create` to write, :meth:`open` to read."""

    def __init__(self, path: str | Path, settings: StoreSettings, complete: bool = False) -> None:
        self.path = Path(path)
        self.settings = settings
        self.complete = complete

    # -- creation and opening ---------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | Path, settings: StoreSettings, overwrite: bool = False
    ) -> GradientStore:
        """Start a new store, or resume one written with identical settings.

        A store at ``path`` made with other settings (another model, projection, ...) is
        refused with a message listing the differences, unless ``overwrite`` is set.
        """
        path = Path(path)
        manifest = path / MANIFEST
        if manifest.exists():
            existing = _read_manifest(path)
            old = existing["settings"]
            if old == settings.to_dict():
                return cls(path, settings, complete=existing.get("complete", False))
            if not overwrite:
                diff = {
                    k: (old.get(k), v) for k, v in settings.to_dict().items() if old.get(k) != v
                }
                lines = "; ".join(
                    f"{k}: stored {short_json(a)} vs now {short_json(b)}"
                    for k, (a, b) in diff.items()
                )
                raise StoreError(
                    f"the store at {path} was made with other settings ({lines}). "
                    "Use another path, or overwrite=True (--overwrite) to discard it."
                )
            for entry in path.iterdir():  # the lock file stays: a writer may hold it
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        else:
            _refuse_foreign(path)
        path.mkdir(parents=True, exist_ok=True)
        _write_json(manifest, {"format": FORMAT, "settings": settings.to_dict(), "complete": False})
        return cls(path, settings)

    @staticmethod
    def lock(path: str | Path, role: str = "extraction") -> WriterLock:
        """Take the writer lock of the store directory ``path`` (created if needed); hold
        it while writing. Release it with ``.release()`` or use it as a context manager.

        Raises:
            StoreError: another process holds it (the message names it), or ``path`` is
                a non-empty directory that is not a store.
        """
        path = Path(path)
        if not (path / MANIFEST).exists():
            _refuse_foreign(path)
        return WriterLock(path, role).acquire()

    @classmethod
    def open(cls, path: str | Path, verify: Verify = "full") -> GradientStore:
        """Open a finished store for reading, after checking every shard's file sizes and
        headers and, with ``verify="full"`` (the default), its sha256 (about 1 s per GB;
        ``verify="header"`` skips the hashing for huge stores).

        Raises:
            StoreError: no store, a partial store, or a corrupted shard.
        """
        path = Path(path)
        data = _read_manifest(path)
        store = cls(path, StoreSettings(**data["settings"]), complete=data.get("complete", False))
        missing = store.missing_shards()
        if missing:
            raise StoreError(
                f"the store at {path} is partial: shards {missing[:10]} of {store.n_shards} are "
                "missing. Re-run the same extraction to resume it."
            )
        store.check(verify=verify)
        return store

    # -- geometry ------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return self.settings.n_rows

    @property
    def dim(self) -> int:
        return self.settings.dim

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.settings.rows_per_shard)

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.settings.rows_per_shard
        return start, min(start + self.settings.rows_per_shard, self.n_rows)

    def _file(self, kind: str, shard: int) -> Path:
        suffix = ".done.json" if kind == "shard" else ".npy"
        return self.path / f"{kind}-{shard:06d}{suffix}"

    def shard_done(self, shard: int) -> bool:
        return self._file("shard", shard).exists()

    def missing_shards(self) -> list[int]:
        return [i for i in range(self.n_shards) if not self.shard_done(i)]

    def done_shards(self) -> list[int]:
        return [i for i in range(self.n_shards) if self.shard_done(i)]

    # -- writing --------------------------------------------------------------------------
    def write_shard(self, shard: int, grads: np.ndarray, losses: np.ndarray) -> None:
        """Write shard ``shard`` atomically: grads ``[rows, dim]``, losses ``[rows]``."""
        start, stop = self.shard_range(shard)
        if grads.shape != (stop - start, self.dim) or losses.shape != (stop - start,):
            raise StoreError(
                f"shard {shard} needs grads [{stop - start}, {self.dim}] and losses [{stop - start}], got {grads.shape} and {losses.shape}"
            )
        grads = np.ascontiguousarray(grads, dtype=self.settings.dtype)
        losses = np.ascontiguousarray(losses, dtype=np.float64)
        _atomic_save(self._file("grads", shard), grads)
        _atomic_save(self._file("loss", shard), losses)
        marker = {
            "rows": stop - start,
            "sha256": hashlib.sha256(grads.tobytes()).hexdigest(),
            "loss_sha256": hashlib.sha256(losses.tobytes()).hexdigest(),
        }
        _write_json(self._file("shard", shard), marker)

    def discard_shards(self, shards: list[int]) -> None:
        """Forget written shards (marker first, then data) so an extraction redoes them."""
        for shard in shards:
            for kind in ("shard", "grads", "loss"):
                self._file(kind, shard).unlink(missing_ok=True)

    def remove_temporaries(self) -> None:
        """Delete the temporary files a killed writer left (call it holding the lock)."""
        for leftover in self.path.iterdir():
            if _TMP.search(leftover.name):
                leftover.unlink(missing_ok=True)

    def finalize(self) -> None:
        """Mark the store complete once every shard is written."""
        missing = self.missing_shards()
        if missing:
            raise StoreError(f"cannot finalize: shards {missing[:10]} are missing")
        data = _read_manifest(self.path)
        data["complete"] = True
        _write_json(self.path / MANIFEST, data)
        self.complete = True

    # -- reading --------------------------------------------------------------------------
    def read_shard(self, shard: int, mmap: bool = True) -> np.ndarray:
        """Shard ``shard``'s gradients ``[rows, dim]`` (memory-mapped by default)."""
        if not self.shard_done(shard):
            raise StoreError(f"shard {shard} of {self.path} is not written")
        return np.load(self._file("grads", shard), mmap_mode="r" if mmap else None)

    def shard_blocks(
        self, shard: int, block_rows: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block [r, dim])`` over shard ``shard``, ``r <= block_rows``
        (default: the whole shard), read lazily from the memory map. ``first_row`` is the
        global row index of the block's first row.

        Raises:
            StoreError: a block holds NaN/Inf (naming the global rows).
        """
        block_rows = block_rows or self.settings.rows_per_shard
        start, _ = self.shard_range(shard)
        data = self.read_shard(shard)
        for offset in range(0, len(data), block_rows):
            block = np.asarray(data[offset : offset + block_rows])
            check_finite(block, start + offset, f"the store at {self.path}")
            yield start + offset, block

    def iter_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` over all rows, each block at most ``block_rows`` rows,
        read lazily from the memory-mapped shards (bounded memory); see :meth:`shard_blocks`."""
        for shard in range(self.n_shards):
            yield from self.shard_blocks(shard, block_rows)

    def sample_rows(self, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A seeded uniform sample without replacement: ``(rows int64 [s], X [s, D])``,
        ``s = min(size, n)``, rows sorted, read shard by shard (only the sampled rows)."""
        if size < 1:
            raise StoreError(f"sample size must be >= 1, got {size}")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(self.n_rows, min(size, self.n_rows), replace=False))
        parts = []
        for shard in range(self.n_shards):
            start, stop = self.shard_range(shard)
            local = rows[(rows >= start) & (rows < stop)] - start
            if len(local):
                parts.append(np.asarray(self.read_shard(shard)[local]))
        return rows.astype(np.int64), np.concatenate(parts)

    def load(self) -> np.ndarray:
        """The whole gradient matrix ``[n_rows, dim]`` in memory (small stores only).

        Raises:
            StoreError: a row holds NaN/Inf (naming the global rows).
        """
        matrix = np.concatenate([self.read_shard(i, mmap=False) for i in range(self.n_shards)])
        check_finite(matrix, 0, f"the store at {self.path}")
        return matrix

    def losses(self) -> np.ndarray:
        """Per-sample losses ``[n_rows]`` float64."""
        return np.concatenate([np.load(self._file("loss", i)) for i in range(self.n_shards)])

    def corrupted_shards(
        self, verify: Verify = "full", shards: list[int] | None = None
    ) -> dict[int, str]:
        """``{shard: why}`` for every written shard (of ``shards``, default all) that fails
        verification: sizes and headers always, sha256 too with ``verify="full"``."""
        full = is_full(verify)
        bad = {}
        for shard in self.done_shards() if shards is None else shards:
            start, stop = self.shard_range(shard)
            files = (self._file(kind, shard) for kind in ("grads", "loss", "shard"))
            why = shard_problem(*files, stop - start, self.dim, self.settings.dtype, full)
            if why is not None:
                bad[shard] = why
        return bad

    def check(self, verify: Verify = "full") -> None:
        """Raise :class:`StoreError` if a written shard fails :meth:`corrupted_shards`."""
        bad = self.corrupted_shards(verify)
        if bad:
            first = next(iter(bad))
            raise StoreError(
                f"the store at {self.path} has corrupted shards {sorted(bad)[:10]} "
                f"(shard {first}: {bad[first]}). Re-run the same extraction: it verifies the "
                "shards it resumes and recomputes the corrupted ones."
            )


def _refuse_foreign(path: Path) -> None:
    """Refuse a non-empty directory that is not a store (it may hold the user's files)."""
    if path.exists() and any(p.name != LOCK for p in path.iterdir()):
        raise StoreError(
            f"{path} exists, is not empty and holds no {MANIFEST}; refusing to write there. "
            "Choose an empty or new directory."
        )


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise StoreError(f"no gradient store at {path} ({MANIFEST} missing)") from None
    except json.JSONDecodeError as err:
        raise StoreError(f"the manifest of {path} is corrupted: {err}") from None
    if data.get("format") != FORMAT:
        raise StoreError(f"{path} is not a {FORMAT} store (format {data.get('format')!r})")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
