"""Random projection: JL inner-product preservation, determinism, blockwise generation."""

from __future__ import annotations

import pytest
import torch
from sklearn.random_projection import johnson_lindenstrauss_min_dim

from gradsift.grads.layout import Block
from gradsift.grads.projection import ProjectionConfig, Projector

KINDS = ["gaussian", "rademacher", "sparse"]


def blocks():
    return [
        Block("a.weight", (50, 100), 0),
        Block("a.bias", (50,), 5000),
        Block("b.weight", (3000,), 5050),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_distances_within_jl_bound(kind):
    n, eps = 20, 0.3
    dim = int(johnson_lindenstrauss_min_dim(n, eps=eps)) + 50
    G = torch.randn(n, 8050, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    P = Projector(blocks(), ProjectionConfig(dim=dim, kind=kind, seed=7), chunk_rows=1000)
    Z = P.project(G)
    assert Z.shape == (n, dim + 50 + dim)  # the 50-entry bias block passes through
    # per projected block, all pairwise squared distances stay within (1 ± eps): the JL guarantee
    for src, dst in zip(P.blocks, P.out_blocks, strict=True):
        d = torch.pdist(G[:, src.offset : src.stop]).pow(2)
        dz = torch.pdist(Z[:, dst.offset : dst.stop]).pow(2)
        assert ((1 - eps) * d <= dz).all() and (dz <= (1 + eps) * d).all()


@pytest.mark.parametrize("kind", KINDS)
def test_inner_products_unbiased_and_concentrated(kind):
    G = torch.randn(10, 8050, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = G @ G.T
    errors = []
    for seed in range(8):
        Z = Projector(blocks(), ProjectionConfig(dim=512, kind=kind, seed=seed)).project(G)
        errors.append(Z @ Z.T - exact)
    mean_err = torch.stack(errors).mean(0)
    scale = exact.diag().mean()
    # one projection errs by ~sqrt(2/k)·‖x‖‖y‖ ≈ 0.06; the mean over 8 seeds is ~3x smaller
    assert torch.stack(errors).abs().max() / scale < 5 * (2 / 512) ** 0.5
    assert mean_err.abs().max() / scale < 2.5 * (2 / 512 / 8) ** 0.5 * 2


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_and_batch_independent(kind):
    G = torch.randn(12, 8050)
    a = Projector(blocks(), ProjectionConfig(dim=64, kind=kind, seed=1)).project(G)
    b = Projector(blocks(), ProjectionConfig(dim=64, kind=kind, seed=1), cache_bytes=0).project(G)
    c = Projector(blocks(), ProjectionConfig(dim=64, kind=kind, seed=2)).project(G)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    part = Projector(blocks(), ProjectionConfig(dim=64, kind=kind, seed=1)).project(G[3:7])
    assert torch.allclose(part, a[3:7], atol=1e-6)


def test_sparse_density():
    P = Projector([Block("w", (10000,), 0)], ProjectionConfig(dim=256, kind="sparse", seed=0))
    R = P._matrix(0, 0, 8192, 10000, torch.float64)
    density = (R != 0).double().mean().item()
    assert abs(density - 1 / 100) < 0.002  # s = sqrt(10000) = 100


def test_bad_settings():
    with pytest.raises(ValueError, match="kind"):
        Projector(blocks(), ProjectionConfig(dim=8, kind="fourier"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected gradients"):
        Projector(blocks(), ProjectionConfig(dim=8)).project(torch.zeros(2, 10))


def test_kronecker_kind_is_not_a_flat_projection_and_dense_manifest_unchanged():
    with pytest.raises(ValueError, match="FactoredProjector"):
        Projector(blocks(), ProjectionConfig(dim=8, kind="kronecker"))
    with pytest.raises(ValueError, match="dim_out"):
        Projector(blocks(), ProjectionConfig(dim=8, kind="gaussian", dim_out=4))
    assert ProjectionConfig(dim=8, kind="sparse", seed=3).to_dict() == {
        "dim": 8,
        "kind": "sparse",
        "seed": 3,
    }
    kron = ProjectionConfig(dim=8, kind="kronecker", seed=3)
    assert kron.to_dict() == {"dim": 8, "kind": "kronecker", "seed": 3, "dim_out": None}
    assert ProjectionConfig(**kron.to_dict()) == kron
