"""Streaming top-k against a full score matrix and a direct sort."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradsift.store.kernels import pairwise_topk
from gradsift.store.topk import StreamingTopK


def blocks_of(X, size):
    for start in range(0, len(X), size):
        yield start, X[start : start + size]


@pytest.mark.parametrize("block", [1, 7, 50, 1000])
def test_matches_full_matrix(block):
    rng = np.random.default_rng(0)
    train, test = rng.standard_normal((230, 16)), rng.standard_normal((9, 16))
    helpful, harmful = pairwise_topk(blocks_of(train, block), test, k=12)
    full = train @ test.T  # [n_train, n_test]: fine at this size, the reference
    for top, sign in ((helpful, -1), (harmful, 1)):
        values, idx = top.result()
        expected_idx = np.argsort(sign * full, axis=0, kind="stable")[:12].T
        assert np.array_equal(idx, expected_idx)
        assert np.allclose(values, np.take_along_axis(full.T, expected_idx, axis=1))


def test_merge_of_disjoint_parts_equals_whole():
    rng = np.random.default_rng(1)
    scores = torch.as_tensor(rng.standard_normal((100, 5)))
    whole = StreamingTopK(5, 10)
    whole.update(scores, 0)
    a, b = StreamingTopK(5, 10), StreamingTopK(5, 10)
    a.update(scores[:37], 0)
    b.update(scores[37:], 37)
    merged = a.merge(b)
    assert np.array_equal(merged.result()[1], whole.result()[1])


def test_fewer_rows_than_k_and_bad_shapes():
    top = StreamingTopK(2, 5)
    top.update(torch.ones(3, 2), 0)
    assert top.result()[1].shape == (2, 3)
    with pytest.raises(ValueError, match="expected scores"):
        top.update(torch.ones(3, 4), 3)
    with pytest.raises(ValueError, match="k must be"):
        StreamingTopK(2, 0)
