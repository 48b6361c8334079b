"""Per-sample gradients against an independent loop of torch.autograd.grad calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradsift.errors import GradientError
from gradsift.grads.computer import GradientComputer
from gradsift.task import BinaryClassificationTask, ClassificationTask, select_tracked

TOL = {torch.float64: 1e-5, torch.float32: 1e-4}


def reference(model, params, x, y, loss_fn):
    """Ground truth: one autograd.grad call per sample, each on that sample's own loss."""
    rows = []
    for i in range(len(x)):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1]).sum()
        gs = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


def mlp(bias=True):
    return nn.Sequential(nn.Linear(6, 16, bias=bias), nn.Tanh(), nn.Linear(16, 4, bias=bias))


def cnn(bias=True):
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4, bias=bias),
    )


def bn_model(bias=True):
    return nn.Sequential(
        nn.Linear(6, 8, bias=bias), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4, bias=bias)
    )


def data_for(name, dtype, n=9):
    g = torch.Generator().manual_seed(1)
    x = (
        torch.randn(n, 1, 8, 8, generator=g, dtype=dtype)
        if name == "cnn"
        else torch.randn(n, 6, generator=g, dtype=dtype)
    )
    return x, torch.randint(0, 4, (n,), generator=g)


def ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def relerr(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("arch", ["mlp", "cnn", "bn"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tracked", ["last_linear", "all"])
@pytest.mark.parametrize("method", ["auto", "vmap", "loop"])
def test_matches_autograd_loop(dtype, arch, bias, tracked, method):
    torch.manual_seed(0)
    model = {"mlp": mlp, "cnn": cnn, "bn": bn_model}[arch](bias).to(dtype)
    if arch == "bn":  # give BatchNorm non-trivial running statistics, then freeze them
        model.train()
        model(torch.randn(32, 6, dtype=dtype) * 2 + 1)
    model.eval()
    x, y = data_for(arch, dtype)
    task = ClassificationTask(tracked=tracked)
    gc = GradientComputer(model, task, method=method, chunk_size=4)
    G, losses = gc.compute((x, y))
    params = list(select_tracked(model, tracked).values())
    expected = reference(model, params, x, y, ce)
    assert G.shape == expected.shape
    assert relerr(G, expected) < TOL[dtype]
    assert torch.allclose(losses, ce(model(x), y).detach())
    if method == "auto" and tracked == "last_linear":
        assert gc.method == "closed_form"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tracked", ["last_linear", "all"])
def test_hooks_path_matches_autograd_loop(dtype, bias, tracked):
    torch.manual_seed(0)
    model = mlp(bias).to(dtype).eval()
    x, y = data_for("mlp", dtype)
    gc = GradientComputer(model, ClassificationTask(tracked=tracked), "hooks", chunk_size=4)
    G, losses = gc.compute((x, y))
    expected = reference(model, list(select_tracked(model, tracked).values()), x, y, ce)
    assert gc.method == "hooks" and G.shape == expected.shape
    assert relerr(G, expected) < TOL[dtype]
    assert torch.allclose(losses, ce(model(x), y).detach())


def test_hooks_path_refused_or_skipped_where_not_exact():
    with pytest.raises(GradientError, match="not the weight or bias of an nn.Linear"):
        GradientComputer(cnn(True).eval(), ClassificationTask(tracked="all"), "hooks")

    class RowsIndependent(ClassificationTask):
        rows_independent = True

    plain = GradientComputer(mlp(True).eval(), ClassificationTask(tracked="all"))
    declared = GradientComputer(mlp(True).eval(), RowsIndependent(tracked="all"))
    conv = GradientComputer(cnn(True).eval(), RowsIndependent(tracked="all"))
    assert (plain.method, declared.method, conv.method) == ("vmap", "hooks", "vmap")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["closed_form", "vmap"])
def test_binary_head_matches_loop(dtype, method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 1)).to(dtype).eval()
    x = torch.randn(11, 6, dtype=dtype)
    y = torch.randint(0, 2, (11,))
    G, _ = GradientComputer(model, BinaryClassificationTask(), method=method).compute((x, y))
    params = list(model[2].parameters())

    def bce(out, t):
        return F.binary_cross_entropy_with_logits(out.reshape(-1), t.to(dtype), reduction="none")

    assert relerr(G, reference(model, params, x, y, bce)) < TOL[dtype]


def test_closed_form_refused_when_not_exact():
    class Smoothed(ClassificationTask):
        def loss(self, outputs, batch):
            return F.cross_entropy(outputs, batch[1], reduction="none", label_smoothing=0.1)

    model = mlp().eval()
    with pytest.raises(GradientError, match="not exact"):
        GradientComputer(model, Smoothed(), method="closed_form")
    gc = GradientComputer(model, Smoothed(), method="auto")
    assert gc.method == "vmap"
    with pytest.raises(GradientError, match="not exact"):
        GradientComputer(model, ClassificationTask(tracked="all"), method="closed_form")


def test_batchnorm_in_train_mode_is_refused():
    model = bn_model().train()
    x, y = data_for("bn", torch.float32)
    with pytest.raises(GradientError, match=r"train mode.*model.eval\(\)"):
        GradientComputer(model, ClassificationTask(tracked="all")).compute((x, y))


def test_nan_loss_names_the_samples():
    model = mlp().eval()
    x, y = data_for("mlp", torch.float32)
    x[2, 0] = float("nan")
    x[5, 1] = float("nan")
    for method in ("closed_form", "vmap"):
        with pytest.raises(GradientError, match=r"sample indices \[12, 15\]"):
            GradientComputer(model, ClassificationTask(), method=method).compute(
                (x, y), first_index=10
            )


def test_label_out_of_range_names_the_samples():
    model = mlp().eval()
    x, y = data_for("mlp", torch.float32)
    y[3] = 4
    y[7] = -1
    with pytest.raises(GradientError, match=r"label out of range.*sample indices \[3, 7\]"):
        GradientComputer(model, ClassificationTask(tracked="all")).compute((x, y))


def test_empty_batch():
    model = mlp().eval()
    with pytest.raises(GradientError, match="empty"):
        GradientComputer(model, ClassificationTask()).compute(
            (torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
        )


class InPlace(nn.Module):
    """Writes into an unbatched buffer: fine for autograd, rejected by vmap."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x):
        out = torch.zeros(x.shape[0], 4, dtype=x.dtype)
        for i in range(x.shape[0]):
            out[i] += self.lin(x[i])
        return out


def test_vmap_rejection_is_a_clear_error_or_a_tested_fallback():
    torch.manual_seed(0)
    model = InPlace().double().eval()
    x, y = data_for("mlp", torch.float64)
    task = ClassificationTask(tracked="all")
    with pytest.raises(GradientError, match="vmap cannot run this model"):
        GradientComputer(model, task, method="vmap").compute((x, y))
    gc = GradientComputer(model, task, method="auto")
    with pytest.warns(UserWarning, match="falling back"):
        G, _ = gc.compute((x, y))
    assert gc.method == "loop"
    expected = reference(model, list(model.parameters()), x, y, ce)
    assert relerr(G, expected) < 1e-10


def test_named_module_tracking():
    model = mlp().eval()
    tracked = select_tracked(model, ["0"])
    assert list(tracked) == ["0.weight", "0.bias"]
    x, y = data_for("mlp", torch.float64)
    model = model.double()
    G, _ = GradientComputer(model, ClassificationTask(tracked=["0.weight"])).compute((x, y))
    assert relerr(G, reference(model, [model[0].weight], x, y, ce)) < 1e-10
    with pytest.raises(ValueError, match="matches no parameter"):
        select_tracked(model, ["nope"])
