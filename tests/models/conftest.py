"""Fixtures of the model tests (their helpers are in model_helpers.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """On these tiny tensors a second OpenMP thread costs more in synchronization than it saves,
    the more so on a busy machine: on the shared 2-core CI box the 55 pairs took 8.6 minutes with
    two threads, 1.6 with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
