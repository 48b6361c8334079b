"""InfluenceScorer and the self-influence detectors against direct computations.

References are independent: per-sample gradients by a loop of ``torch.autograd.grad``,
the Hessian by ``torch.autograd.functional.hessian`` and ``torch.linalg.solve``, TracIn by
reloading each checkpoint's weights, top-k by sorting the full matrix.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gradsift.checkpoints import CheckpointRecorder
from gradsift.detect import DetectionContext, available_detectors, get_detector
from gradsift.detect.metrics import detection_metrics
from gradsift.errors import GradsiftError
from gradsift.experiments.datasets import load_half_moons
from gradsift.experiments.models import mlp
from gradsift.experiments.training import TrainConfig, train_classifier
from gradsift.grads.computer import GradientComputer
from gradsift.grads.extract import ExtractConfig, extract
from gradsift.grads.projection import ProjectionConfig, Projector
from gradsift.influence import METHODS, ExactSolver, InfluenceScorer
from gradsift.task import ClassificationTask

DAMPING = 0.3  # the SGD-trained MLP has Hessian eigenvalues down to -0.16


pytestmark = pytest.mark.usefixtures("one_thread")


class MarginTask(ClassificationTask):
    """Measurement = minus the true-class margin, so test gradients differ from loss ones."""

    def measurement(self, model, batch):
        out = self.forward(model, batch)
        true = out.gather(1, batch[1][:, None])[:, 0]
        other = out.masked_fill(F.one_hot(batch[1], out.shape[1]).bool(), -1e9).amax(dim=1)
        return other - true


def loop_grads(model, x, y, fn):
    """One autograd.grad per sample of ``fn(model(x_i), y_i)``: [n, D] over all parameters."""
    params = [p for p in model.parameters()]
    rows = []
    for i in range(len(x)):
        out = fn(model(x[i : i + 1]), y[i : i + 1]).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)]))
    return torch.stack(rows)


def ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def margin(out, y):
    true = out.gather(1, y[:, None])[:, 0]
    other = out.masked_fill(F.one_hot(y, out.shape[1]).bool(), -1e9).amax(dim=1)
    return other - true


@pytest.fixture(scope="module")
def trained():
    """A float64 MLP trained with SGD, with checkpoints every epoch (for TracIn-CP)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(70, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    xt = torch.randn(9, 4, generator=g, dtype=torch.float64)
    yt = torch.randint(0, 3, (9,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
    rec = CheckpointRecorder(every=1)
    step = 0
    for epoch in range(1, 5):
        for b in range(0, 70, 10):
            opt.zero_grad()
            F.cross_entropy(model(x[b : b + 10]), y[b : b + 10]).backward()
            opt.step()
            step += 1
        rec.on_epoch_end(model, opt, epoch, step)
        sched.step()
    model.eval()
    return {"model": model, "train": (x, y), "test": (xt, yt), "rec": rec}


def scorer(trained, method, task=None, **kw):
    task = task or MarginTask("all")
    if method == "tracin":
        kw.setdefault("checkpoints", trained["rec"])
    elif method.startswith("if-"):
        kw.setdefault("damping", DAMPING)
    return InfluenceScorer(trained["model"], task, method, **kw).fit(trained["train"])


def test_dot_and_cosine_match_autograd_loops(trained):
    model, (x, y), (xt, yt) = trained["model"], trained["train"], trained["test"]
    G, Gt = loop_grads(model, x, y, ce), loop_grads(model, xt, yt, margin)
    dot = scorer(trained, "dot").scores(trained["train"], trained["test"])
    np.testing.assert_allclose(dot, (G @ Gt.T).numpy(), rtol=1e-10, atol=1e-12)
    cos = scorer(trained, "cosine", block_rows=16).scores(trained["train"], trained["test"])
    expected = (G / G.norm(dim=1, keepdim=True)) @ (Gt / Gt.norm(dim=1, keepdim=True)).T
    np.testing.assert_allclose(cos, expected.numpy(), rtol=1e-10, atol=1e-12)


def test_tracin_sums_lr_weighted_dots_over_checkpoints(trained):
    (x, y), (xt, yt) = trained["train"], trained["test"]
    expected = torch.zeros(len(x), len(xt), dtype=torch.float64)
    lrs = []
    for ck in trained["rec"].checkpoints:
        m = copy.deepcopy(trained["model"])
        m.load_state_dict(ck.state)
        expected += ck.lr * loop_grads(m, x, y, ce) @ loop_grads(m, xt, yt, margin).T
        lrs.append(ck.lr)
    assert lrs == [0.3, 0.3, 0.15, 0.15]
    got = scorer(trained, "tracin", block_rows=13).scores(trained["train"], trained["test"])
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-10, atol=1e-12)


def test_exact_influence_matches_explicit_hessian_solve(trained):
    model, (x, y), (xt, yt) = trained["model"], trained["train"], trained["test"]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def mean_loss(flat):
        sizes = [s.numel() for s in shapes]
        parts = {n: p.reshape(s) for n, p, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return ce(functional_call(model, parts, (x,)), y).mean() + 0.01 / 2 * flat.pow(2).sum()

    H = torch.autograd.functional.hessian(mean_loss, theta)
    A = H + DAMPING * torch.eye(len(theta), dtype=torch.float64)
    G, Gt = loop_grads(model, x, y, ce), loop_grads(model, xt, yt, margin)
    expected = G @ torch.linalg.solve(A, Gt.T)
    for method, kw in (("if-exact", {}), ("if-cg", {"tol": 1e-10})):
        s = scorer(trained, method, weight_decay=0.01, **kw)
        got = s.scores(trained["train"], trained["test"])
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-7, atol=1e-8)  # CG: 3e-10


@pytest.mark.parametrize("method", ["dot", "cosine", "tracin", "if-exact", "datainf"])
def test_top_k_streams_the_same_as_sorting_the_full_matrix(trained, method):
    s = scorer(trained, method, block_rows=8)
    full = s.scores(trained["train"], trained["test"])
    top = s.top_k(trained["train"], trained["test"], k=5)
    np.testing.assert_array_equal(
        top.helpful_indices, np.argsort(-full, axis=0, kind="stable")[:5].T
    )
    np.testing.assert_array_equal(
        top.harmful_indices, np.argsort(full, axis=0, kind="stable")[:5].T
    )
    np.testing.assert_allclose(top.helpful_scores, -np.sort(-full, axis=0)[:5].T)
    np.testing.assert_allclose(top.harmful_scores, np.sort(full, axis=0)[:5].T)


@pytest.mark.parametrize("method", ["dot", "tracin", "if-exact", "datainf"])
def test_self_influence_is_the_diagonal_with_loss_on_both_sides(trained, method):
    s = scorer(trained, method, task=ClassificationTask("all"))
    full = s.scores(trained["train"], trained["train"])
    np.testing.assert_allclose(s.self_influence(trained["train"]), np.diag(full), rtol=1e-9)
    assert np.ptp(s.self_influence(trained["train"])) > 0  # not a constant (cf. METHODS.md)


def test_cosine_self_influence_is_one(trained):
    self_cos = scorer(trained, "cosine").self_influence(trained["train"])
    np.testing.assert_allclose(self_cos, 1.0)


def test_gradient_store_rows_give_the_same_scores(trained, tmp_path):
    model, task = trained["model"], MarginTask("all")
    store = extract(
        model,
        task,
        trained["train"],
        tmp_path / "s",
        ExtractConfig(rows_per_shard=16, dtype="float64"),
    )
    for method in ("dot", "if-exact"):
        s = scorer(trained, method, block_rows=5)
        np.testing.assert_allclose(
            s.scores(store, trained["test"]),
            s.scores(trained["train"], trained["test"]),
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            s.self_influence(store), s.self_influence(trained["train"]), rtol=1e-12
        )
    # TracIn: one store per checkpoint
    stores = []
    for k, ck in enumerate(trained["rec"].checkpoints):
        m = CheckpointRecorder.load_into(copy.deepcopy(model), ck)
        stores.append(
            extract(m, task, trained["train"], tmp_path / f"c{k}", ExtractConfig(dtype="float64"))
        )
    s = scorer(trained, "tracin")
    np.testing.assert_allclose(
        s.scores(stores, trained["test"]), s.scores(trained["train"], trained["test"]), rtol=1e-12
    )
    with pytest.raises(GradsiftError, match="one store per checkpoint"):
        s.scores(stores[:2], trained["test"])
    with pytest.raises(GradsiftError, match="another model"):
        s.scores([store] * 4, trained["test"])


def test_projected_store_scores_projected_test_vectors(trained, tmp_path):
    model, task = trained["model"], MarginTask("all")
    cfg = ProjectionConfig(dim=8, kind="gaussian", seed=3)
    store = extract(
        model,
        task,
        trained["train"],
        tmp_path / "p",
        ExtractConfig(projection=cfg, dtype="float64"),
    )
    s = scorer(trained, "if-exact")
    proj = Projector(GradientComputer(model, task).layout, cfg)
    Q = proj.project(s.test_vectors(trained["test"]))
    expected = torch.as_tensor(store.load()) @ Q.T
    np.testing.assert_allclose(s.scores(store, trained["test"]), expected.numpy(), rtol=1e-10)
    with pytest.raises(GradsiftError, match="unprojected"):
        s.self_influence(store)


def test_bad_input(trained):
    model, task = trained["model"], ClassificationTask("all")
    with pytest.raises(GradsiftError, match="unknown influence method"):
        InfluenceScorer(model, task, "tracein")
    with pytest.raises(GradsiftError, match="needs checkpoints"):
        InfluenceScorer(model, task, "tracin")
    with pytest.raises(GradsiftError, match="uses no Hessian"):
        InfluenceScorer(model, task, "dot", damping=0.1)
    with pytest.raises(GradsiftError, match="not fitted"):
        InfluenceScorer(model, task, "if-cg").scores(trained["train"], trained["test"])
    ck = copy.deepcopy(trained["rec"].checkpoints[0])
    ck.lr = float("nan")
    with pytest.raises(GradsiftError, match="learning rate"):
        InfluenceScorer(model, task, "tracin", checkpoints=[ck])
    assert set(METHODS) == {
        "dot",
        "cosine",
        "tracin",
        "if-exact",
        "if-cg",
        "if-lissa",
        "datainf",
        "if-kfac",
        "if-ekfac",
    }


# --------------------------------------------------------------------------- detectors


def test_self_influence_detectors_equal_the_scorer(trained):
    model, task, train = trained["model"], ClassificationTask("all"), trained["train"]
    names = {
        "self-dot",
        "self-datainf",
        "self-if-exact",
        "self-if-cg",
        "self-if-lissa",
        "self-tracin",
    }
    assert names <= set(available_detectors())
    G = GradientComputer(model, task).compute(train)[0].numpy()
    np.testing.assert_allclose(
        get_detector("self-dot").fit_score(G), get_detector("l2").fit_score(G)
    )
    ctx = DetectionContext(G, model=model, task=task, data=train)
    det = get_detector("self-if-exact", damping=DAMPING)
    ref = InfluenceScorer(model, task, "if-exact", damping=DAMPING).fit(train).self_influence(train)
    np.testing.assert_allclose(det.fit_score(G, context=ctx), ref, rtol=1e-9)
    np.testing.assert_allclose(det.score(G[:5]), ref[:5], rtol=1e-9)
    np.testing.assert_allclose(
        get_detector("self-if-exact", damping=DAMPING).fit_score(context=ctx), ref, rtol=1e-9
    )
    fitted = ExactSolver(damping=DAMPING).fit(model, task, train)
    np.testing.assert_allclose(
        get_detector("self-if-exact", solver=fitted).fit_score(G), ref, rtol=1e-9
    )
    layout = GradientComputer(model, task).layout
    ref_di = InfluenceScorer(model, task, "datainf").fit(train).self_influence(train)
    np.testing.assert_allclose(
        get_detector("self-datainf").fit_score(G, context=DetectionContext(layout=layout)),
        ref_di,
        rtol=1e-9,
    )
    np.testing.assert_allclose(  # the layout of the context's model and task
        get_detector("self-datainf").fit_score(context=ctx), ref_di, rtol=1e-9
    )
    ref_tr = InfluenceScorer(model, task, "tracin", checkpoints=trained["rec"]).self_influence(
        train
    )
    tracin_ctx = DetectionContext(G, model=model, task=task, data=train, checkpoints=trained["rec"])
    np.testing.assert_allclose(get_detector("self-tracin").fit_score(context=tracin_ctx), ref_tr)
    for name in ("self-if-exact", "self-if-cg", "self-if-lissa", "self-tracin"):
        bare = get_detector(name)  # constructible bare, for settings(); fitting says why not
        assert bare.needs_model and bare.settings()["name"] == name
        with pytest.raises(ValueError, match="needs the model .*DetectionContext.*model="):
            bare.fit_score(G)
        with pytest.raises(ValueError, match=r"DetectionContext\(data=\.\.\."):
            get_detector(name).fit_score(G, context=DetectionContext(model=model, task=task))
    with pytest.raises(ValueError, match=r"DetectionContext\(checkpoints="):
        get_detector("self-tracin").fit_score(G, context=ctx)
    with pytest.raises(TypeError, match="from the detection context"):
        get_detector("self-if-cg", model=model, task=task, train_data=train)
    with pytest.raises(ValueError, match="unprojected gradients"):
        get_detector("self-if-exact", damping=DAMPING).fit_score(G[:, :10], context=ctx)


def test_self_influence_in_the_oga_comparison_table():
    """Half-moons with 20 flipped labels: every detector scored by the same metrics.

    Measured AUROC (seed 0, float32 MLP, head tracked): l1 0.993, l2 = self-dot 0.9954,
    iforest 0.997, self-datainf 0.9972, self-if-exact = self-if-cg 0.998.
    """
    data = load_half_moons(seed=0)
    model = mlp(2, 2, hidden=(16,), seed=0)
    wd = 1e-3
    train_classifier(
        model,
        data.train.X,
        data.train.y,
        TrainConfig(epochs=60, lr=1e-2, weight_decay=wd),
        progress=False,
    )
    task = ClassificationTask("last_linear")
    train = (torch.from_numpy(data.train.X), torch.from_numpy(data.train.y))
    G, losses = GradientComputer(model, task).compute(train)
    ctx = DetectionContext(
        G.numpy(), losses.numpy(), model=model, task=task, data=train, weight_decay=wd
    )
    dets = {n: get_detector(n) for n in ("l1", "l2", "iforest", "self-dot", "self-datainf")}
    dets |= {n: get_detector(n, damping=1e-3) for n in ("self-if-exact", "self-if-cg")}
    table = {
        n: detection_metrics(d.fit_score(context=ctx), data.train.flipped) for n, d in dets.items()
    }
    assert table["self-if-exact"]["auroc"] == pytest.approx(table["self-if-cg"]["auroc"], abs=1e-6)
    for name in ("l2", "self-datainf", "self-if-exact"):
        assert table[name]["auroc"] > 0.97, (name, table[name])


def test_defaults_track_all_parameters_of_a_small_model_and_say_so(trained):
    model, train = trained["model"], trained["train"]
    n_params = sum(p.numel() for p in model.parameters())  # 43
    auto = InfluenceScorer(model, ClassificationTask(), "if-exact", damping=DAMPING)
    assert auto.dim == n_params and "auto" in auto.settings()["tracked_choice"]
    kept = InfluenceScorer(model, ClassificationTask(), "if-exact", damping=DAMPING, tracked="task")
    assert kept.dim == 5 * 3 + 3  # the head only
    given = InfluenceScorer(model, ClassificationTask(), "dot", tracked="all")
    assert given.dim == n_params
    # Hessian-free methods and given solvers keep the task's choice
    assert InfluenceScorer(model, ClassificationTask(), "dot").dim == 18
    solver = ExactSolver(damping=DAMPING).fit(model, ClassificationTask(), train)
    assert InfluenceScorer(model, ClassificationTask(), "if-exact", solver=solver).dim == 18


def test_default_damping_is_relative_to_the_mean_hessian_eigenvalue(trained):
    from gradsift.influence.hessian import HessianOperator
    from gradsift.influence.scores import RELATIVE_DAMPING, mean_eigenvalue

    model, train = trained["model"], trained["train"]
    task = MarginTask("all")
    op = HessianOperator(model, task, train)
    true_mean = float(torch.trace(op.dense())) / op.dim
    assert mean_eigenvalue(op, probes=4000) == pytest.approx(true_mean, rel=0.1)
    s = InfluenceScorer(model, task, "if-cg").fit(train)
    assert s.solver.damping == pytest.approx(RELATIVE_DAMPING * abs(mean_eigenvalue(op)))
    assert s.settings()["damping"] == s.solver.damping
    assert "mean eigenvalue" in s.settings()["damping_rule"]
    fixed = InfluenceScorer(model, task, "if-cg", damping=0.5)
    assert fixed.solver.damping == 0.5 and fixed.settings()["damping_rule"] == "given"


def test_lissa_minibatch_size_is_exposed(trained):
    model, task = trained["model"], MarginTask("all")
    s = InfluenceScorer(model, task, "if-lissa", lissa_batch_size=None, damping=DAMPING)
    assert s.solver.batch_size is None
    assert InfluenceScorer(model, task, "if-lissa", lissa_batch_size=16).solver.batch_size == 16
    assert InfluenceScorer(model, task, "if-lissa", batch_size=7).solver.batch_size == 64
    with pytest.raises(GradsiftError, match="lissa_batch_size"):
        InfluenceScorer(model, task, "if-lissa", batch_size=None)
    with pytest.raises(GradsiftError, match="lissa_batch_size"):
        InfluenceScorer(model, task, "if-cg", lissa_batch_size=8)
