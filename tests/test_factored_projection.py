"""Factored (Kronecker) projection against the projection of materialised per-sample
gradients (an independent autograd loop), on an MLP, CNNs and tiny transformers with
padding; row independence, seeding, unbiasedness and refusals."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradsift.errors import GradientError
from gradsift.grads.computer import GradientComputer
from gradsift.grads.hooks import hook_gradients
from gradsift.grads.kronecker import FactoredProjector, factorable_modules, layer_factors
from gradsift.grads.projection import ProjectionConfig
from gradsift.task import ClassificationTask

RTOL = 1e-6  # float64 throughout; measured errors are ~1e-15


def kron(dim, dim_out=None, seed=0):
    return ProjectionConfig(dim=dim, dim_out=dim_out, kind="kronecker", seed=seed)


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def mlp():
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 12, bias=False), nn.Tanh(), nn.Linear(12, 4)
    )


def cnn(padding=1, stride=1, dilation=1):
    conv2 = nn.Conv2d(3, 5, 3, padding=padding, stride=stride, dilation=dilation)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, bias=False),
        nn.ReLU(),
        conv2,
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(20, 4),
    )


def data(arch, n=7):
    g = torch.Generator().manual_seed(1)
    shape = (n, 6) if arch == "mlp" else (n, 1, 9, 9)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 4, (n,), generator=g)


def projected_truth(G, fp):
    """``P_outᵀ [∇W | ∇b] P_in`` per sample from materialised gradient rows ``G``, written
    from the definition (not from ``dense_matrix``)."""
    blocks = {b.name: b for b in fp.layout}
    parts = []
    for layer in fp.layers:
        P_out, P_in = fp.factors(layer)
        cols = []
        if layer.weight:
            w = blocks[layer.weight]
            cols.append(G[:, w.offset : w.stop].reshape(len(G), layer.d_out, layer.d_in))
        if layer.bias:
            b = blocks[layer.bias]
            cols.append(G[:, b.offset : b.stop].reshape(len(G), layer.d_out, 1))
        full = torch.cat(cols, dim=2)  # [n, d_out, d_in(+1)]
        parts.append((P_out.T @ full @ P_in).flatten(1))
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize(
    "arch,kwargs",
    [
        ("mlp", {}),
        ("cnn", {}),
        ("cnn", {"padding": 0, "stride": 2}),
        ("cnn", {"padding": "same", "dilation": 2}),
        ("cnn", {"padding": "valid"}),
    ],
)
@pytest.mark.parametrize("dims", [(3, 2), (5, None), (64, None)])  # (k_in, k_out); 64: identity
def test_equals_dense_projection_of_materialised_gradients(arch, kwargs, dims):
    torch.manual_seed(0)
    model = (mlp() if arch == "mlp" else cnn(**kwargs)).double().eval()
    task = ClassificationTask("all")
    x, y = data(arch)
    G, losses = GradientComputer(model, task, method="loop").compute((x, y))
    fp = FactoredProjector(model, task, kron(*dims), chunk_size=3)
    Z, z_losses = fp.compute((x, y))
    assert Z.dtype == torch.float64 and Z.shape == (len(x), fp.dim)
    assert rel_err(Z, projected_truth(G, fp)) < RTOL
    assert rel_err(Z, G @ fp.dense_matrix()) < RTOL
    torch.testing.assert_close(z_losses, losses)
    if dims[0] == 64:  # every side passes through: the projection is exact and lossless
        assert fp.dim == G.shape[1] + sum(1 for lay in fp.layers if lay.weight is None)


def test_weight_only_and_bias_only_tracking():
    model = mlp().double().eval()
    task = ClassificationTask(["0.bias", "2", "4.weight"])
    x, y = data("mlp")
    G, _ = GradientComputer(model, task, method="loop").compute((x, y))
    fp = FactoredProjector(model, task, kron(4, 3))
    assert [(lay.weight, lay.bias) for lay in fp.layers] == [
        (None, "0.bias"),
        ("2.weight", None),
        ("4.weight", None),
    ]
    assert fp.out_blocks[0].shape == (3, 1)  # bias only: one input column (a = 1)
    Z, _ = fp.compute((x, y))
    assert rel_err(Z, G @ fp.dense_matrix()) < RTOL


def test_conv_weight_only_and_bias_only_tracking():
    model = cnn().double().eval()
    task = ClassificationTask(["0.weight", "2.bias", "6.weight"])
    x, y = data("cnn")
    G, _ = GradientComputer(model, task, method="loop").compute((x, y))
    for dims in [(4, 3), (64, None)]:
        fp = FactoredProjector(model, task, kron(*dims))
        assert fp.out_blocks[1].shape == (min(5, dims[1] or dims[0]), 1)  # bias only
        Z, _ = fp.compute((x, y))
        assert rel_err(Z, projected_truth(G, fp)) < RTOL


# ------------------------------------------------------------------ tiny transformers
needs_hf = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("peft") is None,
    reason="transformers/peft are not installed",
)
PAIRS = [
    ("reverse the words : red green blue ->", " blue green red"),
    ("reverse : cat dog ->", " dog cat"),
    ("repeat each word : sun ->", " sun sun"),
]
TEXTS = ["a gripping and beautifully acted drama", "dull", "fun summer movie, not worth it"]


def causal_truth(model, params, items):
    """Each sample alone, unpadded, no mask: mean next-token loss over answer tokens."""
    rows = []
    for item in items:
        ids, labels = item["input_ids"], item["labels"]
        logits = model(input_ids=ids[None]).logits[0, :-1]
        loss = F.cross_entropy(logits, labels[1:], ignore_index=-100)
        grads = torch.autograd.grad(loss, list(params.values()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


@needs_hf
@pytest.mark.parametrize("lora", [False, True])
def test_causal_lm_all_linear_with_padding(lora):
    from gradsift.experiments.llm_tasks import collate_causal, encode_example
    from gradsift.hf.models import LoraSettings, add_lora, tiny_causal_lm, word_tokenizer
    from gradsift.hf.tasks import CausalLMTask

    tok = word_tokenizer([p + a for p, a in PAIRS], style="causal", lowercase=False)
    model = tiny_causal_lm(len(tok), seed=3).double()
    if lora:
        model = add_lora(model, LoraSettings(r=4, init_lora_weights=False, seed=1)).eval()
    tracked = "lora" if lora else factorable_modules(model)
    if not lora:
        assert "lm_head" not in tracked and len(tracked) == 2 * 7  # tied to the embeddings
    task = CausalLMTask(tracked)
    items = [encode_example(tok, p, a) for p, a in PAIRS]
    batch = collate_causal(items, tok.pad_token_id)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    fp = FactoredProjector(model, task, kron(6, 5, seed=2), chunk_size=2)
    Z, _ = fp.compute(batch)
    truth = causal_truth(model, task.tracked_parameters(model), items)
    assert rel_err(Z, projected_truth(truth, fp)) < RTOL
    for i in range(len(items)):  # padded rows stay exact one by one
        alone = fp.compute({k: v[i : i + 1] for k, v in batch.items()})[0]
        assert rel_err(Z[i], alone[0]) < RTOL


@needs_hf
def test_sentence_classifier_all_linear_with_padding():
    from gradsift.hf.models import tiny_sentence_classifier, word_tokenizer
    from gradsift.hf.tasks import SequenceClassificationTask

    tok = word_tokenizer(TEXTS)
    model = tiny_sentence_classifier(len(tok), seed=4).double()
    task = SequenceClassificationTask(factorable_modules(model))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()
    labels = torch.tensor([1, 0, 1])
    fp = FactoredProjector(model, task, kron(5, seed=1))
    Z, _ = fp.compute((dict(enc), labels))
    G, _ = GradientComputer(model, task, method="loop").compute((dict(enc), labels))
    assert rel_err(Z, G @ fp.dense_matrix()) < RTOL


# ------------------------------------------------------------------ independence, seeding
def test_rows_independent_and_chunking_invariant():
    model = cnn().double().eval()
    task = ClassificationTask("all")
    x, y = data("cnn", n=9)
    whole, _ = FactoredProjector(model, task, kron(4), chunk_size=9).compute((x, y))
    for chunk in (1, 4):
        part, _ = FactoredProjector(model, task, kron(4), chunk_size=chunk).compute((x, y))
        assert rel_err(part, whole) < 1e-12
    fp = FactoredProjector(model, task, kron(4))
    for i in range(len(x)):
        alone, _ = fp.compute((x[i : i + 1], y[i : i + 1]))
        assert rel_err(alone[0], whole[i]) < 1e-12


def test_seed_determinism_and_layer_name_keyed_factors():
    model = mlp().eval()
    x, y = data("mlp")
    x = x.float()
    a = FactoredProjector(model, ClassificationTask("all"), kron(4, seed=5)).compute((x, y))[0]
    b = FactoredProjector(model, ClassificationTask("all"), kron(4, seed=5)).compute((x, y))[0]
    c = FactoredProjector(model, ClassificationTask("all"), kron(4, seed=6)).compute((x, y))[0]
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the factors depend on (seed, layer name) only, not on what else is tracked
    fp = FactoredProjector(model, ClassificationTask("all"), kron(4, seed=5))
    only = FactoredProjector(model, ClassificationTask(["2"]), kron(4, seed=5))
    block = next(b for b in fp.out_blocks if b.name == "2")
    assert torch.equal(only.compute((x, y))[0], a[:, block.offset : block.stop])
    P_out, P_in = layer_factors(kron(4, seed=5), "2", 12, 16)
    assert (P_out.shape, P_in.shape) == ((12, 4), (16, 4))
    assert torch.equal(
        torch.cat([P_out.flatten(), P_in.flatten()]),
        torch.cat([f.flatten() for f in fp.factors(fp.layers[1])]),
    )
    assert torch.equal(layer_factors(kron(8), "x", 5, 3)[1], torch.eye(3, dtype=torch.float64))


def test_kronecker_matrix_is_unbiased():
    """``E[(P_out ⊗ P_in)(P_out ⊗ P_in)ᵀ] = I``: the mean over seeds approaches I."""
    n_seeds, d_out, d_in, k = 2000, 3, 4, 2
    acc = torch.zeros(d_out * d_in, d_out * d_in, dtype=torch.float64)
    for seed in range(n_seeds):
        P_out, P_in = layer_factors(kron(k, seed=seed), "layer", d_out, d_in)
        M = torch.kron(P_out, P_in)
        acc += M @ M.T
    # per entry: variance <= 3 (diagonal, k = 2), so the std of the mean is <= 0.04
    assert (acc / n_seeds - torch.eye(d_out * d_in, dtype=torch.float64)).abs().max() < 0.2


# ------------------------------------------------------------------ wiring and refusals
def test_hook_gradients_and_manifest():
    model = mlp().eval()
    x, y = data("mlp", n=10)
    ds = torch.utils.data.TensorDataset(x.float(), y)
    config = kron(4, 3, seed=1)
    rows, losses = hook_gradients(
        model, ClassificationTask("all"), ds, batch_size=4, projection=config
    )
    fp = FactoredProjector(model, ClassificationTask("all"), config)
    Z, ref_losses = fp.compute((x.float(), y))
    assert rows.shape == (10, fp.dim) == (10, 3 * 4 * 3)
    assert rel_err(torch.as_tensor(rows), Z) < 1e-6
    assert losses.dtype.name == "float64" and len(losses) == 10
    manifest = fp.manifest()
    layers = manifest["layers"]
    assert manifest["seeding"].startswith("P_in/P_out ~ N(0, 1/k) from SeedSequence")
    assert [(e["module"], e["k_out"], e["k_in"], e["offset"]) for e in layers] == [
        (b.name, *b.shape, b.offset) for b in fp.out_blocks
    ]
    word = int.from_bytes(hashlib.sha256(b"0").digest()[:8], "little")
    P_out, P_in = fp.factors(fp.layers[0])
    assert layers[0] == {
        "module": "0",
        "weight": "0.weight",
        "bias": "0.bias",
        "d_out": 16,
        "d_in": 6,
        "k_out": 3,
        "k_in": 4,
        "offset": 0,
        "seed_out": [1, word, 1],
        "seed_in": [1, word, 0],
        "factors_sha256": hashlib.sha256(
            P_out.numpy().tobytes() + P_in.numpy().tobytes()
        ).hexdigest(),
    }
    assert config.to_dict() == {"dim": 4, "kind": "kronecker", "seed": 1, "dim_out": 3}
    assert ProjectionConfig(**config.to_dict()) == config


class TiedUse(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(F.linear(self.lin(x), self.lin.weight)))


class BatchCentre(nn.Module):
    def forward(self, x):
        return x - x.mean(dim=0, keepdim=True)


def test_refuses_what_it_cannot_compute():
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    with pytest.raises(GradientError, match="do not add up"):
        FactoredProjector(TiedUse(), ClassificationTask(["lin"]), kron(2)).compute((x, y))
    mixing = nn.Sequential(nn.Linear(4, 8), BatchCentre(), nn.Tanh(), nn.Linear(8, 2))
    with pytest.raises(GradientError, match="mixes the rows"):
        FactoredProjector(mixing, ClassificationTask("all"), kron(3)).compute((x, y))
    emb = nn.Sequential(nn.Embedding(5, 4), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(GradientError, match=r"nn.Linear or an nn.Conv2d"):
        FactoredProjector(emb, ClassificationTask("all"), kron(2))
    for conv in (
        nn.Conv2d(2, 2, 3, groups=2),
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
    ):
        with pytest.raises(GradientError, match="not supported"):
            FactoredProjector(nn.Sequential(conv), ClassificationTask("all"), kron(2))
        assert factorable_modules(nn.Sequential(conv)) == []
    with pytest.raises(ValueError, match="kronecker"):
        FactoredProjector(mlp(), ClassificationTask("all"), ProjectionConfig(dim=4))
    with pytest.raises(ValueError, match=">= 1"):
        FactoredProjector(mlp(), ClassificationTask("all"), kron(0))


@pytest.mark.parametrize("order", ["both", "grad", "input"])
def test_every_contraction_order_gives_the_same_rows(monkeypatch, order):
    """The per-layer choice of contraction order is a cost decision only."""
    import gradsift.grads.kronecker as kronecker

    model = cnn(padding=0, stride=2).double().eval()
    task = ClassificationTask("all")
    x, y = data("cnn")
    G, _ = GradientComputer(model, task, method="loop").compute((x, y))
    monkeypatch.setattr(kronecker.LayerProjection, "order", lambda self, T: order)
    for dims in [(3, 2), (4, 6), (64, None)]:
        fp = FactoredProjector(model, task, kron(*dims))
        Z, _ = fp.compute((x, y))
        assert rel_err(Z, projected_truth(G, fp)) < RTOL


# ------------------------------------------------------------------ capture by gradient edges
class SharedAndInplace(nn.Module):
    """One Linear applied twice, each output followed by an in-place ReLU, and a
    convolution followed by an in-place ReLU: δ must be the gradient w.r.t. the output
    *before* the in-place op, summed over both calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.shared = nn.Linear(12, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        h = F.adaptive_avg_pool2d(self.act(self.conv(x)), 2).flatten(1)
        h = torch.relu_(self.shared(h))
        return self.head(torch.relu_(self.shared(torch.tanh(h))))


@pytest.mark.parametrize("dims", [(3, 2), (64, None)])
def test_shared_layer_and_inplace_ops_after_tracked_outputs(dims):
    torch.manual_seed(0)
    model = SharedAndInplace().double().eval()
    task = ClassificationTask("all")
    x, y = data("cnn")
    x = x[:, :, :4, :4].contiguous()
    G, _ = GradientComputer(model, task, method="loop").compute((x, y))
    fp = FactoredProjector(model, task, kron(*dims), chunk_size=3)
    Z, _ = fp.compute((x, y))
    assert rel_err(Z, projected_truth(G, fp)) < RTOL


def test_weight_gradients_are_formed_for_the_first_chunk_only():
    """The sum check compares the first chunk with the parameters' batch gradient; the
    other chunks' backward stops at the layer outputs (no weight-gradient products)."""
    model = cnn().double().eval()
    task = ClassificationTask("all")
    x, y = data("cnn", n=9)
    formed = []
    handles = [p.register_hook(lambda g, name=name: formed.append(name))
               for name, p in model.named_parameters()]  # fmt: skip
    fp = FactoredProjector(model, task, kron(4), chunk_size=3)
    fp.compute((x, y))  # chunks of 3, 3, 3, then the one-row independence check
    fp.compute((x, y))
    for h in handles:
        h.remove()
    assert sorted(formed) == sorted(name for name, _ in model.named_parameters())
    unchecked = FactoredProjector(model, task, kron(4), chunk_size=3, rtol=None)
    formed.clear()
    unchecked.compute((x, y))
    assert formed == []


def test_sum_check_catches_a_wrong_projection(monkeypatch):
    """A contraction that is off for one sample is refused by the first-chunk check."""
    import gradsift.grads.kronecker as kronecker

    combine = kronecker.LayerProjection.combine

    def off_by_a_bit(self, a_s, d_s, out, accumulate):
        combine(self, a_s, d_s, out, accumulate)
        out[0, 0, 0] += 1e-2 * out.norm()

    model = mlp().double().eval()
    x, y = data("mlp")
    monkeypatch.setattr(kronecker.LayerProjection, "combine", off_by_a_bit)
    with pytest.raises(GradientError, match="do not add up"):
        FactoredProjector(model, ClassificationTask("all"), kron(3)).compute((x, y))
    Z, _ = FactoredProjector(model, ClassificationTask("all"), kron(3), rtol=None).compute((x, y))
    assert Z.shape == (len(x), 3 * 3 * 3)  # unchecked, the wrong rows go through
