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


@pytest.fixture
def cpu_kernels(request):
    """Runs a native-kernel test once per CPU micro-kernel set this machine has (kernel_testing.CPU_KERNELS:
    avx512vnni / avx2 / portable, and amx where the test's cpu_kernel_sets marker names it), then restores
    the default."""
    import rsvlm_edge._C as C

    assert C.set_cpu_kernels(request.param) == request.param
    yield request.param
    C.set_cpu_kernels("auto")


def pytest_generate_tests(metafunc):
    if "cpu_kernels" in metafunc.fixturenames:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).parent))
        from kernel_testing import CPU_KERNELS, NARROW_CPU_KERNELS

        marker = metafunc.definition.get_closest_marker("cpu_kernel_sets")  # a test that needs fewer, or amx
        if marker is None:
            names = [k for k in CPU_KERNELS if k not in NARROW_CPU_KERNELS]
        else:
            names = [k for k in CPU_KERNELS if k in marker.args]
        metafunc.parametrize("cpu_kernels", names, indirect=True)
