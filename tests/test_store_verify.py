"""Stores verify themselves (on open and on resume), report NaN rows globally, refuse a
mismatched test store, and admit one writer at a time (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gradsift.distributed.sharded_extract import sharded_extract
from gradsift.errors import StoreError
from gradsift.grads.extract import ExtractConfig, extract
from gradsift.store.compatible import check_compatible
from gradsift.store.gradient_store import GradientStore, StoreSettings
from gradsift.store.lock import LOCK
from gradsift.task import ClassificationTask

JOB = Path(__file__).parent / "jobs" / "extract_job.py"
sys.path.insert(0, str(JOB.parent))
from extract_job import build  # noqa: E402  (the job's deterministic model and data)

CONFIG = ExtractConfig(rows_per_shard=8, batch_size=5)


def store_of(path: Path, rows: int = 25, dim: int = 6, seed: int = 0, **kw) -> np.ndarray:
    """A finished store of random rows (shards of 10); returns its matrix."""
    settings = dict(fingerprint="abc", tracked=[{"name": "w", "shape": [dim]}], dim=dim)
    settings.update(n_rows=rows, rows_per_shard=10, **kw)
    store = GradientStore.create(path, StoreSettings(**settings))
    G = np.random.default_rng(seed).standard_normal((rows, dim)).astype(store.settings.dtype)
    for shard in range(store.n_shards):
        a, b = store.shard_range(shard)
        store.write_shard(shard, G[a:b], np.arange(a, b, dtype=np.float64))
    store.finalize()
    return G


def rewrite(path: Path, change) -> None:
    """Load an ``.npy`` file, change its array in place, save it back (same size)."""
    array = np.load(path)
    change(array)
    np.save(path, array)


# ------------------------------------------------------------------ verify on open


def test_open_verifies_values_sizes_and_headers(tmp_path):
    store_of(tmp_path / "s")
    shard = tmp_path / "s" / "grads-000001.npy"
    size = shard.stat().st_size

    def scale_row(a):
        a[3] *= 1000.0  # the corruption: a row made huge, the file unchanged in size

    rewrite(shard, scale_row)
    assert shard.stat().st_size == size
    with pytest.raises(StoreError, match=r"corrupted shards \[1\] .*sha256 of grads-000001"):
        GradientStore.open(tmp_path / "s")
    assert GradientStore.open(tmp_path / "s", verify="header").n_rows == 25  # hashing skipped

    store_of(tmp_path / "l")
    rewrite(tmp_path / "l" / "loss-000002.npy", lambda a: a.__setitem__(0, 99.0))
    with pytest.raises(StoreError, match=r"\[2\] .*sha256 of loss-000002"):
        GradientStore.open(tmp_path / "l")

    store_of(tmp_path / "d")
    np.save(tmp_path / "d" / "grads-000000.npy", np.zeros((10, 6)))  # float64, not float32
    with pytest.raises(StoreError, match=r"\[0\] .*holds float64 \[10, 6\], not float32"):
        GradientStore.open(tmp_path / "d", verify="header")

    store_of(tmp_path / "t")
    loss = tmp_path / "t" / "loss-000002.npy"
    loss.write_bytes(loss.read_bytes()[:-3])
    with pytest.raises(StoreError, match=r"\[2\] .*loss-000002.npy is \d+ bytes"):
        GradientStore.open(tmp_path / "t", verify="header")
    (tmp_path / "t" / "grads-000001.npy").unlink()
    with pytest.raises(StoreError, match=r"\[1, 2\] .*grads-000001.npy is missing"):
        GradientStore.open(tmp_path / "t", verify="header")
    with pytest.raises(StoreError, match="verify must be"):
        GradientStore.open(tmp_path / "s", verify="fast")  # type: ignore[arg-type]


def test_cli_score_refuses_a_corrupted_store(tmp_path):
    from typer.testing import CliRunner

    from gradsift.cli import app

    store_of(tmp_path / "s")
    rewrite(tmp_path / "s" / "grads-000001.npy", lambda a: a.__imul__(3.0))
    result = CliRunner().invoke(app, ["score", str(tmp_path / "s"), "--detector=l2"])
    assert result.exit_code != 0 and "corrupted shards [1]" in " ".join(result.output.split())


# ------------------------------------------------------------------ NaN rows


def test_nan_is_reported_by_its_global_row(tmp_path):
    G = store_of(tmp_path / "s")
    rewrite(tmp_path / "s" / "grads-000002.npy", lambda a: a.__setitem__((3, 1), np.nan))
    store = GradientStore.open(tmp_path / "s", verify="header")
    G[20 + 3, 1] = np.nan  # shard 2 starts at row 20
    assert np.flatnonzero(~np.isfinite(G).all(axis=1)).tolist() == [23]
    with pytest.raises(StoreError, match=r"NaN/Inf in rows 23 \(global"):
        list(store.iter_blocks(block_rows=4))
    with pytest.raises(StoreError, match=r"rows 23 \(global"):
        list(store.shard_blocks(2))
    with pytest.raises(StoreError, match=r"rows 23 \(global"):
        store.load()
    clean = [b for s in (0, 1) for _, b in store.shard_blocks(s, block_rows=3)]
    assert np.array_equal(np.concatenate(clean), G[:20])  # rows before it read as stored


# ------------------------------------------------------------------ train vs test


def test_check_compatible_lists_every_difference(tmp_path):
    projection = {"dim": 6, "kind": "gaussian", "seed": 0}
    store_of(tmp_path / "train", projection=projection)
    store_of(tmp_path / "ok", rows=7, dtype="float16", projection=projection)
    train = GradientStore.open(tmp_path / "train")
    check_compatible(train, GradientStore.open(tmp_path / "ok"))  # rows, dtype may differ
    store_of(tmp_path / "seed", projection={**projection, "seed": 1})
    with pytest.raises(
        StoreError, match=r"projection: train .*\"seed\": 0.* vs test .*\"seed\": 1"
    ):
        check_compatible(train, GradientStore.open(tmp_path / "seed"))
    store_of(tmp_path / "other", fingerprint="zzz", projection=None)
    with pytest.raises(StoreError) as err:
        check_compatible(train, GradientStore.open(tmp_path / "other"))
    assert "fingerprint: train" in str(err.value) and "projection: train" in str(err.value)
    assert "tracked: train" not in str(err.value) and "dim: train" not in str(err.value)
    store_of(tmp_path / "meas", projection=projection, extra={"measurement": True})
    with pytest.raises(StoreError, match="train store holds measurement"):
        check_compatible(GradientStore.open(tmp_path / "meas"), train)


# ------------------------------------------------------------------ resume verifies


def test_resumed_extract_recomputes_corrupted_shards(tmp_path):
    model, data = build()
    task, path = ClassificationTask(tracked="all"), tmp_path / "s"
    extract(model, task, data, path, CONFIG)
    n_shards = GradientStore.open(path).n_shards
    original = {p.name: p.read_bytes() for p in path.glob("*.npy")}
    rewrite(path / "grads-000001.npy", lambda a: a.__imul__(2.0))  # same size, other values
    (path / "loss-000003.npy").write_bytes(original["loss-000003.npy"][:-8])  # truncated
    (path / "grads-000004.npy.tmp12345").write_bytes(b"half a shard")  # a killed writer's
    kept = {s: (path / f"shard-{s:06d}.done.json").stat().st_mtime_ns for s in (0, 2, 5)}
    with pytest.warns(
        UserWarning, match=r"2 written shard\(s\) .* recomputed .*shard 1: .*shard 3"
    ):
        store = extract(model, task, data, path, CONFIG)
    assert store.complete and not list(path.glob("*.tmp*"))
    assert {p.name: p.read_bytes() for p in path.glob("*.npy")} == original  # bit-identical
    for shard, mtime in kept.items():  # the sound shards were resumed, not rewritten
        assert (path / f"shard-{shard:06d}.done.json").stat().st_mtime_ns == mtime
    GradientStore.open(path)

    rewrite(path / "grads-000002.npy", lambda a: a.__imul__(2.0))
    with pytest.warns(UserWarning, match=r"shard 2: the sha256 of grads-000002.npy differs"):
        run = sharded_extract(model, task, data, path, CONFIG)  # the `gradsift extract` path
    assert (run.repaired, run.written, run.resumed) == ([2], [2], n_shards - 1)
    assert (path / "grads-000002.npy").read_bytes() == original["grads-000002.npy"]

    rewrite(path / "grads-000002.npy", lambda a: a.__imul__(2.0))
    run = sharded_extract(model, task, data, path, CONFIG, verify="header")  # not hashed:
    assert (run.repaired, run.written, run.resumed) == ([], [], n_shards)  # kept as is


# ------------------------------------------------------------------ one writer


def start_job(path: Path, pause: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(JOB), str(path), str(pause)],
        env={**os.environ, "GRADSIFT_PROGRESS": "0", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def lock_holder(path: Path) -> int | None:
    try:
        return json.loads((path / LOCK).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_second_writer_fails_at_once_naming_the_first(tmp_path):
    path = tmp_path / "s"
    first = start_job(path, pause=1.0)  # 12 shards, ~1 s each
    deadline = time.time() + 60
    while lock_holder(path) != first.pid or not list(path.glob("shard-*.done.json")):
        assert first.poll() is None and time.time() < deadline, first.communicate()[0]
        time.sleep(0.05)
    second = start_job(path, pause=0.0)
    out = second.communicate(timeout=60)[0].decode()
    assert second.returncode != 0 and first.poll() is None, out  # it did not wait its turn
    assert "StoreError: another process is writing to the store" in out, out
    assert f"pid {first.pid} on host {os.uname().nodename}" in out, out
    model, data = build()
    with pytest.raises(StoreError, match=f"pid {first.pid} "):  # same for a (torchrun) job
        sharded_extract(model, ClassificationTask(tracked="all"), data, path, CONFIG)
    with pytest.raises(StoreError, match=f"pid {first.pid} "):  # and for --overwrite
        extract(model, ClassificationTask(), data, path, CONFIG, overwrite=True)
    done = len(list(path.glob("shard-*.done.json")))
    assert done >= 1 and done < 12  # still writing

    first.send_signal(signal.SIGKILL)  # the kernel drops a dead holder's lock
    first.wait()
    resumed = start_job(path, pause=0.0)
    out = resumed.communicate(timeout=120)[0].decode()
    assert resumed.returncode == 0, out
    assert GradientStore.open(path).complete and lock_holder(path) == resumed.pid


def test_lock_refuses_a_foreign_directory_without_touching_it(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        GradientStore.lock(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
