"""swiglu (kernels/swiglu/, csrc/bind_swiglu.cpp): fast CPU path and CUDA kernel against the naive
reference `_C.swiglu_reference` (fp64), and the reference against torch's silu. Outputs are poisoned
with NaN before each call.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the sibling helpers, also under --import-mode=importlib
from kernel_testing import cuda_dtype, cuda_dtype_test, randn  # noqa: E402

C = pytest.importorskip("rsvlm_edge._C")


def test_swiglu_reference_matches_torch_silu():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    g = randn(rng, 7, 97, scale=4.0)
    u = randn(rng, 7, 97)
    expect = (torch.nn.functional.silu(torch.from_numpy(g).double()) * torch.from_numpy(u).double()).numpy()
    ref = np.full_like(g, np.nan)
    assert C.swiglu_reference(g, u, out=ref) is ref
    np.testing.assert_allclose(ref, expect, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(1, 11008), (7, 97), (15, 33), (54, 1), (577, 7), (1297, 3)], ids=str)
def test_swiglu_matches_reference(shape, cpu_kernels):
    rng = np.random.default_rng(4)
    g = randn(rng, *shape, scale=4.0)
    u = randn(rng, *shape)
    out = np.full_like(g, np.nan)
    C.swiglu(g, u, out=out)
    ref = np.full_like(g, np.nan)
    C.swiglu_reference(g, u, out=ref)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    C.swiglu(g, u, out=g)  # in place over gate
    np.testing.assert_array_equal(g, out)


def test_swiglu_extreme_gates_match_reference(cpu_kernels):
    """Gates where a naive exp(-g) overflows or underflows, subnormals, signed zeros, inf and NaN, at
    every lane position of the 8-lane path and in the scalar tail."""
    specials = np.array([0.0, -0.0, 1e-40, -1e-40, 1e-6, -1e-6, 20.0, -20.0, 87.0, -87.0, 88.5, -88.5, 100.0,
                         -100.0, 1e30, -1e30, np.inf, -np.inf, np.nan], dtype=np.float32)
    g = np.concatenate([np.roll(specials, k) for k in range(8)] + [specials[:5]]).reshape(1, -1)
    u = np.random.default_rng(5).uniform(0.5, 2.0, g.shape).astype(np.float32)
    out = np.full_like(g, np.nan)
    C.swiglu(g, u, out=out)
    ref = C.swiglu_reference(g, u)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-30)


def test_swiglu_empty_and_bad_arguments():
    for fn in (C.swiglu, C.swiglu_reference):
        assert fn(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32)).shape == (0, 5)
        with pytest.raises(ValueError, match=r"argument 'up' must have shape \(T=3, F=16\) float32"):
            fn(np.zeros((3, 16), np.float32), np.zeros((3, 15), np.float32))


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

@cuda_dtype_test
@pytest.mark.parametrize("shape", [(7, 11008), (1297, 3)], ids=str)
def test_cuda_swiglu_matches_reference(cuda_device, dtype_name, shape):
    torch, dt, tol = cuda_dtype(dtype_name)
    rng = np.random.default_rng(8)
    g = torch.from_numpy(randn(rng, *shape, scale=4.0)).to(dt)
    u = torch.from_numpy(randn(rng, *shape)).to(dt)
    out = torch.full(shape, float("nan"), dtype=dt, device="cuda")
    C.swiglu(g.cuda(), u.cuda(), out=out)
    ref = C.swiglu_reference(g.float().numpy(), u.float().numpy())
    np.testing.assert_allclose(out.float().cpu().numpy(), ref, rtol=tol, atol=tol)
