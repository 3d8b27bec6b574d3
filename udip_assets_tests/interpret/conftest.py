"""Interpretation tests run torch on one thread: their tiny models gain nothing from two, and the
second core stays with whatever else runs (the machine has two)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
