"""Shared pytest fixtures. Never query a GPU at import time: only inside fixtures/tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def cuda_device():
    """torch.device('cuda'); skips the test when torch or a CUDA device is not available."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    return torch.device("cuda")
