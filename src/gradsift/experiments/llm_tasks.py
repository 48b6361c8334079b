"""The influential-data benchmark tasks of DataInf (and of OGA's LLM section).

Three instruction-tuning sets ship with gradsift (``gradsift/data/llm_influence_tasks``,
MIT licence, from ykwon0407/DataInf): ``sentence_transformations``,
``math_with_reason``, ``math_without_reason``. Each has 10 classes (``variation``) of 90
training and 10 test prompts. A model is fine-tuned on the training ``text``
(= prompt + answer); for each test prompt, a method ranks the 900 training samples and
is scored by how well the test prompt's own class comes first (AUC, recall@90). Class
labels are for evaluation only, never for scoring.

- :func:`load_influence_task` → :class:`InfluenceTask` (records + integer classes);
- :func:`encode_example`: prompt and answer token ids with the prompt masked
  (``labels = -100``), the answer followed by the end-of-sequence token;
- :class:`CausalLMData` + :func:`collate_causal`: torch Dataset / right-padding collate
  giving the batches of :class:`gradsift.hf.tasks.CausalLMTask`;
- :func:`class_retrieval_metrics`: AUC and recall@k per test prompt, averaged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import Dataset

from gradsift.errors import GradsiftError
from gradsift.hf.tasks import IGNORE_INDEX

__all__ = [
    "TASK_NAMES",
    "CausalLMData",
    "InfluenceTask",
    "class_retrieval_metrics",
    "collate_causal",
    "encode_example",
    "load_influence_task",
]

TASK_NAMES = ("sentence_transformations", "math_with_reason", "math_without_reason")
_END = "</s>"


@dataclass
class InfluenceTask:
    """One benchmark task.

    Attributes:
        name: task name.
        train, test: records (dicts with ``prompt``, ``text``, ``answer``, ``variation``,
            maybe ``reason``); 900 and 100 rows.
        classes: the class (variation) names in order of first appearance in train.
        train_class, test_class: int64 ``[n]`` class index of each record (evaluation
            only).
    """

    name: str
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    classes: list[str]
    train_class: np.ndarray
    test_class: np.ndarray

    def answer_text(self, record: dict[str, Any]) -> str:
        """What follows the prompt in ``text``, without the trailing ``</s>``."""
        return _answer_text(record)


def _data_file(name: str) -> Any:
    # one segment per joinpath: gradsift may be a namespace package (MultiplexedPath)
    return (
        resources.files("gradsift").joinpath("data").joinpath("llm_influence_tasks").joinpath(name)
    )


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    path = _data_file(name)
    if not path.is_file():
        raise GradsiftError(
            f"packaged data file gradsift/data/llm_influence_tasks/{name} is missing; "
            "reinstall gradsift (the data ships with it)"
        )
    with path.open("r", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_influence_task(name: str) -> InfluenceTask:
    """Load one of :data:`TASK_NAMES` from the data packaged with gradsift."""
    if name not in TASK_NAMES:
        raise GradsiftError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    train, test = _read_jsonl(f"{name}_train.jsonl"), _read_jsonl(f"{name}_test.jsonl")
    classes = list(dict.fromkeys(r["variation"] for r in train))
    index = {c: i for i, c in enumerate(classes)}
    unknown = {r["variation"] for r in test} - set(index)
    if unknown:
        raise GradsiftError(f"{name}: test classes {sorted(unknown)} do not occur in train")
    for r in train + test:
        if not r["text"].startswith(r["prompt"]):
            raise GradsiftError(f"{name}: a record's text does not start with its prompt")
    return InfluenceTask(
        name=name,
        train=train,
        test=test,
        classes=classes,
        train_class=np.array([index[r["variation"]] for r in train], dtype=np.int64),
        test_class=np.array([index[r["variation"]] for r in test], dtype=np.int64),
    )


def _answer_text(record: dict[str, Any]) -> str:
    answer = record["text"][len(record["prompt"]) :]
    return answer[: -len(_END)] if answer.endswith(_END) else answer


def encode_example(
    tokenizer: Any, prompt: str, answer: str, max_length: int = 128
) -> dict[str, torch.Tensor]:
    """Token ids of ``prompt + answer + <eos>`` with the prompt masked.

    Prompt and answer are tokenised separately (no special tokens), so the boundary is
    exact; the tokenizer's ``eos_token_id`` ends the answer. If the sequence is longer
    than ``max_length``, tokens are dropped from the *start of the prompt* (the answer is
    kept whole; an answer longer than ``max_length - 1`` is an error).

    Returns ``{"input_ids", "attention_mask", "labels"}``, int64 ``[L]`` each, where
    ``labels`` is ``-100`` on prompt tokens and the token id on answer tokens.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise GradsiftError("the tokenizer has no eos_token_id to end the answer with")
    p_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    a_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"]) + [int(eos)]
    if len(a_ids) > max_length - 1:
        raise GradsiftError(
            f"the answer has {len(a_ids)} tokens but max_length is {max_length}: raise max_length"
        )
    keep = max_length - len(a_ids)
    p_ids = p_ids[-keep:] if keep < len(p_ids) else p_ids
    ids = p_ids + a_ids
    labels = [IGNORE_INDEX] * len(p_ids) + a_ids
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.ones(len(ids), dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


class CausalLMData(Dataset):
    """Encoded ``(prompt, answer)`` pairs: each item is the dict of :func:`encode_example`."""

    def __init__(
        self,
        tokenizer: Any,
        records: Sequence[dict[str, Any]],
        max_length: int = 128,
    ) -> None:
        if not records:
            raise GradsiftError("no records to encode")
        self.items = [
            encode_example(tokenizer, r["prompt"], _answer_text(r), max_length) for r in records
        ]
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(tokenizer.eos_token_id if pad is None else pad)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]

    def lengths(self) -> np.ndarray:
        """Token count of each item, int64 ``[n]``."""
        return np.array([len(it["input_ids"]) for it in self.items], dtype=np.int64)

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return collate_causal(items, self.pad_token_id)


def collate_causal(
    items: list[dict[str, torch.Tensor]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad a list of :func:`encode_example` dicts to ``[B, T_max]``
    (``input_ids`` with ``pad_token_id``, ``attention_mask`` with 0, ``labels`` with -100)."""
    if not items:
        raise GradsiftError("empty batch")
    width = max(len(it["input_ids"]) for it in items)
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out = {}
    for key, value in fill.items():
        rows = torch.full((len(items), width), value, dtype=torch.long)
        for i, it in enumerate(items):
            rows[i, : len(it[key])] = it[key]
        out[key] = rows
    return out


def class_retrieval_metrics(
    scores: np.ndarray, train_class: np.ndarray, test_class: np.ndarray, k: int = 90
) -> dict[str, float]:
    """How well each test prompt's scores rank its own class first.

    Args:
        scores: ``[n_test, n_train]``, higher = more influential (ties broken by index).
        train_class, test_class: int class of each train / test sample.
        k: the cut-off of recall@k (90 = the class size in these tasks).

    Returns:
        ``{"auc", "auc_std", "recall", "recall_std"}``: the mean (and std) over test prompts
        of the ROC AUC with same-class as positive, and of the fraction of same-class
        samples among the top ``k``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(test_class), len(train_class)):
        raise GradsiftError(
            f"scores must be [n_test, n_train] = [{len(test_class)}, {len(train_class)}], "
            f"got {scores.shape}"
        )
    if not np.all(np.isfinite(scores)):
        raise GradsiftError("scores contain NaN or Inf")
    aucs, recalls = [], []
    for t, c in enumerate(test_class):
        positive = train_class == c
        n_pos = int(positive.sum())
        if n_pos == 0 or n_pos == len(train_class):
            raise GradsiftError(f"test prompt {t}: class {c} is absent from or all of train")
        aucs.append(roc_auc_score(positive, scores[t]))
        top = np.argsort(-scores[t], kind="stable")[:k]
        recalls.append(float(positive[top].sum()) / min(k, n_pos))
    return {
        "auc": float(np.mean(aucs)),
        "auc_std": float(np.std(aucs)),
        "recall": float(np.mean(recalls)),
        "recall_std": float(np.std(recalls)),
    }
