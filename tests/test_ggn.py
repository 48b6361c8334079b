"""GGNOperator against explicit Jacobians and output Hessians (torch.autograd.functional)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from gradsift.influence import ExactSolver, GGNOperator, HessianOperator
from gradsift.task import ClassificationTask, Task

pytestmark = pytest.mark.usefixtures("one_thread")


class HalfMSETask(Task):
    """``ℓ = ½‖f(x) − y‖²`` on ``(x, y)`` batches (the ``mse`` likelihood)."""

    def __init__(self, tracked="all"):
        self.tracked = tracked

    def forward(self, model, batch):
        return model(batch[0])

    def loss(self, outputs, batch):
        return 0.5 * (outputs - batch[1]).pow(2).sum(-1)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()


def explicit_ggn(model, task, X, kind, wd=0.0):
    """``(1/n) Σ J_iᵀ H_i J_i + wd·I`` from per-sample Jacobians of the flat parameters."""
    params = task.tracked_parameters(model)
    names = list(params)
    shapes = [p.shape for p in params.values()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def f(flat, x):
        tree, off = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            k = shape.numel()
            tree[name] = flat[off : off + k].reshape(shape)
            off += k
        return functional_call(model, tree, (x[None],))[0]

    G = torch.zeros(len(flat0), len(flat0), dtype=torch.float64)
    for x in X:
        J = torch.autograd.functional.jacobian(lambda th, x=x: f(th, x), flat0)  # [C, D]
        out = f(flat0, x).detach()
        if kind == "softmax_ce":
            p = torch.softmax(out, -1)
            H = torch.diag(p) - torch.outer(p, p)
        else:
            H = torch.eye(len(out), dtype=torch.float64)
        G += J.T @ H @ J
    return G / len(X) + wd * torch.eye(len(flat0), dtype=torch.float64)


def test_ggn_dense_matches_explicit_jacobians_softmax():
    model = mlp()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(9, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (9,), generator=g)
    task = ClassificationTask("all")
    op = GGNOperator(model, task, (X, y), weight_decay=0.01, batch_size=4)
    truth = explicit_ggn(model, task, X, "softmax_ce", wd=0.01)
    torch.testing.assert_close(op.dense(), truth, rtol=1e-10, atol=1e-12)
    V = torch.randn(3, op.dim, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(V), V @ truth, rtol=1e-10, atol=1e-12)


def test_ggn_dense_matches_explicit_jacobians_mse():
    model = mlp(2)
    g = torch.Generator().manual_seed(2)
    X = torch.randn(7, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(7, 3, generator=g, dtype=torch.float64)
    task = HalfMSETask("all")
    op = GGNOperator(model, task, (X, Y), likelihood="mse")
    torch.testing.assert_close(
        op.dense(), explicit_ggn(model, task, X, "mse"), rtol=1e-10, atol=1e-12
    )


def test_ggn_equals_hessian_when_linear_in_tracked_parameters():
    model = mlp(3)
    g = torch.Generator().manual_seed(3)
    X = torch.randn(11, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (11,), generator=g)
    task = ClassificationTask("last_linear")
    ggn = GGNOperator(model, task, (X, y)).dense()
    hess = HessianOperator(model, task, (X, y)).dense()
    torch.testing.assert_close(ggn, hess, rtol=1e-9, atol=1e-12)


def test_ggn_needs_a_known_likelihood_and_plugs_into_solvers():
    model = mlp(4)
    X = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="likelihood"):
        GGNOperator(model, HalfMSETask(), (X, torch.zeros(6, 3, dtype=torch.float64)))
    y = torch.randint(0, 3, (6,))
    op = GGNOperator(model, ClassificationTask("all"), (X, y))
    solver = ExactSolver(damping=0.1).fit_operator(op)
    V = torch.randn(2, op.dim, dtype=torch.float64)
    A = op.dense() + 0.1 * torch.eye(op.dim, dtype=torch.float64)
    torch.testing.assert_close(solver.solve(V), torch.linalg.solve(A, V.T).T)
