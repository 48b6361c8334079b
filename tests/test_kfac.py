"""K-FAC / EK-FAC against independently computed truths (GGN, dense solves, per-sample grads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradsift.errors import GradsiftError
from gradsift.grads.computer import GradientComputer
from gradsift.grads.layout import layout_of
from gradsift.influence import (
    EKFACSolver,
    GGNOperator,
    InfluenceScorer,
    KFACOperator,
    KFACSolver,
    fit_kfac_factors,
    make_solver,
)
from gradsift.task import ClassificationTask, Task

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).resolve().parent


class HalfMSETask(Task):
    """``ℓ = ½‖f(x) − y‖²``: the ``mse`` likelihood (output Hessian ``I``)."""

    def __init__(self, tracked="all"):
        self.tracked = tracked

    def forward(self, model, batch):
        return model(batch[0])

    def loss(self, outputs, batch):
        return 0.5 * (outputs - batch[1]).pow(2).sum(-1)


def operator(model, task, data, eigenvalues="kfac", **kw):
    kw.setdefault("fisher", "exact")
    factors = fit_kfac_factors(
        model, task, data, correct_eigenvalues=eigenvalues == "ekfac", batch_size=5, **kw
    )
    params = task.tracked_parameters(model)
    return KFACOperator(factors, layout_of(params), eigenvalues=eigenvalues, dtype=torch.float64)


def ggn(model, task, data, **kw):
    return GGNOperator(model, task, data, **kw).dense()


def linear_mse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).double().eval()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(13, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(13, 3, generator=g, dtype=torch.float64)
    return model, HalfMSETask("all"), (X, Y)


def small_mlp(n=40, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=g)
    return model, ClassificationTask("all"), (X, y)


# ------------------------------------------------------------------ exact cases


@pytest.mark.parametrize("eigenvalues", ["kfac", "ekfac"])
def test_single_linear_layer_mse_equals_ggn(eigenvalues):
    model, task, data = linear_mse()
    C = operator(model, task, data, eigenvalues, likelihood="mse").dense()
    torch.testing.assert_close(C, ggn(model, task, data, likelihood="mse"), rtol=1e-10, atol=1e-12)


def test_linear_softmax_head_one_sample_equals_ggn():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3)).double().eval()
    data = (torch.randn(1, 4, dtype=torch.float64), torch.tensor([2]))
    task = ClassificationTask("all")
    for eigenvalues in ("kfac", "ekfac"):
        C = operator(model, task, data, eigenvalues).dense()
        torch.testing.assert_close(C, ggn(model, task, data), rtol=1e-10, atol=1e-12)


def layer_blocks(G, sizes):
    """The per-layer diagonal blocks of ``G`` (what K-FAC and EK-FAC model)."""
    M, off = torch.zeros_like(G), 0
    for k in sizes:
        M[off : off + k, off : off + k] = G[off : off + k, off : off + k]
        off += k
    return M


def test_ekfac_is_closer_to_ggn_than_kfac_on_an_mlp():
    """EK-FAC's eigenvalues are the best diagonal in K-FAC's eigenbasis (Frobenius)."""
    model, task, data = small_mlp()
    G = ggn(model, task, data)
    K = operator(model, task, data, "kfac").dense()
    E = operator(model, task, data, "ekfac").dense()
    assert (E - G).norm() < (K - G).norm()
    G_layers = layer_blocks(G, [5 * 6 + 6, 6 * 4 + 4])
    assert (E - G_layers).norm() < 0.9 * (K - G_layers).norm()
    # sampled labels: Monte-Carlo noise, so more samples
    model, task, data = small_mlp(n=400)
    G_layers = layer_blocks(ggn(model, task, data), [36, 28])
    K = operator(model, task, data, "kfac", fisher="sampled").dense()
    E = operator(model, task, data, "ekfac", fisher="sampled").dense()
    assert (E - G_layers).norm() < 0.9 * (K - G_layers).norm()


def test_kfac_is_s_kron_a_in_the_tracked_layout():
    """The layer block is ``S ⊗ A`` on ``vec_r([W | b])``; bias = the appended-1 column."""
    model, task, data = linear_mse()
    op = operator(model, task, data, likelihood="mse")
    ly = op.factors.layers[0]
    X = data[0]
    Xa = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    torch.testing.assert_close(ly.A, Xa.T @ Xa / len(X))
    torch.testing.assert_close(ly.S, torch.eye(3, dtype=torch.float64))
    full = torch.kron(ly.S, ly.A)  # [(o, c), (o, c)] with c = 4 inputs + bias
    w_idx = [o * 5 + i for o in range(3) for i in range(4)]
    b_idx = [o * 5 + 4 for o in range(3)]
    perm = torch.tensor(w_idx + b_idx)  # layout: weight row-major, then bias
    torch.testing.assert_close(op.dense(), full[perm][:, perm])


def test_ekfac_eigenvalues_from_per_sample_gradients_conv():
    """EK-FAC = Q diag(diag(Qᵀ F Q)) Qᵀ with F the (empirical) Fisher of per-sample grads."""
    torch.manual_seed(5)
    model = (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3)
        )
        .double()
        .eval()
    )
    g = torch.Generator().manual_seed(6)
    X = torch.randn(10, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=g)
    task = ClassificationTask(["0"])
    op = operator(model, task, (X, y), "ekfac", fisher="empirical")
    Gs = GradientComputer(model, task, "vmap").compute((X, y))[0]
    F = Gs.T @ Gs / len(X)
    ly = op.factors.layers[0]
    Q = torch.kron(ly.Q_S, ly.Q_A)
    truth = Q @ torch.diag(torch.diag(Q.T @ F @ Q)) @ Q.T
    torch.testing.assert_close(op.dense(), truth, rtol=1e-9, atol=1e-12)


def test_ekfac_exact_fisher_is_the_ggn_diagonal_in_the_kfac_basis():
    """EK-FAC with the exact Fisher (the ``"auto"`` default for 4 classes) has eigenvalues
    ``diag(Qᵀ G_l Q)`` of the dense GGN's layer blocks ``G_l`` (``GGNOperator``)."""
    model, task, data = small_mlp()
    factors = fit_kfac_factors(model, task, data, batch_size=7)
    assert factors.settings["fisher"] == "exact"
    G = ggn(model, task, data)
    blocks = {b.name: b for b in layout_of(task.tracked_parameters(model))}
    for ly in factors.layers:
        w, b = blocks[ly.weight], blocks[ly.bias]
        d_in = ly.cols - 1  # augmented order [W | b], row-major
        idx = torch.tensor(
            [w.offset + o * d_in + c if c < d_in else b.offset + o
             for o in range(ly.d_out) for c in range(ly.cols)]
        )  # fmt: skip
        Q = torch.kron(ly.Q_S, ly.Q_A)
        truth = torch.diag(Q.T @ G[idx][:, idx] @ Q).reshape(ly.d_out, ly.cols)
        torch.testing.assert_close(ly.corrected, truth, rtol=1e-9, atol=1e-13)


def test_auto_fisher_is_exact_for_few_output_columns_and_sampled_for_many():
    from gradsift.influence.kfac.statistics import AUTO_EXACT_MAX_COLUMNS, resolve_fisher

    k = AUTO_EXACT_MAX_COLUMNS
    assert resolve_fisher("auto", "softmax_ce", torch.zeros(2, k)) == "exact"
    assert resolve_fisher("auto", "softmax_ce", torch.zeros(2, 3, k + 1)) == "sampled"
    assert resolve_fisher("auto", "bce", torch.zeros(2, 10 * k)) == "exact"
    assert resolve_fisher("auto", "mse", torch.zeros(5)) == "exact"
    assert resolve_fisher("empirical", "softmax_ce", torch.zeros(2, 10 * k)) == "empirical"
    with pytest.raises(GradsiftError, match="fisher must be one of"):
        resolve_fisher("true", "softmax_ce", torch.zeros(2, 3))
    # few classes: the same factors as fisher="exact"; many: as fisher="sampled" (same seed)
    for n_out, used in ((4, "exact"), (k + 4, "sampled")):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, n_out)).double().eval()
        X = torch.randn(30, 5, dtype=torch.float64)
        data = (X, torch.randint(0, n_out, (30,)))
        task = ClassificationTask("all")
        auto = fit_kfac_factors(model, task, data, batch_size=8)
        ref = fit_kfac_factors(model, task, data, batch_size=8, fisher=used)
        assert auto.settings == ref.settings and auto.settings["fisher"] == used
        for a, b in zip(auto.layers, ref.layers, strict=True):
            assert torch.equal(a.S, b.S) and torch.equal(a.corrected, b.corrected)
    solver = EKFACSolver().fit(*small_mlp(n=12))
    assert solver.settings()["fisher"] == "exact"
    assert EKFACSolver().settings()["fisher"] == "auto"


# ------------------------------------------------------------------ inverse and solvers


@pytest.mark.parametrize("eigenvalues", ["kfac", "ekfac"])
def test_inverse_matches_dense_solve(eigenvalues):
    model, task, data = small_mlp()
    op = operator(model, task, data, eigenvalues)
    op.weight_decay = 0.01
    V = torch.randn(4, op.dim, dtype=torch.float64)
    A = op.dense() + 0.05 * torch.eye(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.inverse(V, 0.05), torch.linalg.solve(A, V.T).T)


def test_relative_damping_and_layer_damping():
    model, task, data = small_mlp()
    solver = EKFACSolver(fisher="exact", check_residuals=True).fit(model, task, data)
    C = solver.operator.dense()
    assert solver.damping == pytest.approx(0.1 * float(torch.trace(C)) / C.shape[0])
    V = torch.randn(3, C.shape[0], dtype=torch.float64)
    X = solver.solve(V)
    assert solver.diagnostics.residual_max < 1e-10
    torch.testing.assert_close(
        X, torch.linalg.solve(C + solver.damping * torch.eye(len(C), dtype=C.dtype), V.T).T
    )
    per_layer = EKFACSolver(fisher="exact", damping_scope="layer", check_residuals=True)
    per_layer.fit(model, task, data)
    per_layer.solve(V)
    assert set(per_layer.diagnostics.block_damping) == {"0", "2"}
    assert per_layer.diagnostics.residual_max < 1e-10
    unchecked = EKFACSolver(fisher="exact").fit(model, task, data)
    torch.testing.assert_close(unchecked.solve(V), X)
    assert unchecked.diagnostics.residual_max is None


@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_influence_scorer_with_kfac_matches_dense_solve(name):
    model, task, data = small_mlp(n=30)
    test = (data[0][:4], data[1][:4])
    solver = make_solver(name, damping=0.1, fisher="exact")
    assert isinstance(solver, KFACSolver)
    scorer = InfluenceScorer(model, task, "if-cg", solver=solver, weight_decay=1e-3)
    S = scorer.fit(data).scores(data, test)
    comp = GradientComputer(model, task)
    G_tr, G_te = comp.compute(data)[0], comp.compute(test)[0]
    C = solver.operator.dense()
    assert solver.operator.weight_decay == 1e-3
    truth = G_tr @ torch.linalg.solve(C + 0.1 * torch.eye(len(C), dtype=C.dtype), G_te.T)
    np.testing.assert_allclose(S, truth.numpy(), rtol=1e-8, atol=1e-10)
    si = scorer.self_influence(data)
    np.testing.assert_allclose(
        si,
        np.diag(G_tr @ torch.linalg.solve(C + 0.1 * torch.eye(len(C), dtype=C.dtype), G_tr.T)),
        rtol=1e-8,
    )


@pytest.mark.parametrize("method", ["if-kfac", "if-ekfac"])
def test_influence_method_names_use_kfac_with_auto_tracking(method):
    """``InfluenceScorer(model, ClassificationTask(), "if-ekfac")`` tracks every layer of an
    all-linear model (auto) and scores ``G_tr (C + λI)⁻¹ G_teᵀ`` with the fitted K-FAC
    matrix ``C`` and the relative damping it chose."""
    model, _, data = small_mlp(n=30)
    test = (data[0][:4], data[1][:4])
    scorer = InfluenceScorer(model, ClassificationTask(), method).fit(data)
    assert scorer.settings()["tracked_choice"].startswith("all")
    assert scorer.dim == sum(p.numel() for p in model.parameters())
    S = scorer.scores(data, test)
    comp = GradientComputer(model, ClassificationTask("all"))
    G_tr, G_te = comp.compute(data)[0], comp.compute(test)[0]
    C, lam = scorer.solver.operator.dense(), scorer.solver.damping
    assert lam > 0
    truth = G_tr @ torch.linalg.solve(C + lam * torch.eye(len(C), dtype=C.dtype), G_te.T)
    np.testing.assert_allclose(S, truth.numpy(), rtol=1e-7, atol=1e-10)


def test_kfac_auto_tracking_keeps_the_last_layer_when_a_layer_is_not_factorable():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3)).double().eval()
    scorer = InfluenceScorer(model, ClassificationTask(), "if-ekfac")
    assert scorer.settings()["tracked_choice"].startswith("last_linear")
    assert scorer.dim == 6 * 3 + 3


@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_self_influence_detector_with_kfac_is_the_quadratic_form(name):
    from gradsift.detect import DetectionContext, get_detector

    model, task, data = small_mlp(n=30)
    G = GradientComputer(model, task).compute(data)[0]
    detector = get_detector(f"self-if-{name}")
    scores = detector.fit_score(
        G.numpy(), context=DetectionContext(G.numpy(), model=model, task=task, data=data)
    )
    C, lam = detector.solver.operator.dense(), detector.solver.damping
    truth = torch.diag(G @ torch.linalg.solve(C + lam * torch.eye(len(C), dtype=C.dtype), G.T))
    np.testing.assert_allclose(scores, truth.numpy(), rtol=1e-7)


def test_kfac_solver_refuses_other_operators():
    model, task, data = small_mlp(n=8)
    with pytest.raises(GradsiftError, match="KFACOperator"):
        KFACSolver().fit_operator(GGNOperator(model, task, data))


# ------------------------------------------------------------------ storage


def test_factors_stored_resumed_and_refused(tmp_path):
    model, task, data = small_mlp(n=37)
    kw = {"batch_size": 4, "checkpoint_every": 2, "path": tmp_path / "f"}
    full = fit_kfac_factors(model, task, data, **{**kw, "path": tmp_path / "full"})

    class Killed(Exception):
        pass

    def kill(stage, done):
        if stage == "eigenvalues" and done >= 4:
            raise Killed

    with pytest.raises(Killed):
        fit_kfac_factors(model, task, data, on_checkpoint=kill, **kw)
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["stages"]["covariance"]["complete"]
    assert manifest["stages"]["eigenvalues"] == {
        "batches_done": 4,
        "complete": False,
        "samples": 16,
    }
    seen = []
    resumed = fit_kfac_factors(
        model, task, data, on_checkpoint=lambda s, d: seen.append((s, d)), **kw
    )
    assert seen[0] == ("eigenvalues", 6)  # covariance loaded, eigenvalues from batch 4
    for a, b in zip(full.layers, resumed.layers, strict=True):
        assert torch.equal(a.A, b.A) and torch.equal(a.S, b.S)
        assert torch.equal(a.corrected, b.corrected)
    seen.clear()
    fit_kfac_factors(model, task, data, on_checkpoint=lambda s, d: seen.append(s), **kw)
    assert seen == []  # complete: loaded, no pass
    other, _, _ = small_mlp(seed=9)
    with pytest.raises(GradsiftError, match="another model"):
        fit_kfac_factors(other, task, data, **kw)
    with pytest.raises(GradsiftError, match="settings"):
        fit_kfac_factors(model, task, data, **{**kw, "fisher": "empirical"})


def test_two_gloo_processes_equal_single_process(tmp_path):
    sys.path.insert(0, str(HERE / "jobs"))
    try:
        from kfac_job import build, fit
    finally:
        sys.path.pop(0)
    env = {**os.environ, "GRADSIFT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    job = subprocess.run(
        [*cmd, str(HERE / "jobs" / "kfac_job.py"), str(tmp_path / "dist")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert job.returncode == 0, job.stdout + job.stderr
    model, task, data = build()
    single = fit(model, task, data, tmp_path / "single")
    both = fit(model, task, data, tmp_path / "dist")  # loads the 2-process factors
    assert json.loads((tmp_path / "dist" / "manifest.json").read_text())["stages"]["eigenvalues"][
        "complete"
    ]
    for a, b in zip(single.layers, both.layers, strict=True):
        torch.testing.assert_close(a.A, b.A, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a.S, b.S, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a.corrected, b.corrected, rtol=1e-10, atol=1e-14)
    assert single.n == both.n == len(data[1])
