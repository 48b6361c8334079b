"""A small, deterministic extraction job run as a real subprocess by the resume tests.

Usage: python extract_job.py STORE_DIR [SECONDS_TO_SLEEP_AFTER_EACH_SHARD]
"""

import sys
import time

import torch
from torch import nn

from gradsift.grads.extract import ExtractConfig, extract
from gradsift.grads.projection import ProjectionConfig
from gradsift.task import ClassificationTask


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(230, 10, generator=g)
    y = torch.randint(0, 5, (230,), generator=g)
    return model, (x, y)


if __name__ == "__main__":
    path = sys.argv[1]
    pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    model, data = build()
    config = ExtractConfig(
        projection=ProjectionConfig(dim=64, kind="gaussian", seed=3),
        rows_per_shard=20,
        batch_size=7,
    )
    task = ClassificationTask(tracked="all")
    extract(model, task, data, path, config, on_shard=lambda shard: time.sleep(pause))
