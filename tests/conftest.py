"""Shared fixtures: torch on at most 2 threads, no hub downloads (the tiny settings are in tests/tiny.py)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture()
def torch_threads():
    """`torch_threads(n)` sets torch's thread count for the test; the count is restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
