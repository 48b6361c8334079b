"""Sharded extraction and distributed scoring with real gloo process groups (torchrun).

The multi-process tests launch this file as a ``torchrun --standalone --nproc-per-node 2``
job (see ``main`` at the bottom): two real processes, a real gloo process group, a real
SIGKILL. Ground truth is computed independently in the pytest process: a single-process
:func:`gradsift.grads.extract.extract`, :func:`gradsift.store.kernels.pairwise_topk`, numpy brute force.
"""

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
import torch
from torch import nn

from gradsift.distributed import process_group as D
from gradsift.distributed.scoring import (
    distributed_scores,
    distributed_topk,
    fold_block,
    sample_rows,
    self_influence,
)
from gradsift.distributed.sharded_extract import sharded_extract
from gradsift.errors import GradsiftError, StoreError
from gradsift.grads.extract import ExtractConfig, extract
from gradsift.grads.projection import ProjectionConfig
from gradsift.store.gradient_store import GradientStore, StoreSettings
from gradsift.store.kernels import StreamingTopK, pairwise_topk
from gradsift.task import ClassificationTask

HERE = Path(__file__).resolve()
N_ROWS, ROWS_PER_SHARD = 230, 20
CONFIG = ExtractConfig(
    projection=ProjectionConfig(dim=16, kind="gaussian", seed=3),
    rows_per_shard=ROWS_PER_SHARD,
    batch_size=7,
)


RESUME_ARGS = (  # the CLI spelling of make_setup() + CONFIG
    "--model=test_distributed:make_setup",
    "--tracked=all",
    "--project-dim=16",
    "--projection-kind=gaussian",
    "--projection-seed=3",
    f"--rows-per-shard={ROWS_PER_SHARD}",
    "--batch-size=7",
    "--json",
)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_setup(seed: int = 0):
    """The job's model and data (deterministic: every rank builds the same)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_ROWS, 10, generator=g)
    y = torch.randint(0, 5, (N_ROWS,), generator=g)
    return model, (x, y), ClassificationTask(tracked="all")


def synthetic_store(path: Path, n: int = 230, dim: int = 24, rows: int = 20, seed: int = 0):
    """A finished store of Gaussian rows with a few large-norm outliers, and the matrix."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, dim)).astype(np.float32)
    G[::37] *= 6.0
    losses = rng.random(n)
    settings = StoreSettings(
        fingerprint=f"synthetic-{seed}",
        tracked=[{"name": "w", "shape": [dim]}],
        dim=dim,
        n_rows=n,
        rows_per_shard=rows,
    )
    store = GradientStore.create(path, settings)
    for shard in range(store.n_shards):
        a, b = store.shard_range(shard)
        store.write_shard(shard, G[a:b], losses[a:b])
    store.finalize()
    return store, G, losses


def torchrun(*args: str, nproc: int = 2) -> subprocess.Popen:
    env = {**os.environ, "GRADSIFT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", str(HERE), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def launch_file_init(*args: str, world_size: int = 2) -> list[subprocess.Popen]:
    """``world_size`` plain processes joining through ``init_method=file://`` (no agent)."""
    env = {**os.environ, "GRADSIFT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    return [
        subprocess.Popen(
            [sys.executable, str(HERE), *args, str(rank), str(world_size)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(world_size)
    ]


def finish(job: subprocess.Popen, timeout: float = 90) -> str:
    out, _ = job.communicate(timeout=timeout)
    return out.decode(errors="replace")


# ------------------------------------------------------------------ single process


def test_assign_and_gather_rows_without_process_group():
    assert D.info() == D.DistInfo() and not D.info().distributed
    assert D.assign(range(7), rank=1, world_size=3) == [1, 4]
    shares = [D.assign(range(10), r, 4) for r in range(4)]
    assert sorted(s for share in shares for s in share) == list(range(10))
    with pytest.raises(GradsiftError, match="outside"):
        D.assign(range(3), rank=2, world_size=2)
    scores = D.gather_rows(5, [(3, np.array([3.0, 4.0])), (0, np.array([0.0, 1.0, 2.0]))])
    assert scores.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(GradsiftError, match="scored 2 times"):
        D.gather_rows(3, [(0, np.zeros(2)), (1, np.zeros(2))])
    with pytest.raises(GradsiftError, match=r"rows \[2\]"):
        D.gather_rows(3, [(0, np.zeros(2))])
    assert D.run_on_main(lambda: 42) == 42
    with pytest.raises(StoreError):  # a single process sees the original exception
        D.run_on_main(lambda: GradientStore.open("/nonexistent/store"))


def test_streaming_scores_match_brute_force(tmp_path):
    store, G, losses = synthetic_store(tmp_path / "s")
    rng = np.random.default_rng(5)
    test = rng.standard_normal((7, G.shape[1])).astype(np.float32)
    full = G.astype(np.float64) @ test.T.astype(np.float64)  # the n × m matrix, in memory
    helpful, harmful = distributed_topk(store, test, k=5, block_rows=8)
    hv, hi = helpful.result()
    lv, li = harmful.result()
    assert np.array_equal(hi, np.argsort(-full, axis=0, kind="stable")[:5].T)
    assert np.array_equal(li, np.argsort(full, axis=0, kind="stable")[:5].T)
    assert np.allclose(hv, np.take_along_axis(full.T, hi, 1), rtol=1e-5)
    unit = G / np.linalg.norm(G, axis=1, keepdims=True)
    cos = unit @ (test / np.linalg.norm(test, axis=1, keepdims=True)).T
    ch, ci = distributed_topk(store, test, k=3, score="cosine")[0].result()
    assert np.array_equal(ci, np.argsort(-cos, axis=0, kind="stable")[:3].T)
    assert np.allclose(ch, np.take_along_axis(cos.T, ci, 1), atol=1e-6)

    l2, _ = distributed_scores(store, "l2", block_rows=16)
    assert np.allclose(l2, (G.astype(np.float64) ** 2).sum(1), rtol=1e-12)
    assert set(np.argsort(-l2)[:7]) == set(range(0, 230, 37))  # the planted outliers
    l1, _ = distributed_scores(store, "l1")
    assert np.allclose(l1, np.abs(G.astype(np.float64)).sum(1), rtol=1e-12)
    loss, _ = distributed_scores(store, "loss")
    assert np.array_equal(loss, losses)

    from gradsift.detect import IsolationForestDetector

    scores, info = distributed_scores(store, "iforest", sample_size=100, seed=3)
    rows, X = sample_rows(store, 100, seed=3)
    assert np.array_equal(X, G[rows]) and len(np.unique(rows)) == 100
    reference = IsolationForestDetector(seed=3).fit(G[rows]).score(G)
    assert np.array_equal(scores, reference)
    assert info["fit_sample"] == {"size": 100, "seed": 3}

    P = rng.standard_normal((G.shape[1], G.shape[1]))
    P = P @ P.T / G.shape[1] + np.eye(G.shape[1])
    expected = np.einsum("id,de,ie->i", G.astype(np.float64), P, G.astype(np.float64))
    assert np.allclose(self_influence(store, P), expected, rtol=1e-10)

    class Solver:  # the interface of gradsift.influence.solvers: solve(V [m, D]) -> P V
        def solve(self, V):
            return V @ torch.as_tensor(P, dtype=V.dtype)

    assert np.allclose(self_influence(store, Solver()), expected, rtol=1e-10)
    assert np.allclose(self_influence(store), (G.astype(np.float64) ** 2).sum(1), rtol=1e-12)
    pre, _, _ = synthetic_store(tmp_path / "pre", seed=1)  # s_i stored, as a solver writes them
    expected = (G.astype(np.float64) * pre.load().astype(np.float64)).sum(1)
    assert np.allclose(self_influence(store, pre), expected, rtol=1e-12)
    with pytest.raises(GradsiftError, match="must be"):
        self_influence(store, np.eye(3))
    with pytest.raises(GradsiftError, match="test must be"):
        distributed_topk(store, test[:, :3], k=2)


def test_sharded_extract_single_process_equals_extract(tmp_path):
    model, data, _ = make_setup()
    task, config = ClassificationTask(), ExtractConfig(rows_per_shard=20, batch_size=64)
    run = sharded_extract(model, task, data, tmp_path / "a", config)
    ref = extract(model, task, data, tmp_path / "b", config)
    assert run.store.complete and run.written == list(range(ref.n_shards)) and run.resumed == 0
    assert np.array_equal(run.store.load(), ref.load())
    again = sharded_extract(model, task, data, tmp_path / "a", config)
    assert again.written == [] and again.resumed == ref.n_shards
    other, _, _ = make_setup(seed=9)
    with pytest.raises(StoreError, match="fingerprint"):
        sharded_extract(other, task, data, tmp_path / "a", config)


def test_fold_block_equals_update_including_ties():
    gen = torch.Generator().manual_seed(0)
    for k, largest, rows in [(1, True, 300), (5, False, 300), (7, True, 5), (40, False, 120)]:
        slow, fast = StreamingTopK(13, k, largest), StreamingTopK(13, k, largest)
        for b in range(4):
            scores = torch.randn(rows, 13, generator=gen)
            scores[::3] = torch.round(scores[::3] * 2) / 2  # many exact ties, also at k
            slow.update(scores, b * rows)
            fold_block(fast, scores, b * rows)
        assert torch.equal(slow.values, fast.values) and torch.equal(slow.indices, fast.indices)


def test_pick_backend(monkeypatch):
    monkeypatch.delenv("GRADSIFT_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.pick_backend() == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert D.pick_backend() == "nccl"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # more ranks than GPUs on the node
    assert D.pick_backend() == "gloo"
    monkeypatch.setenv("GRADSIFT_BACKEND", "nccl")
    assert D.pick_backend() == "nccl"
    monkeypatch.setenv("GRADSIFT_BACKEND", "mpi")
    with pytest.raises(GradsiftError, match="GRADSIFT_BACKEND"):
        D.pick_backend()


def test_cli_extract_resume_and_score(tmp_path):
    from typer.testing import CliRunner

    from gradsift.cli import app
    from gradsift.experiments.pipeline import BuiltinModel, builtin_setup

    runner = CliRunner()
    ckpt, train, test = tmp_path / "mlp.pt", tmp_path / "train", tmp_path / "test"
    common = [
        "--dataset=digits",
        "--epochs=2",
        f"--checkpoint={ckpt}",
        "--rows-per-shard=256",
        "--json",
    ]
    first = runner.invoke(app, ["extract", str(train), *common])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert (
        ckpt.exists() and summary["shards_resumed"] == 0 and summary["backend"].startswith("none")
    )
    again = json.loads(runner.invoke(app, ["extract", str(train), *common]).output)
    assert (again["shards_written"], again["shards_resumed"]) == (0, summary["shards"])
    setup = builtin_setup(BuiltinModel("digits", checkpoint=str(ckpt)))  # weights from the file
    ref = extract(
        setup.model, setup.task, setup.dataset, tmp_path / "ref", ExtractConfig(rows_per_shard=256)
    )
    store = GradientStore.open(train, verify=True)
    assert store.n_rows == summary["rows"] == len(setup.dataset[0])
    assert np.array_equal(store.load(), ref.load())

    result = runner.invoke(
        app, ["score", str(train), "--detector=l2", f"--out={tmp_path / 's.csv'}"]
    )
    assert result.exit_code == 0, result.output
    import pandas as pd

    frame = pd.read_csv(tmp_path / "s.csv")
    assert np.allclose(frame["score"], (ref.load().astype(np.float64) ** 2).sum(1), rtol=1e-12)
    assert frame["is_issue"].sum() == round(0.1 * len(frame))

    made = runner.invoke(app, ["extract", str(test), *common, "--split=test", "--measurement"])
    assert made.exit_code == 0, made.output
    out = tmp_path / "t.npz"
    result = runner.invoke(app, ["score", str(train), f"--test={test}", "--k=4", f"--out={out}"])
    assert result.exit_code == 0, result.output
    helpful, harmful = pairwise_topk(store.iter_blocks(), GradientStore.open(test).load(), k=4)
    with np.load(out) as got:
        assert np.array_equal(got["helpful_indices"], helpful.result()[1])
        assert np.array_equal(got["harmful_indices"], harmful.result()[1])
    bad = runner.invoke(app, ["extract", str(tmp_path / "x"), "--dataset=digits", "--model=a:b"])
    assert bad.exit_code == 2 and "exactly one of" in bad.output


# ------------------------------------------------------------------ real processes


def _done_markers(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in path.glob("shard-*.done.json")}


def test_torchrun_kill_one_rank_then_resume_is_bit_identical(tmp_path):
    model, data, task = make_setup()
    reference = extract(model, task, data, tmp_path / "ref", CONFIG)

    cut, pids = tmp_path / "cut", tmp_path / "pids"
    pids.mkdir()
    job = torchrun("extract", str(cut), str(pids), "0.3")
    deadline = time.time() + 60
    while True:  # wait until both ranks have written shards, then SIGKILL rank 1
        markers = _done_markers(cut) if cut.exists() else {}
        odd = [m for m in markers if int(m[6:12]) % 2 == 1]
        if len(markers) >= 3 and odd and (pids / "1").exists():
            break
        assert job.poll() is None and time.time() < deadline, finish(job)
        time.sleep(0.05)
    os.kill(int((pids / "1").read_text()), signal.SIGKILL)
    log = finish(job)
    assert job.returncode != 0, log  # torchrun saw the dead rank and stopped the job
    before = _done_markers(cut)
    assert 3 <= len(before) < reference.n_shards, before
    with pytest.raises(StoreError, match="partial"):
        GradientStore.open(cut)

    job = torchrun("cli", "extract", str(cut), *RESUME_ARGS)  # `gradsift extract` itself
    log = finish(job)
    assert job.returncode == 0, log
    summary, _ = json.JSONDecoder().raw_decode(log[log.index('{\n "store"') :])
    assert summary["shards_written"] == reference.n_shards - len(before)
    assert summary["shards_resumed"] == len(before)
    assert (summary["backend"], summary["world_size"]) == ("gloo", 2)
    assert log.count("gloo threads at exit: []") == 2, log  # no abort at exit

    resumed = GradientStore.open(cut, verify=True)
    assert resumed.complete
    for name, mtime in before.items():  # finished shards were kept, not rewritten
        assert _done_markers(cut)[name] == mtime
    files = sorted(p.name for p in cut.iterdir())
    assert files == sorted(p.name for p in (tmp_path / "ref").iterdir())  # no leftovers
    for shard in range(reference.n_shards):
        assert (cut / f"grads-{shard:06d}.npy").read_bytes() == (
            tmp_path / "ref" / f"grads-{shard:06d}.npy"
        ).read_bytes()
        assert (cut / f"loss-{shard:06d}.npy").read_bytes() == (
            tmp_path / "ref" / f"loss-{shard:06d}.npy"
        ).read_bytes()


def test_torchrun_scoring_equals_single_process(tmp_path):
    store, G, _ = synthetic_store(tmp_path / "s", n=230, dim=24, rows=20)
    test = np.random.default_rng(2).standard_normal((9, 24)).astype(np.float32)
    np.save(tmp_path / "test.npy", test)
    init = tmp_path / "rendezvous"
    jobs = launch_file_init(
        "score", f"file://{init}", str(tmp_path / "s"), str(tmp_path / "test.npy"), str(tmp_path)
    )
    for job in jobs:
        log = finish(job)
        assert job.returncode == 0, log
    got = {r: np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)}
    from gradsift.detect import IsolationForestDetector, L1Norm, L2Norm

    helpful, harmful = pairwise_topk(store.iter_blocks(), test, k=6)
    for r in (0, 1):  # every rank holds the merged result
        assert np.array_equal(got[r]["helpful_indices"], helpful.result()[1])
        assert np.array_equal(got[r]["helpful_values"], helpful.result()[0])
        assert np.array_equal(got[r]["harmful_indices"], harmful.result()[1])
        assert np.array_equal(got[r]["harmful_values"], harmful.result()[0])
        assert np.array_equal(got[r]["l2"], L2Norm().score(G))
        assert np.array_equal(got[r]["l1"], L1Norm().score(G))
        rows, _ = sample_rows(store, 64, seed=4)
        assert np.array_equal(
            got[r]["iforest"], IsolationForestDetector(seed=4).fit(G[rows]).score(G)
        )
        assert np.allclose(got[r]["self_influence"], (G.astype(np.float64) ** 2).sum(1), rtol=1e-12)
    assert json.loads(got[0]["shards"].item()) == [list(range(0, 12, 2)), list(range(1, 12, 2))]
    mismatch = [(tmp_path / f"mismatch{r}.txt").read_text() for r in (0, 1)]
    assert all("ranks [1] disagree with rank 0 on ['fingerprint']" in m for m in mismatch), mismatch


# ------------------------------------------------------------------ torchrun entry point


def _job_extract(path: str, pids: str, pause: str) -> None:
    rank = os.environ["RANK"]
    (Path(pids) / rank).write_text(str(os.getpid()))
    model, data, task = make_setup()
    sharded_extract(model, task, data, path, CONFIG, on_shard=lambda _: time.sleep(float(pause)))
    D.shutdown()


def _job_cli(*argv: str) -> None:
    from gradsift.cli import app

    try:
        app(list(argv), prog_name="gradsift")
    finally:  # the process group must be gone, threads included, before exit
        print(f"gloo threads at exit: {_gloo_threads()}", flush=True)


def _gloo_threads() -> list[str]:
    """Names of this process's live native gloo threads (Linux ``/proc``)."""
    tasks = Path("/proc/self/task")
    names = [(t / "comm").read_text().strip() for t in tasks.iterdir()]
    return [name for name in names if "gloo" in name]


def _job_score(init: str, path: str, test_path: str, out: str, rank: str, world: str) -> None:
    ctx = D.init_distributed(init_method=init, rank=int(rank), world_size=int(world))
    assert ctx.backend == "gloo" and ctx.world_size == 2
    store = GradientStore.open(path)
    helpful, harmful = distributed_topk(store, np.load(test_path), k=6)
    results = {
        "helpful_values": helpful.result()[0],
        "helpful_indices": helpful.result()[1],
        "harmful_values": harmful.result()[0],
        "harmful_indices": harmful.result()[1],
        "l2": distributed_scores(store, "l2")[0],
        "l1": distributed_scores(store, "l1")[0],
        "iforest": distributed_scores(store, "iforest", sample_size=64, seed=4)[0],
        "self_influence": self_influence(store),
        "shards": json.dumps(D.all_gather_objects(D.assign(range(store.n_shards)))),
    }
    np.savez(Path(out) / f"rank{ctx.rank}.npz", **results)
    model, data, task = make_setup(seed=ctx.rank)  # rank 1 builds another model
    try:
        sharded_extract(model, task, data, Path(out) / "mismatch", CONFIG)
        message = "no error"
    except GradsiftError as err:
        message = str(err)
    (Path(out) / f"mismatch{ctx.rank}.txt").write_text(message)
    D.shutdown()


def main(argv: list[str]) -> None:
    jobs = {"extract": _job_extract, "cli": _job_cli, "score": _job_score}
    jobs[argv[0]](*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
