"""The on-disk cache of finished training runs, keyed by a hash of everything a run depends on.

Each finished run is one JSON file ``run-<key>.json``, written atomically, so an interrupted
experiment resumes where it stopped; a torn or foreign file is ignored (and retrained).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from gradsift.experiments.datasets import LabeledData
from gradsift.experiments.trimming.recipe import Recipe

__all__ = [
    "CACHE_VERSION",
    "data_fingerprint",
    "default_cache_dir",
    "load_cached",
    "run_key",
    "store",
]

#: Bump when the meaning of a cached run changes.
CACHE_VERSION = 1


def data_fingerprint(data: LabeledData) -> str:
    """SHA-256 over the arrays a run reads (train X / given y, val X / y, test X / clean y)."""
    h = hashlib.sha256()
    for arr in (
        data.train.X,
        data.train.y,
        data.val.X,
        data.val.y,
        data.test.X,
        data.test.y_clean,
    ):
        a = np.ascontiguousarray(arr)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def run_key(recipe: Recipe, seed: int, removed: np.ndarray, data_fp: str) -> str:
    """Cache key of one run: hash of (recipe, seed, removed indices, data, cache version)."""
    payload = {
        "version": CACHE_VERSION,
        "recipe": recipe.to_dict(),
        "seed": int(seed),
        "removed": hashlib.sha256(np.asarray(removed, dtype=np.int64).tobytes()).hexdigest(),
        "n_removed": int(len(removed)),
        "data": data_fp,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"run-{key}.json"


def load_cached(cache_dir: Path | None, key: str) -> dict[str, Any] | None:
    """The cached record of run ``key`` (``None``: no cache, missing, torn or foreign file)."""
    if cache_dir is None:
        return None
    path = _cache_path(cache_dir, key)
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("key") != key or not {"val_accuracy", "test_accuracy"} <= set(record):
        return None
    return record


def store(cache_dir: Path | None, key: str, record: dict[str, Any]) -> None:
    """Write run ``key``'s record atomically (a temporary file, then a rename); no-op without a cache."""
    if cache_dir is None:
        return
    path = _cache_path(cache_dir, key)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, **record}, sort_keys=True))
    os.replace(tmp, path)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gradsift/trim`` (``~/.cache/gradsift/trim`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gradsift" / "trim"
