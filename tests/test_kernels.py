"""One kernel per score: the in-memory and the store paths agree, and match direct formulas.

References are independent of the kernels: a stable ``argsort`` of the full score matrix
for top-k, ``np.einsum("id,de,ie->i", G, P, G)`` for self-influence.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradsift.detect import DetectionContext
from gradsift.detect.base import iter_row_blocks
from gradsift.distributed.scoring import distributed_scores, distributed_topk, self_influence
from gradsift.errors import GradsiftError
from gradsift.grads.extract import ExtractConfig, extract
from gradsift.influence import InfluenceScorer
from gradsift.store.gradient_store import GradientStore, StoreSettings
from gradsift.store.kernels import (
    concat_rows,
    pairwise_scores,
    pairwise_topk,
    quadratic_form,
    self_influence_rows,
)
from gradsift.task import ClassificationTask

pytestmark = pytest.mark.usefixtures("one_thread")


def write_store(path, G, rows_per_shard):
    settings = StoreSettings(
        fingerprint="kernels-test",
        tracked=[{"name": "w", "shape": [G.shape[1]]}],
        dim=G.shape[1],
        n_rows=len(G),
        rows_per_shard=rows_per_shard,
        dtype=str(G.dtype),
    )
    store = GradientStore.create(path, settings)
    for shard in range(store.n_shards):
        a, b = store.shard_range(shard)
        store.write_shard(shard, G[a:b], np.zeros(b - a))
    store.finalize()
    return GradientStore.open(path)


def sorted_topk(full, k):
    """Reference: (helpful, harmful) ``(values, indices)`` by a stable sort of ``[n, m]``."""
    out = []
    for sign in (-1, 1):
        idx = np.argsort(sign * full, axis=0, kind="stable")[:k].T
        out.append((np.take_along_axis(full.T, idx, axis=1), idx))
    return out


def assert_same_topk(got, expected):
    for top, (values, idx) in zip(got, expected, strict=True):
        v, i = top.result()
        np.testing.assert_array_equal(i, idx)
        np.testing.assert_array_equal(v, values)


def test_topk_in_memory_and_over_a_store_are_identical_with_exact_ties(tmp_path):
    rng = np.random.default_rng(0)
    G = rng.integers(-2, 3, size=(230, 6)).astype(np.float32)  # integer scores: exact ties
    test = rng.integers(-2, 3, size=(9, 6)).astype(np.float32)
    full = G.astype(np.float64) @ test.T.astype(np.float64)
    expected = sorted_topk(full, 8)
    assert all(len(np.unique(v)) < len(v) for v in expected[0][0])  # ties at every column
    store = write_store(tmp_path / "s", G, rows_per_shard=20)
    assert_same_topk(pairwise_topk(iter_row_blocks(G, 17), test, 8), expected)
    assert_same_topk(pairwise_topk(store.iter_blocks(3), test, 8), expected)
    assert_same_topk(distributed_topk(store, test, 8, block_rows=7), expected)
    assert_same_topk(distributed_topk(store, test, 8), expected)
    np.testing.assert_array_equal(pairwise_scores(store.iter_blocks(9), test), full)


@pytest.mark.parametrize("method", ["dot", "cosine", "if-exact"])
def test_scorer_top_k_equals_the_store_path(tmp_path, method):
    """Gradients computed on the fly vs. extracted to a store, scored by both paths;
    duplicated training rows give exactly tied scores."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    train = (torch.cat([x, x[:12]]), torch.cat([y, y[:12]]))  # rows 30+i == rows i
    test = (x[:5], y[:5])
    task = ClassificationTask("all")
    kw = {"damping": 1.0} if method == "if-exact" else {}  # untrained: H is indefinite
    scorer = InfluenceScorer(model, task, method, block_rows=8, **kw).fit(train)
    in_memory = scorer.top_k(train, test, k=6)
    store = extract(
        model, task, train, tmp_path / "s", ExtractConfig(rows_per_shard=10, dtype="float64")
    )
    Q = scorer.test_vectors(test)
    score = "cosine" if method == "cosine" else "dot"  # Q is already normalised for cosine
    paths = [
        distributed_topk(store, Q, 6, score=score, block_rows=4),
        pairwise_topk(store.iter_blocks(3), Q, 6, score=score),
    ]
    from_store = scorer.top_k(store, test, k=6)
    for got in (from_store, in_memory):
        np.testing.assert_array_equal(got.helpful_indices, in_memory.helpful_indices)
        np.testing.assert_array_equal(got.harmful_indices, in_memory.harmful_indices)
    for helpful, harmful in paths:
        np.testing.assert_array_equal(helpful.result()[1], in_memory.helpful_indices)
        np.testing.assert_array_equal(harmful.result()[1], in_memory.harmful_indices)
        np.testing.assert_allclose(helpful.result()[0], in_memory.helpful_scores, rtol=1e-12)
        np.testing.assert_allclose(harmful.result()[0], in_memory.harmful_scores, rtol=1e-12)
    full = scorer.scores(train, test)
    (hv, hi), (av, ai) = sorted_topk(full, 6)
    np.testing.assert_array_equal(in_memory.helpful_indices, hi)
    np.testing.assert_array_equal(in_memory.harmful_indices, ai)
    assert any(len(np.unique(v)) < len(v) for v in hv)  # the duplicates tie in the top-k


class MatrixSolver:
    """The solver interface (``solve(V [r, D]) → P V``) around a matrix."""

    def __init__(self, P):
        self.P = torch.as_tensor(P)

    def solve(self, V):
        return V @ self.P.to(V.dtype)


def test_self_influence_kernel_equals_einsum(tmp_path):
    rng = np.random.default_rng(2)
    G = rng.standard_normal((53, 7)).astype(np.float32)
    A = rng.standard_normal((7, 7))
    P = A @ A.T / 7 + np.eye(7)
    G64 = G.astype(np.float64)
    expected = np.einsum("id,de,ie->i", G64, P, G64)
    for p in (P, torch.as_tensor(P), MatrixSolver(P), lambda V: V @ torch.as_tensor(P)):
        got = concat_rows(self_influence_rows(iter_row_blocks(G, 8), p))
        assert got.dtype == np.float64 and got.shape == (53,)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(
        concat_rows(self_influence_rows(iter_row_blocks(G, 5))), (G64**2).sum(1), rtol=1e-12
    )
    store = write_store(tmp_path / "s", G, rows_per_shard=11)
    np.testing.assert_allclose(self_influence(store, P, block_rows=4), expected, rtol=1e-12)
    np.testing.assert_allclose(self_influence(store, MatrixSolver(P)), expected, rtol=1e-12)
    S = (G64 @ P).astype(np.float32)  # the preconditioned rows s_i = P g_i, as a store
    pre = write_store(tmp_path / "pre", S, rows_per_shard=11)
    np.testing.assert_allclose(
        self_influence(store, pre), np.einsum("id,id->i", G64, S.astype(np.float64)), rtol=1e-12
    )
    with pytest.raises(GradsiftError, match="returned"):
        quadratic_form(G64, G64[:, :3])
    with pytest.raises(GradsiftError, match=r"must be \[7, 7\]"):
        list(self_influence_rows(iter_row_blocks(G, 5), np.eye(3), dim=7))
    with pytest.raises(GradsiftError, match="starts at"):
        concat_rows([(0, np.zeros(2)), (3, np.zeros(1))])


def test_a_self_influence_detector_scores_a_store_like_any_detector(tmp_path):
    """distributed_scores fits ``self-if-exact`` with the context, then streams the store
    through the same quadratic-form kernel: equal to the scorer's self-influence."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double().eval()
    g = torch.Generator().manual_seed(1)
    train = (torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,)))
    task = ClassificationTask("all")
    store = extract(
        model, task, train, tmp_path / "s", ExtractConfig(rows_per_shard=16, dtype="float64")
    )
    context = DetectionContext(model=model, task=task, data=train)
    scores, info = distributed_scores(
        store, "self-if-exact", sample_size=10, block_rows=5, context=context, damping=1.0
    )
    reference = InfluenceScorer(model, task, "if-exact", damping=1.0).fit(train)
    np.testing.assert_allclose(scores, reference.self_influence(train), rtol=1e-10)
    assert info["detector"]["name"] == "self-if-exact"
    with pytest.raises(ValueError, match="needs the model"):
        distributed_scores(store, "self-if-exact")
