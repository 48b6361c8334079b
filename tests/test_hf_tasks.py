"""HF tasks: per-sample gradients with padding vs unpadded single-sample autograd, prompt
masking vs a hand-computed loss, tracked-parameter selection, the hooks path and the
fallbacks when vmap cannot run a model. Tiny random models built locally."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("peft", reason="peft is not installed")

from gradsift.errors import GradientError  # noqa: E402
from gradsift.experiments.llm_tasks import collate_causal, encode_example  # noqa: E402
from gradsift.grads.computer import GradientComputer  # noqa: E402
from gradsift.grads.hooks import LinearHookGradients  # noqa: E402
from gradsift.hf.models import (  # noqa: E402
    LoraSettings,
    add_lora,
    attention_bias,
    tiny_causal_lm,
    tiny_sentence_classifier,
    word_tokenizer,
)
from gradsift.hf.tasks import (  # noqa: E402
    IGNORE_INDEX,
    CausalLMTask,
    SequenceClassificationTask,
    resolve_tracked,
)

TEXTS = [
    "a gripping and beautifully acted drama",
    "dull",
    "the plot goes nowhere and the jokes fall flat every single time",
    "fun summer movie",
    "not worth the price of admission",
]
LABELS = torch.tensor([1, 0, 0, 1, 0])
PAIRS = [  # (prompt, answer): prompts and answers of different lengths -> padding
    ("reverse the words : red green blue ->", " blue green red"),
    ("reverse : cat dog ->", " dog cat"),
    ("capitalise every word : one two three four five six ->", " One Two Three Four Five Six"),
    ("repeat each word : sun ->", " sun sun"),
]
# Measured: the largest relative error over all 58 comparisons in this file (padded batch
# vs unpadded single sample, float32) was 4.1e-7. 1e-5 leaves a 25x margin and still
# catches any masking bug (a pad token leaking into attention changes gradients by > 1e-2).
RTOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def bert_tok():
    return word_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def causal_tok():
    return word_tokenizer([p + a for p, a in PAIRS], style="causal", lowercase=False)


def cls_batch(tok):
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any(), "the batch must contain padding"
    return ({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, LABELS)


def causal_batch(tok):
    items = [encode_example(tok, p, a) for p, a in PAIRS]
    return items, collate_causal(items, tok.pad_token_id)


def truth_classification(model, tracked, batch):
    """Independent ground truth: each sample alone, unpadded, no mask, plain autograd."""
    inputs, labels = batch
    rows = []
    for i in range(len(labels)):
        n_tok = int(inputs["attention_mask"][i].sum())
        ids = inputs["input_ids"][i, :n_tok][None]
        logits = model(ids)
        loss = F.cross_entropy(logits, labels[i : i + 1])
        grads = torch.autograd.grad(loss, list(tracked.values()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def hand_causal_loss(model, item):
    """Mean over answer tokens of -log p(token | previous tokens), one token at a time."""
    ids, labels = item["input_ids"], item["labels"]
    logits = model(input_ids=ids[None]).logits[0]  # unpadded, no attention mask
    terms = []
    for t in range(1, len(ids)):
        if labels[t] != IGNORE_INDEX:
            terms.append(-torch.log_softmax(logits[t - 1], dim=-1)[ids[t]])
    return torch.stack(terms).mean()


def truth_causal(model, tracked, items):
    rows = []
    for item in items:
        grads = torch.autograd.grad(hand_causal_loss(model, item), list(tracked.values()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


# --------------------------------------------------------------------- classification
@pytest.mark.parametrize("method", ["auto", "vmap", "loop"])
@pytest.mark.parametrize("tracked", ["head", "all"])
def test_classification_padded_equals_unpadded(bert_tok, tracked, method):
    model = tiny_sentence_classifier(len(bert_tok), seed=1)
    task = SequenceClassificationTask(tracked)
    batch = cls_batch(bert_tok)
    computer = GradientComputer(model, task, method=method)
    G, losses = computer.compute(batch)
    truth = truth_classification(model, task.tracked_parameters(model), batch)
    assert G.shape == truth.shape
    assert rel_err(G, truth) < RTOL
    if tracked == "head" and method == "auto":
        assert computer.method == "closed_form"  # exact closed form applies to the head
    # per-row check too, so one bad row cannot hide behind the norm of the others
    for i in range(len(LABELS)):
        assert rel_err(G[i], truth[i]) < RTOL


def test_classification_lora_vmap_and_hooks_equal_unpadded(bert_tok):
    model = add_lora(
        tiny_sentence_classifier(len(bert_tok), seed=2),
        LoraSettings(r=2, modules_to_save=["head"], init_lora_weights=False, seed=3),
    ).eval()
    task = SequenceClassificationTask()  # auto -> LoRA adapters of the peft model
    params = task.tracked_parameters(model)
    assert params and all("lora_" in n for n in params)
    assert len(params) == 2 * 2 * 2  # 2 layers x (query, value) x (A, B)
    batch = cls_batch(bert_tok)
    truth = truth_classification(model, params, batch)
    G_vmap, _ = GradientComputer(model, task, method="vmap").compute(batch)
    G_hook, _ = LinearHookGradients(model, task).compute(batch)
    assert rel_err(G_vmap, truth) < RTOL
    assert rel_err(G_hook, truth) < RTOL


def test_classification_losses_match_truth(bert_tok):
    model = tiny_sentence_classifier(len(bert_tok), seed=4)
    batch = cls_batch(bert_tok)
    _, losses = GradientComputer(model, SequenceClassificationTask("head")).compute(batch)
    for i, text in enumerate(TEXTS):
        ids = bert_tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = F.cross_entropy(model(ids), LABELS[i : i + 1])
        assert math.isclose(float(losses[i]), float(ref), rel_tol=1e-5)


def test_hf_sequence_classification_model(bert_tok):
    """A plain transformers AutoModelForSequenceClassification (pooler + classifier)."""
    from transformers import BertForSequenceClassification

    from gradsift.hf.models import tiny_bert_config

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(len(bert_tok), num_labels=2)).eval()
    task = SequenceClassificationTask("head")
    batch = cls_batch(bert_tok)
    computer = GradientComputer(model, task)
    G, _ = computer.compute(batch)
    assert computer.method == "closed_form"
    inputs, labels = batch
    rows = []
    for i in range(len(labels)):
        n_tok = int(inputs["attention_mask"][i].sum())
        logits = model(input_ids=inputs["input_ids"][i, :n_tok][None]).logits
        loss = F.cross_entropy(logits, labels[i : i + 1])
        w, b = model.classifier.weight, model.classifier.bias
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [w, b])]))
    assert rel_err(G, torch.stack(rows)) < RTOL
    G_vmap, _ = GradientComputer(model, SequenceClassificationTask("all"), method="vmap").compute(
        batch
    )
    assert G_vmap.shape[1] == sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------- causal LM
def test_causal_lm_loss_masks_prompt(causal_tok):
    model = tiny_causal_lm(len(causal_tok), seed=5)
    items, batch = causal_batch(causal_tok)
    task = CausalLMTask("all")
    with torch.no_grad():
        losses = task.per_sample_loss(model, batch)
        for i, item in enumerate(items):
            assert math.isclose(
                float(losses[i]), float(hand_causal_loss(model, item)), rel_tol=1e-5
            )
    # the prompt is context only: its labels are -100, answer labels are the tokens
    for (prompt, _), item in zip(PAIRS, items, strict=True):
        n_prompt = len(causal_tok(prompt, add_special_tokens=False)["input_ids"])
        assert (item["labels"][:n_prompt] == IGNORE_INDEX).all()
        assert (item["labels"][n_prompt:] == item["input_ids"][n_prompt:]).all()
        assert int(item["input_ids"][-1]) == causal_tok.eos_token_id


def test_causal_lm_sum_reduction(causal_tok):
    model = tiny_causal_lm(len(causal_tok), seed=5)
    items, batch = causal_batch(causal_tok)
    with torch.no_grad():
        mean = CausalLMTask("all").per_sample_loss(model, batch)
        total = CausalLMTask("all", reduction="sum").per_sample_loss(model, batch)
    counts = torch.tensor([int((it["labels"] != IGNORE_INDEX).sum()) for it in items])
    torch.testing.assert_close(total, mean * counts, rtol=1e-5, atol=0)


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_causal_lm_all_params_padded_equals_unpadded(causal_tok, method):
    model = tiny_causal_lm(len(causal_tok), seed=6)
    task = CausalLMTask("all")
    items, batch = causal_batch(causal_tok)
    G, _ = GradientComputer(model, task, method=method).compute(batch)
    truth = truth_causal(model, task.tracked_parameters(model), items)
    for i in range(len(items)):
        assert rel_err(G[i], truth[i]) < RTOL


def test_causal_lm_lora_hooks_and_vmap_equal_unpadded(causal_tok):
    model = add_lora(
        tiny_causal_lm(len(causal_tok), seed=7),
        LoraSettings(r=4, init_lora_weights=False, seed=1),
    ).eval()
    task = CausalLMTask()  # auto -> LoRA
    params = task.tracked_parameters(model)
    assert all("lora_" in n for n in params)
    items, batch = causal_batch(causal_tok)
    truth = truth_causal(model, params, items)
    G_hook, l_hook = LinearHookGradients(model, task, chunk_size=3).compute(batch)
    G_vmap, _ = GradientComputer(model, task, method="vmap").compute(batch)
    for i in range(len(items)):
        assert rel_err(G_hook[i], truth[i]) < RTOL
        assert rel_err(G_vmap[i], truth[i]) < RTOL
    with torch.no_grad():
        ref = torch.stack([hand_causal_loss(model, it) for it in items])
    torch.testing.assert_close(l_hook, ref, rtol=1e-5, atol=0)


def test_causal_lm_rejects_sample_without_answer(causal_tok):
    model = tiny_causal_lm(len(causal_tok), seed=0)
    _, batch = causal_batch(causal_tok)
    batch["labels"][2] = IGNORE_INDEX
    with pytest.raises(GradientError, match=r"no answer token.*\[12\]"):
        GradientComputer(model, CausalLMTask("all"), method="vmap").compute(batch, first_index=10)


def test_attention_bias_shape_and_values():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    bias = attention_bias(mask, torch.float32, causal=True)
    assert bias.shape == (2, 1, 3, 3)
    neg = torch.finfo(torch.float32).min
    assert bias[0, 0, 2, 2] == neg and bias[0, 0, 1, 0] == 0 and bias[1, 0, 0, 1] == neg
    bi = attention_bias(mask, torch.float32, causal=False)
    assert bi[1, 0, 0, 2] == 0 and bi[0, 0, 0, 2] == neg


# --------------------------------------------------------------------- tracked selection
def test_tracked_resolution(bert_tok, causal_tok):
    plain = tiny_sentence_classifier(len(bert_tok))
    assert list(resolve_tracked(plain, "auto")) == ["head.weight", "head.bias"]
    assert list(resolve_tracked(plain, "head")) == ["head.weight", "head.bias"]
    n_all = len(resolve_tracked(plain, "all"))
    assert n_all == len([p for p in plain.parameters() if p.requires_grad])
    named = resolve_tracked(plain, ["encoder.encoder.layer.1.output.dense"])
    assert list(named) == [
        "encoder.encoder.layer.1.output.dense.weight",
        "encoder.encoder.layer.1.output.dense.bias",
    ]
    with pytest.raises(GradientError, match="no trainable LoRA adapters"):
        resolve_tracked(plain, "lora")
    with pytest.raises(GradientError, match="unknown tracking spec"):
        resolve_tracked(plain, "heads")
    lm = tiny_causal_lm(len(causal_tok))
    assert len(CausalLMTask().tracked_parameters(lm)) == len(list(lm.parameters()))
    lora = add_lora(tiny_causal_lm(len(causal_tok)), LoraSettings(r=2))
    found = CausalLMTask().tracked_parameters(lora)
    assert found and all(".lora_A." in n or ".lora_B." in n for n in found)
    assert {n.split(".")[-4] for n in found} == {"q_proj", "v_proj"}


def test_tied_head_refused(causal_tok):
    lm = tiny_causal_lm(len(causal_tok))
    with pytest.raises(GradientError, match="tied"):
        resolve_tracked(lm, "head")


# --------------------------------------------------------------------- fallbacks
class RawMaskClassifier(nn.Module):
    """Hands the 2-D mask straight to transformers, whose mask code does data-dependent
    checks (``mask.all()``) that vmap cannot trace: the engine must fall back."""

    expects_2d_attention_mask = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        hidden = self.inner.encoder.encoder_forward_raw(input_ids, attention_mask)
        return self.inner.head(hidden)


def raw_mask_model(vocab, seed):
    inner = tiny_sentence_classifier(vocab, seed=seed)

    def encoder_forward_raw(ids, mask):
        h = inner.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(1) / m.sum(1)

    inner.encoder.encoder_forward_raw = encoder_forward_raw
    return RawMaskClassifier(inner).eval()


def test_vmap_failure_falls_back_and_hooks_still_exact(bert_tok):
    model = raw_mask_model(len(bert_tok), seed=8)
    task = SequenceClassificationTask(["inner.encoder.encoder.layer.1.attention.self.query"])
    batch = cls_batch(bert_tok)
    inputs, labels = batch
    tracked = task.tracked_parameters(model)
    rows = []
    for i in range(len(labels)):
        n_tok = int(inputs["attention_mask"][i].sum())
        ids = inputs["input_ids"][i, :n_tok][None]
        loss = F.cross_entropy(model(ids, torch.ones_like(ids)), labels[i : i + 1])
        rows.append(
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(tracked.values()))])
        )
    truth = torch.stack(rows)
    with pytest.raises(GradientError, match="vmap cannot run this model"):
        GradientComputer(model, task, method="vmap").compute(batch)
    auto = GradientComputer(model, task, method="auto")  # rows independent, linear only
    assert auto.method == "hooks"
    G_auto, _ = auto.compute(batch)
    G_hook, _ = LinearHookGradients(model, task).compute(batch)
    assert rel_err(G_auto, truth) < RTOL
    assert rel_err(G_hook, truth) < RTOL

    class RowsMayMix(SequenceClassificationTask):
        rows_independent = False  # auto may not take hooks: vmap, then the loop

    fallback = GradientComputer(model, RowsMayMix(task.tracked), method="auto")
    with pytest.warns(UserWarning, match="falling back"):
        G_loop, _ = fallback.compute(batch)
    assert fallback.method == "loop"
    assert rel_err(G_loop, truth) < RTOL


class TiedUse(nn.Module):
    """Uses ``lin.weight`` a second time outside the module call (as tied weights do)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = self.lin(x)
        return self.out(torch.tanh(F.linear(h, self.lin.weight)))


def test_hooks_refuse_what_they_cannot_compute(causal_tok):
    from gradsift.task import ClassificationTask

    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    with pytest.raises(GradientError, match="do not add up"):
        LinearHookGradients(TiedUse(), ClassificationTask(["lin"])).compute((x, y))
    ok = LinearHookGradients(TiedUse(), ClassificationTask(["out"])).compute((x, y))[0]
    ref = GradientComputer(TiedUse(), ClassificationTask(["out"]), method="loop").compute((x, y))[0]
    assert rel_err(ok, ref) < RTOL
    lm = tiny_causal_lm(len(causal_tok))
    with pytest.raises(GradientError, match="not the weight or bias of an nn.Linear"):
        LinearHookGradients(lm, CausalLMTask("all"))
    assert not LinearHookGradients.supports(lm, CausalLMTask("all"))


def test_train_mode_dropout_refused(bert_tok):
    model = tiny_sentence_classifier(len(bert_tok)).train()
    with pytest.raises(GradientError, match="train mode"):
        LinearHookGradients(model, SequenceClassificationTask("head")).compute(cls_batch(bert_tok))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.eval()
        LinearHookGradients(model, SequenceClassificationTask("head")).compute(cls_batch(bert_tok))


# --------------------------------------------------------------------- Fisher curvature
def test_gradient_fisher_operator_with_lissa_and_datainf():
    from gradsift.grads.layout import Block
    from gradsift.influence.fisher import GradientFisherOperator
    from gradsift.influence.solvers import DataInfSolver, LiSSASolver

    gen = torch.Generator().manual_seed(0)
    G = torch.randn(40, 7, generator=gen, dtype=torch.float64)
    layout = [Block("a", (3,), 0), Block("b", (2, 2), 3)]
    op = GradientFisherOperator(G, layout, block_diagonal=True, weight_decay=0.01)
    dense = torch.zeros(7, 7, dtype=torch.float64)
    for b in layout:  # independent ground truth: block-diagonal (1/n) GᵀG + wd I
        Gb = G[:, b.offset : b.stop]
        dense[b.offset : b.stop, b.offset : b.stop] = Gb.T @ Gb / 40
    dense += 0.01 * torch.eye(7, dtype=torch.float64)
    torch.testing.assert_close(op.dense(), dense)
    full = GradientFisherOperator(G, layout, block_diagonal=False)
    torch.testing.assert_close(full.dense(), G.T @ G / 40)
    lam, _ = op.top_eigenvalue(iters=500, tol=1e-12)
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(dense).max()), rel=1e-6)
    # LiSSA on this operator solves (F + λI) x = v (full-batch chains converge here)
    V = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    solver = LiSSASolver(damping=0.1, steps=3000, batch_size=None).fit_operator(op)
    X = solver.solve(V)
    ref = torch.linalg.solve(dense + 0.1 * torch.eye(7, dtype=torch.float64), V.T).T
    assert rel_err(X, ref) < 1e-6
    # DataInf's closed form is exact for a single training row (Sherman–Morrison)
    one = GradientFisherOperator(G[:1], layout, block_diagonal=True)
    di = DataInfSolver(damping=0.5).fit_gradients(G[:1], layout)
    ref1 = torch.linalg.solve(one.dense() + 0.5 * torch.eye(7, dtype=torch.float64), V.T).T
    assert rel_err(di.solve(V), ref1) < 1e-10
