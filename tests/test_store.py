"""Gradient store: round trip, refusal of mismatched settings, partial/corrupted stores,
and bit-identical resumption after a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradsift.errors import GradsiftError, StoreError
from gradsift.grads.extract import ExtractConfig, compute_gradients, extract
from gradsift.store.gradient_store import GradientStore, StoreSettings, model_fingerprint
from gradsift.task import ClassificationTask

JOB = Path(__file__).parent / "jobs" / "extract_job.py"


def settings(**kw):
    base = dict(
        fingerprint="abc",
        tracked=[{"name": "w", "shape": [3, 4]}],
        dim=12,
        n_rows=25,
        rows_per_shard=10,
    )
    base.update(kw)
    return StoreSettings(**base)


def filled(path, s=None):
    s = s or settings()
    store = GradientStore.create(path, s)
    rng = np.random.default_rng(0)
    G = rng.standard_normal((s.n_rows, s.dim)).astype(np.float32)
    L = rng.random(s.n_rows)
    for i in range(store.n_shards):
        a, b = store.shard_range(i)
        store.write_shard(i, G[a:b], L[a:b])
    store.finalize()
    return store, G, L


def test_round_trip_and_streaming(tmp_path):
    store, G, L = filled(tmp_path / "s")
    assert store.n_shards == 3
    opened = GradientStore.open(tmp_path / "s", verify=True)
    assert np.array_equal(opened.load(), G)
    assert np.array_equal(opened.losses(), L)
    blocks = list(opened.iter_blocks(block_rows=4))
    assert [start for start, _ in blocks] == [0, 4, 8, 10, 14, 18, 20, 24]
    assert np.array_equal(np.concatenate([b for _, b in blocks]), G)
    assert isinstance(opened.read_shard(0), np.memmap)


def test_refuses_other_settings_unless_overwrite(tmp_path):
    filled(tmp_path / "s")
    with pytest.raises(StoreError, match="fingerprint: stored"):
        GradientStore.create(tmp_path / "s", settings(fingerprint="zzz"))
    with pytest.raises(StoreError, match="projection"):
        GradientStore.create(
            tmp_path / "s", settings(projection={"dim": 4, "kind": "gaussian", "seed": 0})
        )
    fresh = GradientStore.create(tmp_path / "s", settings(fingerprint="zzz"), overwrite=True)
    assert fresh.missing_shards() == [0, 1, 2]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        GradientStore.create(tmp_path / "other", settings())


def test_partial_and_corrupted_stores_are_refused(tmp_path):
    store, _, _ = filled(tmp_path / "s")
    marker = tmp_path / "s" / "shard-000001.done.json"
    marker.unlink()
    with pytest.raises(StoreError, match=r"partial: shards \[1\]"):
        GradientStore.open(tmp_path / "s")
    store, _, _ = filled(tmp_path / "t")
    shard = tmp_path / "t" / "grads-000002.npy"
    shard.write_bytes(shard.read_bytes()[:-8])  # truncated
    with pytest.raises(StoreError, match=r"corrupted shards \[2\]"):
        GradientStore.open(tmp_path / "t")
    store, _, _ = filled(tmp_path / "u")
    raw = bytearray((tmp_path / "u" / "grads-000000.npy").read_bytes())
    raw[-1] ^= 0xFF  # same size, one bit pattern changed: only the checksum sees it
    (tmp_path / "u" / "grads-000000.npy").write_bytes(bytes(raw))
    GradientStore.open(tmp_path / "u", verify="header")  # sizes and headers still match
    with pytest.raises(StoreError, match=r"corrupted shards \[0\].*sha256"):
        GradientStore.open(tmp_path / "u")  # the default hashes every shard
    with pytest.raises(StoreError, match=r"corrupted shards \[0\]"):
        GradientStore.open(tmp_path / "u", verify=True)
    (tmp_path / "u" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest .* corrupted"):
        GradientStore.open(tmp_path / "u")
    with pytest.raises(StoreError, match="no gradient store"):
        GradientStore.open(tmp_path / "nothing")


def test_extract_matches_in_memory_and_refuses_other_model(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x, y = torch.randn(33, 4), torch.randint(0, 3, (33,))
    config = ExtractConfig(rows_per_shard=8, batch_size=5)
    store = extract(model, ClassificationTask(), (x, y), tmp_path / "s", config)
    G, L = compute_gradients(model, ClassificationTask(), (x, y), config)
    # batches split differently (shards of 8 vs one stream): equal up to float32 rounding
    assert store.complete and np.allclose(store.load(), G, rtol=1e-5, atol=1e-7)
    assert np.allclose(store.losses(), L, rtol=1e-6)
    other = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    assert model_fingerprint(other) != model_fingerprint(model)
    with pytest.raises(StoreError, match="fingerprint"):
        extract(other, ClassificationTask(), (x, y), tmp_path / "s", config)
    with pytest.raises(GradsiftError, match="empty"):
        extract(model, ClassificationTask(), (x[:0], y[:0]), tmp_path / "e", config)


def run_job(path, pause=0.0):
    return subprocess.Popen(
        [sys.executable, str(JOB), str(path), str(pause)],
        env={**os.environ, "GRADSIFT_PROGRESS": "0"},
    )


def test_killed_extraction_resumes_bit_identical(tmp_path):
    assert run_job(tmp_path / "ref").wait(timeout=120) == 0
    job = run_job(tmp_path / "cut", pause=0.4)
    deadline = time.time() + 60
    while len(list((tmp_path / "cut").glob("shard-*.done.json"))) < 3:
        assert time.time() < deadline and job.poll() is None, (
            "job finished or stalled before it could be killed"
        )
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    cut = GradientStore.create(tmp_path / "cut", GradientStore.open(tmp_path / "ref").settings)
    done_before = {
        p.name: p.stat().st_mtime_ns for p in (tmp_path / "cut").glob("shard-*.done.json")
    }
    assert 3 <= len(done_before) < cut.n_shards and not cut.complete
    with pytest.raises(StoreError, match="partial"):
        GradientStore.open(tmp_path / "cut")
    assert run_job(tmp_path / "cut").wait(timeout=120) == 0
    resumed = GradientStore.open(tmp_path / "cut", verify=True)
    reference = GradientStore.open(tmp_path / "ref")
    for name, mtime in done_before.items():  # finished shards were kept, not redone
        assert (tmp_path / "cut" / name).stat().st_mtime_ns == mtime
    for i in range(reference.n_shards):
        for kind in ("grads", "loss"):
            a = (tmp_path / "ref" / f"{kind}-{i:06d}.npy").read_bytes()
            assert a == (tmp_path / "cut" / f"{kind}-{i:06d}.npy").read_bytes()
    assert resumed.complete and not list((tmp_path / "cut").glob("*.tmp*"))
