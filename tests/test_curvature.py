"""The CurvatureOperator interface: every operator satisfies it, and solvers depend on nothing else.

A test-local ``MatrixOperator`` implements the protocol structurally (no shared base class)
from an explicit matrix; every solver must give the same answer on it as on the operator
whose dense form it holds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsift.errors import GradsiftError
from gradsift.grads.layout import Block
from gradsift.influence import (
    CGSolver,
    CurvatureOperator,
    ExactSolver,
    GradientFisherOperator,
    HessianOperator,
    IdentitySolver,
    InfluenceScorer,
    LiSSASolver,
)
from gradsift.task import ClassificationTask

pytestmark = pytest.mark.usefixtures("one_thread")

WD = 0.01


class MatrixOperator:
    """``C`` given as an explicit symmetric ``[D, D]`` matrix (already holding weight decay).

    Deliberately not a ``CurvatureBase``: it meets ``CurvatureOperator`` by shape alone.
    With ``block_diagonal`` the off-diagonal blocks are zeroed. It has no samples:
    ``batch_matvec`` is the full product.
    """

    def __init__(self, C, layout, block_diagonal=False, weight_decay=0.0):
        self.layout = list(layout)
        self.dim = C.shape[0]
        self.dtype, self.device = C.dtype, C.device
        self.block_diagonal, self.weight_decay = block_diagonal, weight_decay
        if block_diagonal:
            mask = torch.zeros_like(C, dtype=torch.bool)
            for b in self.layout:
                mask[b.offset : b.stop, b.offset : b.stop] = True
            C = torch.where(mask, C, torch.zeros_like(C))
        self.C = C

    def matvec(self, V):
        return V @ self.C

    def batch_matvec(self, V, batch):
        return self.matvec(V)

    def sample_batch(self, batch_size, generator):
        return None

    def dense(self, block=None):
        if block is None:
            return self.C.clone()
        b = self.layout[block]
        return self.C[b.offset : b.stop, b.offset : b.stop].clone()

    def top_eigenvalue(self, iters=100, tol=1e-3, seed=0):
        ev = torch.linalg.eigvalsh(self.C)
        return float(ev[ev.abs().argmax()]), 1


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    task = ClassificationTask("all")
    G = torch.randn(50, 7, generator=g, dtype=torch.float64)
    fisher_layout = [Block("a", (3,), 0), Block("b", (2, 2), 3)]
    return {"model": model, "task": task, "data": (x, y), "G": G, "fisher_layout": fisher_layout}


def make_operator(problem, kind, block_diagonal):
    if kind == "hessian":
        return HessianOperator(
            problem["model"],
            problem["task"],
            problem["data"],
            weight_decay=WD,
            batch_size=25,
            block_diagonal=block_diagonal,
        )
    return GradientFisherOperator(
        problem["G"], problem["fisher_layout"], block_diagonal=block_diagonal, weight_decay=WD
    )


KINDS = [(k, bd) for k in ("hessian", "fisher") for bd in (False, True)]


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("kind", "block_diagonal"), KINDS)
def test_operator_meets_the_protocol_and_matvec_equals_its_dense(problem, kind, block_diagonal):
    op = make_operator(problem, kind, block_diagonal)
    assert isinstance(op, CurvatureOperator)
    C = op.dense()
    assert C.shape == (op.dim, op.dim)
    torch.testing.assert_close(C, C.T)
    V = torch.randn(4, op.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(V), V @ C, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matvec(V[0]), V[0] @ C, rtol=1e-10, atol=1e-12)
    # a batch holding every sample is the full-data product
    everything = op.sample_batch(10**6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(op.batch_matvec(V, everything), V @ C, rtol=1e-10, atol=1e-12)
    for i, b in enumerate(op.layout):  # dense(block=i) is block i of the (restricted) matrix
        torch.testing.assert_close(op.dense(block=i), C[b.offset : b.stop, b.offset : b.stop])
        if block_diagonal:  # nothing outside the diagonal blocks
            assert bool((C[b.offset : b.stop, b.stop :] == 0).all())


def test_block_restriction_is_the_masked_full_matrix(problem):
    for kind in ("hessian", "fisher"):
        full = make_operator(problem, kind, False).dense()
        block = make_operator(problem, kind, True).dense()
        masked = MatrixOperator(full, make_operator(problem, kind, False).layout, True).C
        torch.testing.assert_close(block, masked, rtol=1e-10, atol=1e-12)


def test_top_eigenvalue_by_power_iteration_matches_eigvalsh(problem):
    op = make_operator(problem, "fisher", True)  # positive definite: λ_max is the top
    lam, _ = op.top_eigenvalue(iters=1000, tol=1e-13)
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(op.dense()).max()), rel=1e-8)


def test_fit_operator_refuses_what_is_not_an_operator():
    with pytest.raises(GradsiftError, match="CurvatureOperator"):
        CGSolver().fit_operator(object())  # type: ignore[arg-type]
    assert not isinstance(torch.eye(3), CurvatureOperator)


def _solver(name, damping, C):
    if name == "lissa":  # a short chain with a fixed scale: the same linear recursion on both
        scale = 1.5 * (float(torch.linalg.eigvalsh(C).abs().max()) + damping)
        return LiSSASolver(
            damping=damping, scale=scale, steps=40, batch_size=None, residual_tol=float("inf")
        )
    return {
        "identity": IdentitySolver(damping=damping),
        "exact": ExactSolver(damping=damping),
        "cg": CGSolver(damping=damping, tol=1e-13, max_iter=500),
    }[name]


@pytest.mark.parametrize(("kind", "block_diagonal"), KINDS)
@pytest.mark.parametrize("name", ["identity", "exact", "cg", "lissa"])
def test_solvers_depend_only_on_the_interface(problem, kind, block_diagonal, name):
    op = make_operator(problem, kind, block_diagonal)
    C = op.dense()
    twin = MatrixOperator(
        make_operator(problem, kind, False).dense(), op.layout, block_diagonal, WD
    )
    # damping that makes C + λI clearly positive definite, from an independent eigen-solve
    damping = max(0.0, -float(torch.linalg.eigvalsh(C).min())) + 0.2
    V = torch.randn(3, op.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    on_op = _solver(name, damping, C).fit_operator(op).solve(V)
    on_twin = _solver(name, damping, C).fit_operator(twin).solve(V)
    assert rel_err(on_twin, on_op) < 1e-9
    if name == "lissa":  # not run to convergence here; see test_solvers for accuracy
        return
    eye = torch.eye(op.dim, dtype=C.dtype)
    truth = (
        V / (1 + damping) if name == "identity" else torch.linalg.solve(C + damping * eye, V.T).T
    )
    assert rel_err(on_op, truth) < 1e-8


def test_influence_scorer_runs_on_a_solver_fitted_to_any_operator(problem):
    model, task, (x, y) = problem["model"], problem["task"], problem["data"]
    op = make_operator(problem, "hessian", False)
    twin = MatrixOperator(op.dense(), op.layout, False, WD)
    damping = max(0.0, -float(torch.linalg.eigvalsh(twin.C).min())) + 0.2
    train, test = (x[:40], y[:40]), (x[40:], y[40:])
    scores = [
        InfluenceScorer(model, task, "if-exact", solver=ExactSolver(damping).fit_operator(o))
        .fit(train)
        .scores(train, test)
        for o in (op, twin)
    ]
    assert rel_err(torch.as_tensor(scores[1]), torch.as_tensor(scores[0])) < 1e-10
