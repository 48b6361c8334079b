"""The factored (kronecker) projection as a first-class extraction choice: ``extract``,
``compute_gradients``, the store manifest, the compatibility check, sharded extraction
under a real 2-process gloo ``torchrun`` job, the ``gradsift extract`` CLI and the HF
``"linear"`` tracking spec.

Ground truth is independent of the extraction path: per-sample gradients materialised
by an autograd loop, projected by the factors drawn from their recorded seeds, and a
single-process extraction for the distributed job.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradsift.distributed import process_group as D
from gradsift.distributed.sharded_extract import sharded_extract
from gradsift.errors import GradsiftError, StoreError
from gradsift.grads.computer import GradientComputer
from gradsift.grads.extract import ExtractConfig, compute_gradients, extract
from gradsift.grads.kronecker import FactoredProjector, factor_entropy
from gradsift.grads.projection import ProjectionConfig, seeded_generator
from gradsift.store.compatible import check_compatible, compatibility_problems
from gradsift.store.gradient_store import GradientStore
from gradsift.task import ClassificationTask

HERE = Path(__file__).resolve()
pytestmark = pytest.mark.usefixtures("one_thread")


def kron(dim, dim_out=None, seed=0):
    return ProjectionConfig(dim=dim, dim_out=dim_out, kind="kronecker", seed=seed)


def make_setup(seed: int = 0, dtype=torch.float32):
    """A small CNN + MLP head and 61 rows (deterministic: every rank builds the same)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, stride=2, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(27, 16),
        nn.Tanh(),
        nn.Linear(16, 5),
    )
    model = model.to(dtype).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(61, 1, 7, 7, generator=g, dtype=dtype)
    y = torch.randint(0, 5, (61,), generator=g)
    return model, (x, y), ClassificationTask("all")


def factor(entropy, d, k):
    """A factor drawn from its recorded entropy, as documented in gradsift.grads.kronecker."""
    if entropy is None:
        return torch.eye(d, dtype=torch.float64)
    gen = seeded_generator(*entropy)
    return torch.randn(d, k, generator=gen, dtype=torch.float64) / k**0.5


def projected_from_manifest(G, layout, layers):
    """Rows ``P_outᵀ [∇W | ∇b] P_in`` from materialised gradients ``G [n, D]`` and the
    per-layer entries of a store manifest (seeds, shapes) only."""
    blocks = {b.name: b for b in layout}
    parts = []
    for entry in layers:
        cols = []
        if entry["weight"]:
            w = blocks[entry["weight"]]
            cols.append(G[:, w.offset : w.stop].reshape(len(G), entry["d_out"], entry["d_in"]))
        if entry["bias"]:
            b = blocks[entry["bias"]]
            cols.append(G[:, b.offset : b.stop].reshape(len(G), entry["d_out"], 1))
        full = torch.cat(cols, dim=2)
        P_out = factor(entry["seed_out"], entry["d_out"], entry["k_out"])
        P_in = factor(entry["seed_in"], full.shape[2], entry["k_in"])
        parts.append((P_out.T @ full @ P_in).flatten(1))
    return torch.cat(parts, dim=1)


# ------------------------------------------------------------------ extract + manifest
def test_extract_rows_equal_the_factored_projection(tmp_path):
    model, (x, y), task = make_setup(dtype=torch.float64)
    config = ExtractConfig(
        projection=kron(4, 3, seed=2), rows_per_shard=13, batch_size=5, dtype="float64"
    )
    store = extract(model, task, (x, y), tmp_path / "s", config)
    rows = GradientStore.open(tmp_path / "s").load()
    fp = FactoredProjector(model, task, kron(4, 3, seed=2))
    assert store.dim == fp.dim == rows.shape[1]
    for i in (0, 12, 13, 60):  # first and last row of a shard, the last row
        alone, loss = fp.compute((x[i : i + 1], y[i : i + 1]))
        np.testing.assert_allclose(rows[i], alone[0].numpy(), rtol=1e-10, atol=1e-14)
        assert store.losses()[i] == pytest.approx(float(loss[0]), rel=1e-12)

    settings = store.settings.to_dict()
    assert settings["projection"] == {"dim": 4, "kind": "kronecker", "seed": 2, "dim_out": 3}
    assert settings["tracked"] == [{"name": b.name, "shape": list(b.shape)} for b in fp.layout]
    layers = settings["extra"]["kronecker"]["layers"]
    assert [e["module"] for e in layers] == ["0", "2", "5", "7"]
    for entry, layer in zip(layers, fp.layers, strict=True):  # seeds and digests recorded
        P_out, P_in = fp.factors(layer)
        digest = hashlib.sha256(P_out.numpy().tobytes() + P_in.numpy().tobytes()).hexdigest()
        assert entry["factors_sha256"] == digest
        assert entry["seed_in"] == factor_entropy(2, layer.module_name, 0)  # all d_in > 4
    assert layers[1]["seed_out"] is None  # d_out = 3 = k_out: the identity, no seed
    assert [e["seed_out"] for e in layers[::2]] == [factor_entropy(2, n, 1) for n in ("0", "5")]
    # independent ground truth: autograd-loop gradients projected by the recorded seeds
    G, _ = GradientComputer(model, task, method="loop").compute((x, y))
    truth = projected_from_manifest(G, fp.layout, layers)
    assert float(np.abs(rows - truth.numpy()).max() / np.abs(truth.numpy()).max()) < 1e-10

    G_mem, losses = compute_gradients(model, task, (x, y), config)
    np.testing.assert_allclose(G_mem, rows, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(losses, store.losses(), rtol=1e-12)
    with pytest.raises(GradsiftError, match="method 'auto'"):
        extract(
            model, task, (x, y), tmp_path / "v", ExtractConfig(projection=kron(4), method="vmap")
        )


def test_train_and_test_stores_with_other_kronecker_factors_are_refused(tmp_path):
    model, (x, y), task = make_setup()
    made = {}
    for name, proj, meas in [
        ("train", kron(3, seed=1), False),
        ("same", kron(3, seed=1), True),
        ("seed", kron(3, seed=2), True),
        ("dim_out", kron(3, 2, seed=1), True),
        ("dense", ProjectionConfig(dim=9, kind="gaussian", seed=1), True),
    ]:
        config = ExtractConfig(projection=proj, rows_per_shard=32, measurement=meas)
        extract(model, task, (x[:20], y[:20]), tmp_path / name, config)
        made[name] = GradientStore.open(tmp_path / name)
    train = made["train"]
    check_compatible(train, made["same"])  # test-side measurement gradients are fine
    with pytest.raises(StoreError, match=r"seed.*kronecker factors \(seeds or matrices\) differ"):
        check_compatible(train, made["seed"])
    with pytest.raises(StoreError, match="dim_out"):
        check_compatible(train, made["dim_out"])
    with pytest.raises(StoreError, match="the test store records none"):
        check_compatible(train, made["dense"])

    # same projection settings, other factors (e.g. another seeding scheme): refused by the
    # per-layer record alone
    manifest = tmp_path / "same" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["settings"]["extra"]["kronecker"]["layers"][2]["factors_sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    problems = compatibility_problems(train, GradientStore.open(tmp_path / "same"))
    assert problems == ["kronecker factors (seeds or matrices) differ in 1 layer(s): '5'"]


# ------------------------------------------------------------------ CLI
def test_cli_extract_kronecker(tmp_path):
    from typer.testing import CliRunner

    from gradsift.cli import app
    from gradsift.experiments.pipeline import BuiltinModel, builtin_setup

    runner = CliRunner()
    ckpt, out = tmp_path / "mlp.pt", tmp_path / "grads"
    common = ["--dataset=digits", "--epochs=1", f"--checkpoint={ckpt}", "--tracked=all"]
    args = ["--projection", "kronecker", "--proj-dim", "8", "--proj-dim-out", "4"]
    result = runner.invoke(app, ["extract", str(out), *common, *args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    setup = builtin_setup(BuiltinModel("digits", checkpoint=str(ckpt)), tracked="all")
    fp = FactoredProjector(setup.model, setup.task, kron(8, 4))
    widths = [min(lay.d_out, 4) * min(lay.d_in + 1, 8) for lay in fp.layers]  # + bias column
    assert summary["dim"] == fp.dim == sum(widths)
    store = GradientStore.open(out)
    assert store.settings.projection == {"dim": 8, "kind": "kronecker", "seed": 0, "dim_out": 4}
    X, Y = (torch.as_tensor(np.asarray(a)) for a in setup.dataset)
    rows = store.load()
    for i in (0, 5, len(X) - 1):
        alone, _ = fp.compute((X[i : i + 1], Y[i : i + 1]))
        np.testing.assert_allclose(rows[i], alone[0].numpy(), rtol=1e-4, atol=1e-6)

    for bad, message in [
        (["--projection", "kronecker"], "needs --proj-dim"),
        (["--project-dim=4", "--proj-dim-out=2"], "--proj-dim-out is a setting of"),
        (["--projection=svd", "--proj-dim=4"], "must be one of"),
    ]:
        result = runner.invoke(app, ["extract", str(tmp_path / "x"), *common, *bad])
        assert result.exit_code == 2 and message in result.output, result.output
    help_text = runner.invoke(app, ["extract", "--help"]).output
    assert "--proj-dim-out" in help_text and "kronecker" in help_text


# ------------------------------------------------------------------ HF: all linear layers
needs_hf = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("peft") is None,
    reason="transformers/peft are not installed",
)
PAIRS = [
    ("reverse the words : red green blue ->", " blue green red"),
    ("reverse : cat dog ->", " dog cat"),
    ("repeat each word : sun ->", " sun sun"),
    ("reverse : a b c d ->", " d c b a"),
    ("repeat : x ->", " x x"),
]


class Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@needs_hf
@pytest.mark.parametrize("lora", [False, True])
def test_hf_linear_tracking_and_kronecker_extract(tmp_path, lora):
    from gradsift.experiments.llm_tasks import collate_causal, encode_example
    from gradsift.hf.models import LoraSettings, add_lora, tiny_causal_lm, word_tokenizer
    from gradsift.hf.tasks import CausalLMTask

    tok = word_tokenizer([p + a for p, a in PAIRS], style="causal", lowercase=False)
    model = tiny_causal_lm(len(tok), seed=3).double()
    if lora:
        model = add_lora(model, LoraSettings(r=4, init_lora_weights=False, seed=1))
    model.eval()
    task = CausalLMTask("linear")
    params = task.tracked_parameters(model)
    expected = [  # every trainable nn.Linear parameter, the tied lm_head excluded
        n
        for n, p in model.named_parameters()
        if p.requires_grad
        and isinstance(model.get_submodule(n.rpartition(".")[0]), nn.Linear)
        and not n.startswith("lm_head")
    ]
    assert list(params) == expected and len(expected) > 0
    if lora:
        assert all("lora_" in n for n in params)
    else:
        assert len({n.rpartition(".")[0] for n in params}) == 2 * 7  # 2 blocks × 7 linears

    items = [encode_example(tok, p, a) for p, a in PAIRS]
    config = ExtractConfig(
        projection=kron(5, 4, seed=7), rows_per_shard=3, batch_size=2, dtype="float64"
    )
    extract(
        model,
        task,
        Items(items),
        tmp_path / "s",
        config,
        collate_fn=lambda batch: collate_causal(batch, tok.pad_token_id),
    )
    store = GradientStore.open(tmp_path / "s")
    rows = store.load()
    layers = store.settings.extra["kronecker"]["layers"]
    fp = FactoredProjector(model, task, kron(5, 4, seed=7))
    truth = []
    for item in items:  # each sample alone, unpadded, no mask: an autograd gradient
        ids, labels = item["input_ids"], item["labels"]
        loss = F.cross_entropy(model(input_ids=ids[None]).logits[0, :-1], labels[1:])
        grads = torch.autograd.grad(loss, list(params.values()))
        truth.append(torch.cat([g.reshape(-1) for g in grads]))
    expected_rows = projected_from_manifest(torch.stack(truth), fp.layout, layers).numpy()
    assert np.abs(rows - expected_rows).max() < 1e-8 * np.abs(expected_rows).max()
    for i, item in enumerate(items):  # a store row equals FactoredProjector on that row
        alone, _ = fp.compute(collate_causal([item], tok.pad_token_id))
        np.testing.assert_allclose(rows[i], alone[0].numpy(), rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------ torchrun (2 × gloo)
SHARDED = ExtractConfig(projection=kron(3, 2, seed=5), rows_per_shard=8, batch_size=3)


def test_torchrun_sharded_kronecker_extract_equals_single_process(tmp_path):
    model, data, task = make_setup()
    reference = extract(model, task, data, tmp_path / "ref", SHARDED)
    env = {**os.environ, "GRADSIFT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    job = subprocess.run(
        [*cmd, str(HERE), str(tmp_path / "dist")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=120,
    )
    log = job.stdout.decode(errors="replace")
    assert job.returncode == 0, log
    written = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert written[0]["backend"] == "gloo" and written[0]["world_size"] == 2
    assert sorted(written[0]["written"] + written[1]["written"]) == list(range(reference.n_shards))
    assert written[0]["written"] and written[1]["written"]  # both ranks did work
    dist = GradientStore.open(tmp_path / "dist", verify="full")
    assert dist.complete and dist.settings == reference.settings  # factors' record included
    for shard in range(reference.n_shards):
        for kind in ("grads", "loss"):
            name = f"{kind}-{shard:06d}.npy"
            assert (tmp_path / "dist" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()


def main(path: str) -> None:
    model, data, task = make_setup()
    run = sharded_extract(model, task, data, path, SHARDED)
    ctx = D.init_distributed()
    record = {"written": run.written, "backend": ctx.backend, "world_size": ctx.world_size}
    (Path(path).parent / f"rank{run.rank}.json").write_text(json.dumps(record))
    D.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])


def test_oga_on_factored_gradients_and_a_clear_refusal_for_in_memory_influence(tmp_path):
    """OGA accepts the factored projection: its l2 scores are the squared norms of the rows that
    FactoredProjector computes one at a time; the influence scorer refuses a factored train
    store against in-memory test points with a sentence, not a ValueError trace."""
    from gradsift.detect.oga import OGAConfig, OutlierGradientAnalysis
    from gradsift.influence.scores import InfluenceScorer

    model, (x, y), task = make_setup(dtype=torch.float64)
    proj = kron(4, 3, seed=2)
    config = OGAConfig(detectors=["l2"], extract=ExtractConfig(projection=proj, dtype="float64"))
    out = OutlierGradientAnalysis(model, task, config).run((x, y))
    fp = FactoredProjector(model, task, proj)
    norms = [float(fp.compute((x[i : i + 1], y[i : i + 1]))[0].norm() ** 2) for i in range(len(y))]
    np.testing.assert_allclose(out.results["l2"].scores, norms, rtol=1e-8)

    store = extract(model, task, (x, y), tmp_path / "s", ExtractConfig(projection=proj))
    scorer = InfluenceScorer(model, task, "dot")
    with pytest.raises(GradsiftError, match="kronecker"):
        scorer.scores(store, (x[:3], y[:3]))
