"""Integrity and compatibility checks of gradient stores.

* :func:`shard_problem`: does one written shard match its done marker? Always checked:
  both ``.npy`` files exist, their headers hold the expected shape and dtype, and their
  sizes are exactly header + data. With ``full=True`` the sha256 of the gradient bytes
  (and, for markers that record it, of the loss bytes) is compared with the marker too.
  Hashing reads every byte: about 0.9-1.2 GB/s from the page cache on a 2-core
  development machine (1 GiB store: ~1 s); from a cold disk the disk's read rate bounds
  it. Header checks read a few hundred bytes per shard.
* :func:`check_finite`: NaN/Inf rows of a block, reported by their **global** row index.

Whether a test store may be scored against a train store is :mod:`.compatible`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gradsift.errors import StoreError

Verify = Literal["full", "header"] | bool
"""``"full"`` (or True): sizes, headers and sha256; ``"header"`` (or False): sizes and
headers only, for stores too large to hash on every open."""

_CHUNK = 16 << 20  # bytes hashed per read


def is_full(verify: Verify) -> bool:
    """True for ``"full"``/True, False for ``"header"``/False; anything else is refused."""
    if verify in ("full", True):
        return True
    if verify in ("header", False):
        return False
    raise StoreError(f"verify must be 'full' or 'header' (or a bool), got {verify!r}")


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data_offset)`` of an ``.npy`` file, header only."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        return tuple(shape), dtype, fortran, fh.tell()


def data_sha256(path: Path, offset: int) -> str:
    """sha256 of the bytes of ``path`` from ``offset`` on (the array data of an ``.npy``),
    read in 16 MiB chunks: equal to ``sha256(array.tobytes())`` for a C-ordered array."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        while n := fh.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def shard_problem(
    grads: Path, loss: Path, marker: Path, rows: int, dim: int, dtype: str, full: bool
) -> str | None:
    """Why a written shard is bad (one short phrase), or None when it checks out.

    ``grads`` must hold ``[rows, dim]`` of ``dtype``, ``loss`` ``[rows]`` float64, both
    C-ordered with no byte missing or extra; with ``full``, their data must hash to the
    digests in ``marker`` (``{"rows", "sha256"[, "loss_sha256"]}``).
    """
    try:
        record = json.loads(marker.read_text())
        if record.get("rows") != rows:
            return f"its done marker records {record.get('rows')} rows, not {rows}"
        offsets = {}
        for path, shape, kind in ((grads, (rows, dim), dtype), (loss, (rows,), "float64")):
            got_shape, got_dtype, fortran, offset = npy_header(path)
            if got_shape != shape or str(got_dtype) != kind or fortran:
                return f"{path.name} holds {got_dtype} {list(got_shape)}, not {kind} {list(shape)}"
            size, expected = path.stat().st_size, offset + got_dtype.itemsize * int(np.prod(shape))
            if size != expected:
                return f"{path.name} is {size} bytes, its header needs {expected}"
            offsets[path] = offset
        if full:
            if data_sha256(grads, offsets[grads]) != record.get("sha256"):
                return f"the sha256 of {grads.name} differs from its done marker"
            if (
                "loss_sha256" in record
                and data_sha256(loss, offsets[loss]) != record["loss_sha256"]
            ):
                return f"the sha256 of {loss.name} differs from its done marker"
    except FileNotFoundError as err:
        return f"{Path(err.filename).name} is missing"
    except (OSError, ValueError, json.JSONDecodeError) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    return None


def check_finite(block: np.ndarray, first_row: int, where: str) -> None:
    """Raise :class:`StoreError` naming the global rows of ``block`` (rows
    ``first_row …``) that hold NaN/Inf; ``where`` names the store in the message."""
    finite = np.isfinite(block)
    if finite.all():
        return
    bad = first_row + np.flatnonzero(~finite.reshape(len(block), -1).all(axis=1))
    rows = ", ".join(map(str, bad[:10].tolist())) + (
        f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""
    )
    raise StoreError(
        f"{where} holds NaN/Inf in rows {rows} (global row indices). Re-extract the store "
        "(delete it, or run the extraction again with --overwrite)."
    )


def short_json(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
