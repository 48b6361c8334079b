"""HessianOperator against an explicit torch.autograd.functional.hessian."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset

from gradsift.errors import GradientError, GradsiftError
from gradsift.influence.hessian import HessianOperator
from gradsift.task import BinaryClassificationTask, ClassificationTask

pytestmark = pytest.mark.usefixtures("one_thread")


def explicit_hessian(model, names, x, y, loss, weight_decay=0.0):
    """Mean-loss Hessian [D, D] over ``names`` (flattened in order), by autograd.functional."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(flat):
        parts = {n: p.reshape(s) for n, p, s in zip(names, flat.split(sizes), shapes, strict=True)}
        out = functional_call(model, parts, (x,))
        return loss(out, y).mean() + weight_decay / 2 * flat.pow(2).sum()

    return torch.autograd.functional.hessian(f, theta)


def tanh_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double().eval()


def data(n=40, d=5, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(
        0, classes, (n,), generator=g
    )


def ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


@pytest.mark.parametrize("mode", ["autograd", "forward", "reverse"])
@pytest.mark.parametrize("tracked", ["all", "last_linear", ["0.weight", "2.bias"]])
def test_matvec_equals_explicit_hessian(mode, tracked):
    model, (x, y) = tanh_mlp(), data()
    task = ClassificationTask(tracked=tracked)
    op = HessianOperator(model, task, (x, y), weight_decay=0.03, batch_size=16, mode=mode)
    names = [b.name for b in op.layout]
    H = explicit_hessian(model, names, x, y, ce, weight_decay=0.03)
    V = torch.randn(6, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(op.matvec(V), V @ H, atol=1e-12, rtol=1e-10)
    assert torch.allclose(op.matvec(V[0]), H @ V[0], atol=1e-12, rtol=1e-10)
    assert torch.allclose(op.dense(), H, atol=1e-12, rtol=1e-10)


def test_batch_matvec_is_that_batch_mean_hessian():
    model, (x, y) = tanh_mlp(), data()
    op = HessianOperator(model, ClassificationTask("all"), (x, y), weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:9]
    batch = op.sample_batch(9, gen)
    assert torch.equal(batch[0], x[idx])
    H_b = explicit_hessian(model, [b.name for b in op.layout], x[idx], y[idx], ce, 0.1)
    V = torch.randn(3, op.dim, dtype=torch.float64)
    assert torch.allclose(op.batch_matvec(V, batch), V @ H_b, atol=1e-12, rtol=1e-10)


def test_block_diagonal_drops_cross_blocks():
    model, (x, y) = tanh_mlp(), data()
    op = HessianOperator(model, ClassificationTask("all"), (x, y), block_diagonal=True)
    H = explicit_hessian(model, [b.name for b in op.layout], x, y, ce)
    mask = torch.zeros_like(H, dtype=torch.bool)
    for b in op.layout:
        mask[b.offset : b.stop, b.offset : b.stop] = True
    H_bd = torch.where(mask, H, 0.0)
    V = torch.randn(4, op.dim, dtype=torch.float64)
    assert torch.allclose(op.matvec(V), V @ H_bd, atol=1e-12, rtol=1e-10)
    b = op.layout[2]
    assert torch.allclose(op.dense(block=2), H[b.offset : b.stop, b.offset : b.stop], atol=1e-12)


def test_top_eigenvalue_by_power_iteration():
    x, y = data(60, 4, 2, seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1)).double()
    task = BinaryClassificationTask()
    op = HessianOperator(model, task, (x, y), weight_decay=0.01)
    bce = lambda out, t: F.binary_cross_entropy_with_logits(out[:, 0], t.double(), reduction="none")  # noqa: E731
    H = explicit_hessian(model, [b.name for b in op.layout], x, y, bce, 0.01)
    lam, iters = op.top_eigenvalue(iters=500, tol=1e-10)
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)
    assert iters < 500


class ListData(Dataset):
    """A non-tensor dataset, to exercise the collate path."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_generic_dataset_and_float32_inputs_match():
    model, (x, y) = tanh_mlp(), data()
    task = ClassificationTask("all")
    V = torch.randn(2, 66, dtype=torch.float64)
    ref = HessianOperator(model, task, (x, y), batch_size=7).matvec(V)
    via_list = HessianOperator(model, task, ListData(x.float(), y), batch_size=7).matvec(V)
    assert torch.allclose(via_list, ref, atol=1e-6)  # inputs were float32, cast to float64


def test_bad_input():
    model, (x, y) = tanh_mlp(), data()
    op = HessianOperator(model, ClassificationTask("all"), (x, y))
    with pytest.raises(GradsiftError, match=r"shape \[m, 66\]"):
        op.matvec(torch.zeros(2, 5))
    with pytest.raises(GradsiftError, match="weight_decay"):
        HessianOperator(model, ClassificationTask(), (x, y), weight_decay=-1)
    with pytest.raises(GradsiftError, match="empty"):
        HessianOperator(model, ClassificationTask(), (x[:0], y[:0]))
    dropout = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 3)).double()
    with pytest.raises(GradientError, match="eval"):
        HessianOperator(dropout, ClassificationTask(), (x, y))


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.unused = nn.Linear(5, 3), nn.Linear(2, 2)

    def forward(self, x):
        return torch.tanh(self.a(x))


@pytest.mark.parametrize("mode", ["autograd", "forward", "reverse"])
def test_tracked_parameter_the_loss_ignores_has_zero_curvature(mode):
    torch.manual_seed(0)
    model, (x, y) = WithUnused().double().eval(), data()
    op = HessianOperator(model, ClassificationTask(["a", "unused"]), (x, y), mode=mode)
    H = explicit_hessian(model, ["a.weight", "a.bias"], x, y, ce)
    out = op.matvec(torch.ones(2, op.dim, dtype=torch.float64))
    assert not out.requires_grad
    assert torch.equal(out[:, 18:], torch.zeros(2, 6, dtype=torch.float64))
    assert torch.allclose(out[:, :18], torch.ones(2, 18, dtype=torch.float64) @ H, atol=1e-12)
