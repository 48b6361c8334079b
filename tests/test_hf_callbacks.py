"""Checkpoints + learning rates for TracIn-CP: the HF Trainer callback (tiny model) and the
plain-loop helper, checked against the schedule's own formula and the live weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("peft", reason="peft is not installed")

from gradsift.checkpoints import CheckpointRecorder  # noqa: E402
from gradsift.experiments.hf_training import FineTuneConfig, fine_tune  # noqa: E402
from gradsift.experiments.llm_tasks import CausalLMData, collate_causal  # noqa: E402
from gradsift.hf.callbacks import LoopCheckpointer, TracInCallback  # noqa: E402
from gradsift.hf.lora import LoraSettings, add_lora  # noqa: E402
from gradsift.hf.models import tiny_causal_lm, word_tokenizer  # noqa: E402
from gradsift.hf.tasks import CausalLMTask  # noqa: E402

RECORDS = [
    {"prompt": f"add one to {a} ->", "text": f"add one to {a} -> {a + 1}</s>"} for a in range(12)
]


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer([r["text"] for r in RECORDS], style="causal")


def lora_lm(tok, seed=0):
    return add_lora(tiny_causal_lm(len(tok), seed=seed), LoraSettings(r=2, seed=seed))


def test_trainer_callback_records_checkpoints_and_used_lr(tok, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = lora_lm(tok)
    data = CausalLMData(tok, RECORDS)
    callback = TracInCallback(every=1, steps=[1, 4], directory=tmp_path / "ckpt")
    lr0, epochs, batch = 1e-2, 2, 4
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch,
        learning_rate=lr0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=lambda items: collate_causal(items, tok.pad_token_id),
        callbacks=[callback],
    )
    trainer.train()
    rec = callback.recorder
    steps_per_epoch = math.ceil(len(RECORDS) / batch)
    total = epochs * steps_per_epoch
    got = [(c.epoch, c.step) for c in rec.checkpoints]
    assert got == [(1, 1), (1, 3), (2, 4), (2, 6)]
    for c in rec.checkpoints:  # the lr that step c.step used: linear decay from lr0
        assert c.lr == pytest.approx(lr0 * (1 - (c.step - 1) / total), rel=1e-9)
    # only the trainable (LoRA) parameters are saved, and the last one is the final model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(rec.final().state) == trainable
    final = dict(model.named_parameters())
    for name, value in rec.final().state.items():
        assert torch.equal(value, final[name].detach().cpu())
    assert not torch.equal(rec.checkpoints[0].state[name], rec.checkpoints[-1].state[name])
    assert "loss" in rec.checkpoints[1].metrics  # epoch checkpoints carry the logged numbers
    again = CheckpointRecorder.from_directory(tmp_path / "ckpt")
    assert [(c.epoch, c.step, c.lr) for c in again.checkpoints] == [
        (c.epoch, c.step, c.lr) for c in rec.checkpoints
    ]


def test_loop_checkpointer_records_lr_before_the_scheduler_moves_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    expected = {}
    with LoopCheckpointer(model, optimizer, every=1, steps=[2]) as ckpt:
        for epoch in (1, 2):
            for s in range(2):
                loss = nn.functional.cross_entropy(
                    model(x[4 * s : 4 * s + 4]), y[4 * s : 4 * s + 4]
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()  # after the step: a naive recorder would log the next lr
                expected[ckpt.step] = {n: p.detach().clone() for n, p in model.named_parameters()}
            ckpt.end_epoch({"val_loss": float(epoch)})
    rec = ckpt.recorder
    assert [(c.epoch, c.step) for c in rec.checkpoints] == [(1, 2), (2, 4)]
    for c in rec.checkpoints:
        assert c.lr == pytest.approx(0.5 * 0.5 ** (c.step - 1))
        assert set(c.state) == {"0.bias", "2.weight", "2.bias"}  # frozen weight not saved
        for n, v in c.state.items():
            assert torch.equal(v, expected[c.step][n])
    assert rec.checkpoints[0].metrics == {"val_loss": 1.0}
    optimizer.step()  # hooks removed on exit: nothing more is counted
    assert ckpt.step == 4


def test_fine_tune_lowers_answer_loss_and_records(tok):
    model = tiny_causal_lm(len(tok), seed=1)  # all parameters trainable
    data = CausalLMData(tok, RECORDS)
    task = CausalLMTask()
    batch = data.collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        before = float(task.per_sample_loss(model, batch).mean())
    rec = CheckpointRecorder(every=1, params=None)
    history = fine_tune(
        model,
        task,
        data,
        FineTuneConfig(epochs=3, batch_size=4, lr=1e-2, schedule="constant"),
        collate_fn=data.collate,
        recorder=rec,
        progress=False,
    )
    with torch.no_grad():
        after = float(task.per_sample_loss(model, batch).mean())
    assert after < 0.8 * before  # measured: 3.25 -> 2.01 (ratio 0.62) for this seed
    assert len(rec) == 3 and all(c.lr == 1e-2 for c in rec.checkpoints)
    assert set(rec.final().state) == set(model.state_dict())
    assert history.steps == 9 and len(history.train_loss) == 3
    assert history.metrics[-1]["train_loss"] == history.train_loss[-1]
    assert not model.training
