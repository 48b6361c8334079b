"""Tests for gradsift.experiments.models: Linear head last, output shapes, seeded construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsift.experiments.models import build_model, head, logistic_regression, mlp, small_cnn


def _last_module(model: nn.Module) -> nn.Module:
    return list(model.modules())[-1]


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("model", "x"),
    [
        (logistic_regression(64, 10), torch.randn(5, 64)),
        (logistic_regression(64, 10), torch.randn(5, 8, 8)),
        (mlp(64, 10, hidden=(32, 16), dropout=0.1), torch.randn(5, 1, 8, 8)),
        (small_cnn(1, 10, 8), torch.randn(5, 64)),
        (small_cnn(1, 10, 8), torch.randn(5, 8, 8)),
        (small_cnn(1, 10, (8, 8), batch_norm=True), torch.randn(5, 1, 8, 8)),
        (small_cnn(1, 10, 28), torch.randn(5, 1, 28, 28)),
        (small_cnn(3, 4, (12, 16)), torch.randn(5, 3, 12, 16)),
    ],
)
def test_final_linear_and_shapes(model: nn.Module, x: torch.Tensor) -> None:
    last = _last_module(model)
    assert isinstance(last, nn.Linear)
    assert head(model) is last
    model.eval()
    out = model(x)
    assert out.shape == (5, last.out_features)


@pytest.mark.parametrize(
    "factory",
    [
        lambda s: logistic_regression(20, 3, seed=s),
        lambda s: mlp(20, 3, seed=s),
        lambda s: small_cnn(1, 3, 8, seed=s),
    ],
)
def test_seeded_construction(factory) -> None:
    torch.manual_seed(1234)
    state_before = torch.random.get_rng_state()
    a, b, c = factory(0), factory(0), factory(1)
    assert _same(a, b)
    assert not _same(a, c)
    assert torch.equal(torch.random.get_rng_state(), state_before), "global RNG untouched"


def test_build_model_registry() -> None:
    x8 = torch.randn(2, 64)
    for name in ("logreg", "mlp", "cnn"):
        m = build_model(name, (64,), 10, seed=0)
        assert isinstance(_last_module(m), nn.Linear)
        assert m(x8).shape == (2, 10)
    assert _same(build_model("mlp", (64,), 10, seed=5, hidden=(8,)), mlp(64, 10, (8,), seed=5))
    cnn = build_model("cnn", (1, 28, 28), 10)
    assert cnn(torch.randn(2, 784)).shape == (2, 10)
    assert build_model("cnn", (8, 8), 3)(torch.randn(2, 8, 8)).shape == (2, 3)
    assert build_model("cnn", (48,), 2, image_size=(6, 8))(torch.randn(2, 48)).shape == (2, 2)
    with pytest.raises(ValueError, match="cnn.*logreg.*mlp"):
        build_model("resnet", (64,), 10)
    with pytest.raises(ValueError, match="image"):
        build_model("cnn", (10,), 2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        logistic_regression(0, 3)
    with pytest.raises(ValueError):
        mlp(4, 3, dropout=1.5)
    with pytest.raises(ValueError):
        small_cnn(1, 3, 2)
    with pytest.raises(ValueError, match="no nn.Linear"):
        head(nn.Sequential(nn.ReLU()))
