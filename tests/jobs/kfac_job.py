"""A deterministic K-FAC factor fit, run by tests/test_kfac.py under torchrun (2 gloo ranks).

Usage: torchrun --standalone --nproc-per-node 2 kfac_job.py FACTOR_DIR
"""

import sys

import torch
from torch import nn

from gradsift.distributed.process_group import distributed_session
from gradsift.influence.kfac import fit_kfac_factors
from gradsift.task import ClassificationTask


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(101, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (101,), generator=g)
    return model, ClassificationTask("all"), (x, y)


def fit(model, task, data, path):
    """Sampled-label EK-FAC factors, 7 batches of 16, checkpoints every 2 batches per rank."""
    return fit_kfac_factors(
        model, task, data, fisher="sampled", path=path, batch_size=16, checkpoint_every=2
    )


if __name__ == "__main__":
    with distributed_session(backend="gloo") as ctx:
        assert ctx.world_size == 2, ctx
        fit(*build(), sys.argv[1])
