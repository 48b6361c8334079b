"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module's tests (restored afterwards).

    Tiny problems run faster on one thread and are immune to a loaded 2-core machine;
    tests comparing bits with subprocesses started with ``OMP_NUM_THREADS=1`` need it,
    because float sums depend on the thread count. Opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
