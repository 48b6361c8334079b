"""Inverse-HVP solvers against torch.linalg.solve on an explicit (autograd) Hessian."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr
from torch import nn
from torch.func import functional_call

from gradsift.errors import GradsiftError
from gradsift.grads.layout import Block
from gradsift.influence import (
    CGSolver,
    ConvergenceWarning,
    DataInfSolver,
    ExactSolver,
    HessianOperator,
    IdentitySolver,
    LiSSASolver,
    make_solver,
)
from gradsift.task import BinaryClassificationTask, ClassificationTask

pytestmark = pytest.mark.usefixtures("one_thread")


def explicit_hessian(model, names, x, y, weight_decay):
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(flat):
        parts = {n: p.reshape(s) for n, p, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(model, parts, (x,)), y) + weight_decay / 2 * (
            flat.pow(2).sum()
        )

    return torch.autograd.functional.hessian(f, theta)


@pytest.fixture(scope="module")
def setup():
    """A small tanh MLP trained to near-stationarity (LBFGS) in float64; tracked = all."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] ** 2 > 1).long() + (x[:, 2] > 1).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    wd = 0.01
    opt = torch.optim.LBFGS(model.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + wd / 2 * sum(
            p.pow(2).sum() for p in model.parameters()
        )
        loss.backward()
        return loss

    opt.step(closure)
    model.eval()
    task = ClassificationTask("all")
    op = HessianOperator(model, task, (x, y), weight_decay=wd, batch_size=60)
    H = explicit_hessian(model, [b.name for b in op.layout], x, y, wd)
    V = torch.randn(5, op.dim, generator=g, dtype=torch.float64)
    return {"model": model, "task": task, "x": x, "y": y, "op": op, "H": H, "V": V, "wd": wd}


def reference(H, V, damping):
    return torch.linalg.solve(H + damping * torch.eye(H.shape[0], dtype=H.dtype), V.T).T


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def test_hessian_is_positive_definite_here(setup):
    assert float(torch.linalg.eigvalsh(setup["H"])[0]) > 0  # so damping 0 is a valid test


@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_exact_and_cg_match_explicit_solve(setup, damping):
    ref = reference(setup["H"], setup["V"], damping)
    exact = ExactSolver(damping=damping).fit_operator(setup["op"])
    assert rel_err(exact.solve(setup["V"]), ref) < 1e-10
    assert exact.diagnostics.residual_max < 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        cg = CGSolver(damping=damping, tol=1e-10).fit_operator(setup["op"])
        X = cg.solve(setup["V"])
    assert rel_err(X, ref) < 1e-7
    assert cg.diagnostics.converged and cg.diagnostics.residual_max < 1e-9
    assert cg.diagnostics.iterations < 2 * setup["op"].dim  # measured 58 (D = 51) at λ = 0


def test_solutions_are_plain_tensors_even_from_graph_carrying_inputs(setup):
    V = setup["V"].clone().requires_grad_(True)  # e.g. test gradients straight from autograd
    ref = reference(setup["H"], setup["V"], 0.1)
    for solver in (
        ExactSolver(damping=0.1),
        CGSolver(damping=0.1, tol=1e-10),
        LiSSASolver(damping=0.1, batch_size=None, steps=300),
    ):
        X = solver.fit_operator(setup["op"]).solve(V)
        assert not X.requires_grad and X.grad_fn is None, type(solver).__name__
        assert rel_err(X, ref) < 1e-4, type(solver).__name__


def test_fit_from_model_equals_fit_operator(setup):
    s = ExactSolver(damping=0.05).fit(
        setup["model"], setup["task"], (setup["x"], setup["y"]), weight_decay=setup["wd"]
    )
    assert rel_err(s.solve(setup["V"]), reference(setup["H"], setup["V"], 0.05)) < 1e-10


def test_block_diagonal_solvers_match_blockwise_explicit(setup):
    op, H, V = setup["op"], setup["H"], setup["V"]
    data = (setup["x"], setup["y"])
    bd = HessianOperator(
        setup["model"], setup["task"], data, weight_decay=setup["wd"], block_diagonal=True
    )
    ref = torch.empty_like(V)
    for b in op.layout:
        sl = slice(b.offset, b.stop)
        ref[:, sl] = reference(H[sl, sl], V[:, sl], 0.01)
    for solver in (ExactSolver(damping=0.01), CGSolver(damping=0.01, tol=1e-10)):
        assert rel_err(solver.fit_operator(bd).solve(V), ref) < 1e-7


def test_full_batch_lissa_converges_to_explicit_solve(setup):
    H, V = setup["H"], setup["V"]
    lissa = LiSSASolver(damping=0.1, batch_size=None, steps=500).fit_operator(setup["op"])
    lam_max = float(torch.linalg.eigvalsh(H)[-1])
    assert lissa.top_eigenvalue == pytest.approx(lam_max, rel=1e-2)
    assert lissa.scale == pytest.approx(1.5 * (lissa.top_eigenvalue + 0.1))
    assert rel_err(lissa.solve(V), reference(H, V, 0.1)) < 1e-5  # measured 8.4e-8
    assert lissa.diagnostics.converged and lissa.diagnostics.scale == lissa.scale


def test_minibatch_lissa_with_repetitions_is_close(setup):
    H, V = setup["H"], setup["V"]
    lissa = LiSSASolver(damping=0.1, batch_size=40, steps=300, repetitions=2)
    X = lissa.fit_operator(setup["op"]).solve(V)
    assert rel_err(X, reference(H, V, 0.1)) < 0.05  # measured 0.016
    assert lissa.diagnostics.residual_max < lissa.residual_tol  # measured 0.035
    # seeded chains are reproducible, and the solve is the mean of the chains
    short = LiSSASolver(damping=0.1, batch_size=40, steps=20, repetitions=2, residual_tol=10)
    X = short.fit_operator(setup["op"]).solve(V)
    assert torch.allclose((short.run_chain(V, 0) + short.run_chain(V, 1)) / 2, X)


def test_big_fixed_scale_with_few_steps_is_gradient_dot(setup):
    """s = 1e4 ≫ λ_max: after T steps h_T/s ≈ T·v/s, a multiple of v (gradient dot)."""
    V = setup["V"]
    lissa = LiSSASolver(damping=1e-3, scale=1e4, steps=50, batch_size=None)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        X = lissa.fit_operator(setup["op"]).solve(V)
    cos = torch.nn.functional.cosine_similarity(X, V, dim=1)
    assert float(cos.min()) > 0.999
    assert float(lissa.diagnostics.residual_max) > 0.9


def test_non_convergence_warns(setup):
    with pytest.warns(ConvergenceWarning, match="CG stopped after 2"):
        CGSolver(damping=0.0, max_iter=2).fit_operator(setup["op"]).solve(setup["V"])
    with pytest.warns(ConvergenceWarning, match="LiSSA did not converge"):
        LiSSASolver(damping=0.0, steps=3, batch_size=None).fit_operator(setup["op"]).solve(
            setup["V"]
        )


def test_lissa_divergence_is_an_error(setup):
    lam = float(torch.linalg.eigvalsh(setup["H"])[-1])
    lissa = LiSSASolver(damping=0.0, scale=lam / 4, steps=200, batch_size=None)
    with pytest.raises(GradsiftError, match="diverged"):
        lissa.fit_operator(setup["op"]).solve(setup["V"])


def test_negative_curvature_is_refused():
    g = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(30, 3, generator=g, dtype=torch.float64),
        torch.randint(0, 2, (30,), generator=g),
    )
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double().eval()  # untrained
    op = HessianOperator(model, ClassificationTask("all"), (x, y))
    lam_min = float(torch.linalg.eigvalsh(op.dense())[0])
    assert lam_min < 0
    with pytest.raises(GradsiftError, match="not positive definite.*damping >"):
        ExactSolver(damping=0.0).fit_operator(op)
    ExactSolver(damping=-lam_min + 1e-3).fit_operator(op)  # enough damping is accepted
    V = torch.linalg.eigh(op.dense())[1][:, :1].T  # the most negative direction
    with pytest.raises(GradsiftError, match="negative curvature"):
        CGSolver(damping=0.0).fit_operator(op).solve(V)


def test_exact_refuses_large_dimensions_and_names_alternatives():
    model = nn.Sequential(nn.Linear(600, 10)).double().eval()  # 6,010 tracked scalars
    data = (torch.randn(4, 600, dtype=torch.float64), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(GradsiftError, match=r"6010×6010.*CGSolver.*LiSSASolver.*DataInfSolver"):
        ExactSolver().fit(model, ClassificationTask(), data)
    # block-diagonal mode checks the largest block (6,000) instead
    with pytest.raises(GradsiftError, match="6000×6000"):
        ExactSolver(block_diagonal=True).fit(model, ClassificationTask(), data)


def datainf_vs_fisher(d, n=500, seed=0):
    """DataInf against the exact solve with the damped empirical Fisher it approximates."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -1, d, dtype=torch.float64)
    G = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    solver = DataInfSolver().fit_gradients(G)
    lam = solver.block_damping["all"]
    assert lam == pytest.approx(0.1 * float(G.pow(2).sum()) / (n * d))
    V = torch.randn(20, d, generator=g, dtype=torch.float64) * scales
    fisher = G.T @ G / n
    ref = reference(fisher, V, lam)
    Q = G[:100]
    return pearsonr((solver.solve(V) @ Q.T).ravel(), (ref @ Q.T).ravel())[0]


def test_datainf_good_in_low_dimension_and_degrades_with_it():
    r = {d: datainf_vs_fisher(d) for d in (1, 2, 16, 256)}
    # measured: d=1 1.0, d=2 0.993, d=16 0.786, d=256 0.684
    assert r[1] > 0.999 and r[2] > 0.97
    assert r[2] > r[16] > r[256]
    assert r[256] < 0.8


def test_datainf_closed_form_per_block():
    """The formula (1/(nλ)) Σ_i [v − (g_iᵀv)/(λ + ‖g_i‖²) g_i], block by block, streamed."""
    g = torch.Generator().manual_seed(1)
    G = torch.randn(37, 7, generator=g, dtype=torch.float64)
    layout = [Block("a", (3,), 0), Block("b", (2, 2), 3)]
    solver = DataInfSolver(block_rows=5).fit_gradients(G.numpy(), layout, weight_decay=0.2)
    V = torch.randn(4, 7, generator=g, dtype=torch.float64)
    X = solver.solve(V)
    for b in layout:
        Gb, Vb = G[:, b.offset : b.stop], V[:, b.offset : b.stop]
        lam = 0.1 * float(Gb.pow(2).sum()) / (37 * b.numel)  # the paper's λ_l: no weight decay
        assert solver.block_damping[b.name] == pytest.approx(lam)
        expected = torch.stack(
            [sum(v - (gi @ v) / (lam + gi @ gi) * gi for gi in Gb) / (37 * lam) for v in Vb]
        )
        assert torch.allclose(X[:, b.offset : b.stop], expected)
    fixed = DataInfSolver(damping=0.5).fit_gradients(G, layout)
    assert set(fixed.block_damping.values()) == {0.5}


def test_datainf_fit_from_model_uses_per_sample_gradients(setup):
    from gradsift.grads.computer import GradientComputer

    G = GradientComputer(setup["model"], setup["task"]).compute((setup["x"], setup["y"]))[0]
    a = DataInfSolver().fit(setup["model"], setup["task"], (setup["x"], setup["y"]), batch_size=7)
    b = DataInfSolver().fit_gradients(G, setup["op"].layout)
    assert torch.allclose(a.solve(setup["V"]), b.solve(setup["V"]))
    assert len(a.block_damping) == 4  # one λ_l per tracked tensor


def test_identity_dtype_and_bad_input(setup):
    ident = IdentitySolver(damping=1.0).fit(setup["model"], setup["task"])
    assert torch.allclose(ident.solve(setup["V"]), setup["V"] / 2)
    exact = ExactSolver(damping=0.1).fit_operator(setup["op"])
    V32 = setup["V"].float()
    out = exact.solve(V32)
    assert out.dtype == torch.float32 and out.shape == V32.shape
    assert exact.solve(setup["V"][0]).shape == (setup["op"].dim,)
    assert exact.solve(setup["V"][:0]).shape == (0, setup["op"].dim)
    bad = setup["V"].clone()
    bad[1, 3] = float("nan")
    with pytest.raises(GradsiftError, match=r"NaN/Inf in rows \[1\]"):
        exact.solve(bad)
    with pytest.raises(GradsiftError, match="vectors must have shape"):
        exact.solve(torch.zeros(2, 3))
    with pytest.raises(GradsiftError, match="not fitted"):
        CGSolver().solve(setup["V"])
    with pytest.raises(GradsiftError, match="unknown solver"):
        make_solver("newton")
    assert isinstance(make_solver("if-lissa", steps=3), LiSSASolver)
    with pytest.raises(GradsiftError, match="damping"):
        CGSolver(damping=-1.0)
    with pytest.raises(GradsiftError, match="fit_gradients"):
        DataInfSolver().fit_operator(setup["op"])
    with pytest.raises(GradsiftError, match="all zero|zero"):
        DataInfSolver().fit_gradients(np.zeros((4, 2)))


@pytest.fixture(scope="module")
def heavy_rows():
    """'heavy-rows logistic regression': 10 of 200 rows are 6× larger, so a mini-batch of 8
    holding one has a Hessian ~8× the full-batch λ_max — built so that the pre-issue-13
    rule (scale from the full-batch λ_max) diverges."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    x[:10] *= 6.0
    y = torch.randint(0, 2, (200,), generator=g).double()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 1)).double()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y) + 0.005 * sum(
            p.pow(2).sum() for p in model.parameters()
        )
        loss.backward()
        return loss

    opt.step(closure)
    op = HessianOperator(model.eval(), BinaryClassificationTask("all"), (x, y), weight_decay=0.01)
    V = torch.randn(4, op.dim, generator=g, dtype=torch.float64)
    return op, V


def test_lissa_defaults_succeed_where_the_full_batch_scale_diverges(heavy_rows):
    op, V = heavy_rows
    ref = reference(op.dense(), V, 1e-3)
    with pytest.raises(GradsiftError, match="diverged"):
        LiSSASolver(batch_size=8, scale_from="full", max_restarts=0).fit_operator(op).solve(V)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # no restart, converged
        lissa = LiSSASolver(batch_size=8).fit_operator(op)
        X = lissa.solve(V)
    assert lissa.batch_eigenvalue > 3 * float(torch.linalg.eigvalsh(op.dense())[-1])
    assert lissa.diagnostics.restarts == 0
    assert pearsonr(X.ravel(), ref.ravel())[0] > 0.98


def test_lissa_restarts_with_a_safe_scale_and_reports_it(heavy_rows):
    op, V = heavy_rows
    ref = reference(op.dense(), V, 1e-3)
    lissa = LiSSASolver(batch_size=8, scale_from="full").fit_operator(op)
    first = lissa.scale
    with pytest.warns(ConvergenceWarning, match="restart 1/4"):
        X = lissa.solve(V)
    assert lissa.diagnostics.restarts >= 1 and lissa.scale >= 2 * first
    assert lissa.settings()["restarts"] == lissa.diagnostics.restarts
    assert pearsonr(X.ravel(), ref.ravel())[0] > 0.9
