"""Chunked on-disk gradient store: memory-mapped ``.npy`` shards plus a JSON manifest.

Layout of a store directory::

    manifest.json            settings (fingerprint, tracked, projection, dtype, rows, dim)
                             and, once every shard is written, "complete": true
    grads-000000.npy         rows [0, S) of the gradient matrix, [rows, dim]
    loss-000000.npy          the same rows' per-sample losses, [rows] float64
    shard-000000.done.json   written last: row count and sha256 of the gradient bytes

Shard *i* always holds rows ``[i·S, min((i+1)·S, n))``, so any process can write any
shard without coordination (ranks of a distributed job take disjoint shard indices).
Every file is written to a temporary name and renamed atomically, and the done marker
comes last: a shard whose marker exists is complete; anything else is redone on resume.
Plain ``.npy`` was chosen over zarr because numpy memory-maps it with no extra
dependency, the files are readable by any tool, and one file per shard makes the
atomic-rename protocol trivial.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradsift.errors import StoreError

MANIFEST = "manifest.json"
FORMAT = "gradsift-store/1"
DTYPES = ("float16", "float32", "float64")


@dataclass
class StoreSettings:
    """Everything that must match for two extractions to be the same store."""

    fingerprint: str
    tracked: list[dict[str, Any]]  # [{"name": str, "shape": [int, ...]}, ...]
    dim: int
    n_rows: int
    rows_per_shard: int = 4096
    dtype: str = "float32"
    projection: dict[str, Any] | None = None
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
                    f"{k}: stored {_short(a)} vs now {_short(b)}" for k, (a, b) in diff.items()
                )
                raise StoreError(
                    f"the store at {path} was made with other settings ({lines}). "
                    "Use another path, or overwrite=True (--overwrite) to discard it."
                )
            shutil.rmtree(path)
        elif path.exists() and any(path.iterdir()):
            raise StoreError(
                f"{path} exists, is not empty and holds no {MANIFEST}; refusing to write there"
            )
        path.mkdir(parents=True, exist_ok=True)
        _write_json(manifest, {"format": FORMAT, "settings": settings.to_dict(), "complete": False})
        return cls(path, settings)

    @classmethod
    def open(cls, path: str | Path, verify: bool = False) -> GradientStore:
        """Open a finished store for reading; ``verify`` re-hashes every shard."""
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

    # -- writing --------------------------------------------------------------------------
    def write_shard(self, shard: int, grads: np.ndarray, losses: np.ndarray) -> None:
        """Write shard ``shard`` atomically: grads ``[rows, dim]``, losses ``[rows]``."""
        start, stop = self.shard_range(shard)
        if grads.shape != (stop - start, self.dim) or losses.shape != (stop - start,):
            raise StoreError(
                f"shard {shard} needs grads [{stop - start}, {self.dim}] and losses [{stop - start}], got {grads.shape} and {losses.shape}"
            )
        grads = np.ascontiguousarray(grads, dtype=self.settings.dtype)
        _atomic_save(self._file("grads", shard), grads)
        _atomic_save(self._file("loss", shard), np.asarray(losses, dtype=np.float64))
        marker = {"rows": stop - start, "sha256": hashlib.sha256(grads.tobytes()).hexdigest()}
        _write_json(self._file("shard", shard), marker)

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

    def iter_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` over all rows, each block at most ``block_rows`` rows,
        read lazily from the memory-mapped shards (bounded memory)."""
        block_rows = block_rows or self.settings.rows_per_shard
        for shard in range(self.n_shards):
            start, _ = self.shard_range(shard)
            data = self.read_shard(shard)
            for offset in range(0, len(data), block_rows):
                yield start + offset, np.asarray(data[offset : offset + block_rows])

    def load(self) -> np.ndarray:
        """The whole gradient matrix ``[n_rows, dim]`` in memory (small stores only)."""
        return np.concatenate([self.read_shard(i, mmap=False) for i in range(self.n_shards)])

    def losses(self) -> np.ndarray:
        """Per-sample losses ``[n_rows]`` float64."""
        return np.concatenate([np.load(self._file("loss", i)) for i in range(self.n_shards)])

    def check(self, verify: bool = False) -> None:
        """Check every written shard's shape (and, with ``verify``, its sha256)."""
        bad = []
        for shard in range(self.n_shards):
            if not self.shard_done(shard):
                continue
            start, stop = self.shard_range(shard)
            try:
                grads = self.read_shard(shard)
                ok = (
                    grads.shape == (stop - start, self.dim)
                    and str(grads.dtype) == self.settings.dtype
                )
                if ok and verify:
                    marker = json.loads(self._file("shard", shard).read_text())
                    ok = (
                        hashlib.sha256(np.ascontiguousarray(grads).tobytes()).hexdigest()
                        == marker["sha256"]
                    )
                ok = ok and np.load(self._file("loss", shard), mmap_mode="r").shape == (
                    stop - start,
                )
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                ok = False
            if not ok:
                bad.append(shard)
        if bad:
            raise StoreError(
                f"the store at {self.path} has corrupted shards {bad[:10]}. Delete their "
                "shard-*.done.json markers and re-run the extraction to rewrite them."
            )


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
