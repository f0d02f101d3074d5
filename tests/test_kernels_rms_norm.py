"""rms_norm (kernels/rms_norm/, csrc/bind_rms_norm.cpp): fast CPU path and CUDA kernel against the naive
reference `_C.rms_norm_reference` (plain loops, fp64), and the reference against HF transformers'
LlamaRMSNorm, with and without the fused residual add (x += add in place, then the norm of the sum).
Outputs are poisoned with NaN before each call.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the sibling helpers, also under --import-mode=importlib
from kernel_testing import cuda_dtype, cuda_dtype_test, randn  # noqa: E402

C = pytest.importorskip("rsvlm_edge._C")

ODD_SHAPES = [(1, 64), (7, 77), (54, 33), (97, 4096), (577, 5), (1297, 3), (3, 128)]


@pytest.mark.parametrize("shape", [(1, 64), (7, 77), (97, 4096), (3, 128)], ids=str)
def test_rms_norm_and_reference_match_llama_rmsnorm(shape):
    torch = pytest.importorskip("torch")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    rng = np.random.default_rng(0)
    x = randn(rng, *shape, scale=3.0)
    w = randn(rng, shape[-1])
    ref_mod = LlamaRMSNorm(shape[-1], eps=1e-5)
    with torch.no_grad():
        ref_mod.weight.copy_(torch.from_numpy(w))
        hf = ref_mod(torch.from_numpy(x)).numpy()
    out = np.full_like(x, np.nan)
    assert C.rms_norm(x, w, 1e-5, out=out) is out
    np.testing.assert_allclose(out, hf, rtol=1e-5, atol=1e-5)
    ref = np.full_like(x, np.nan)
    assert C.rms_norm_reference(x, w, 1e-5, out=ref) is ref
    np.testing.assert_allclose(ref, hf, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_rms_norm_matches_reference(shape):
    rng = np.random.default_rng(1)
    x = randn(rng, *shape, scale=3.0)
    w = randn(rng, shape[-1])
    out = np.full_like(x, np.nan)
    C.rms_norm(x, w, 1e-6, out=out)
    ref = np.full_like(x, np.nan)
    C.rms_norm_reference(x, w, 1e-6, out=ref)
    assert np.isfinite(ref).all()
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6)


def test_rms_norm_in_place():
    rng = np.random.default_rng(1)
    x = randn(rng, 5, 33)
    w = randn(rng, 33)
    expect = C.rms_norm(x, w)
    ref = x.copy()
    C.rms_norm_reference(ref, w, out=ref)
    C.rms_norm(x, w, out=x)
    np.testing.assert_array_equal(x, expect)
    np.testing.assert_allclose(x, ref, rtol=2e-6, atol=2e-6)


def test_rms_norm_zero_rows_and_bad_arguments():
    w = np.ones(16, np.float32)
    for fn in (C.rms_norm, C.rms_norm_reference):
        assert fn(np.zeros((0, 16), np.float32), w).shape == (0, 16)
        with pytest.raises(ValueError, match=r"argument 'weight' must have shape \(D=16,\) float32"):
            fn(np.zeros((3, 16), np.float32), np.zeros(15, np.float32))
        with pytest.raises(ValueError, match=r"argument 'x' must have D >= 1"):
            fn(np.zeros((3, 0), np.float32), np.zeros(0, np.float32))
        with pytest.raises(ValueError, match=r"argument 'eps' must be >= 0"):
            fn(np.zeros((3, 16), np.float32), w, float("nan"))


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_rms_norm_with_add_matches_reference_and_unfused(shape):
    rng = np.random.default_rng(2)
    x = randn(rng, *shape, scale=3.0)
    add = randn(rng, *shape)
    w = randn(rng, shape[-1])
    results = {}
    for name, fn in (("fast", C.rms_norm), ("ref", C.rms_norm_reference)):
        xc = x.copy()
        out = np.full_like(x, np.nan)
        assert fn(xc, w, 1e-6, add=add, out=out) is out
        np.testing.assert_array_equal(xc, x + add)  # the residual stream holds the fp32 sum
        results[name] = out
    np.testing.assert_allclose(results["fast"], results["ref"], rtol=2e-6, atol=2e-6)
    unfused = C.rms_norm_reference(x + add, w, 1e-6)
    np.testing.assert_array_equal(results["ref"], unfused)


def test_rms_norm_add_argument_checks():
    rng = np.random.default_rng(3)
    w = np.ones(8, np.float32)
    for fn in (C.rms_norm, C.rms_norm_reference):
        x = randn(rng, 4, 8)
        with pytest.raises(ValueError, match=r"argument 'add' must have shape \(T=4, D=8\) float32"):
            fn(x.copy(), w, add=np.zeros((3, 8), np.float32))
        ro = x.copy()
        ro.flags.writeable = False
        with pytest.raises(ValueError, match=r"argument 'x' is read-only"):
            fn(ro, w, add=x)
        assert fn(ro, w).shape == (4, 8)  # without add x is only read
        with pytest.raises(ValueError, match=r"argument 'out' shares memory with 'x'"):
            fn(x, w, add=randn(rng, 4, 8), out=x)
        add = randn(rng, 4, 8)
        with pytest.raises(ValueError, match=r"argument 'out' shares memory with 'add'"):
            fn(x, w, add=add, out=add)
        with pytest.raises(ValueError, match=r"argument 'x' \(updated in place by the add\) shares memory with 'add'"):
            fn(x, w, add=x)
        # nothing half-written on a refused call:
        before = x.copy()
        with pytest.raises(ValueError):
            fn(x, w, add=np.zeros((4, 8), np.float64))
        np.testing.assert_array_equal(x, before)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

@cuda_dtype_test
@pytest.mark.parametrize("shape", [(1, 64), (7, 77), (97, 4096), (577, 5)], ids=str)
def test_cuda_rms_norm_matches_reference(cuda_device, dtype_name, shape):
    torch, dt, tol = cuda_dtype(dtype_name)
    rng = np.random.default_rng(8)
    x = torch.from_numpy(randn(rng, *shape, scale=3.0)).to(dt)  # inputs rounded to the GPU dtype
    w = torch.from_numpy(randn(rng, shape[-1])).to(dt)
    out = torch.full(shape, float("nan"), dtype=dt, device="cuda")
    C.rms_norm(x.cuda(), w.cuda(), 1e-5, out=out)
    ref = C.rms_norm_reference(x.float().numpy(), w.float().numpy(), 1e-5, out=np.full(shape, np.nan, np.float32))
    np.testing.assert_allclose(out.float().cpu().numpy(), ref, rtol=tol, atol=tol * 4)


@cuda_dtype_test
@pytest.mark.parametrize("shape", [(1, 64), (7, 77), (3, 2048), (2, 8192), (2, 8200), (577, 5)], ids=str)
def test_cuda_rms_norm_with_add_matches_reference(cuda_device, dtype_name, shape):
    """The register-resident kernel (D % 8 == 0, D <= 8192) and the strided one (others), fused add."""
    torch, dt, tol = cuda_dtype(dtype_name)
    rng = np.random.default_rng(9)
    x = torch.from_numpy(randn(rng, *shape, scale=3.0)).to(dt)
    add = torch.from_numpy(randn(rng, *shape)).to(dt)
    w = torch.from_numpy(randn(rng, shape[-1])).to(dt)
    x_dev = x.cuda()
    out = torch.full(shape, float("nan"), dtype=dt, device="cuda")
    C.rms_norm(x_dev, w.cuda(), 1e-5, add=add.cuda(), out=out)
    # The GPU adds in fp32 and rounds the sum to the dtype: the statistics are those of the rounded x.
    x_new = (x.float() + add.float()).to(dt)
    np.testing.assert_array_equal(x_dev.cpu().float().numpy(), x_new.float().numpy())
    ref = C.rms_norm_reference(x_new.float().numpy(), w.float().numpy(), 1e-5)
    np.testing.assert_allclose(out.float().cpu().numpy(), ref, rtol=tol, atol=tol * 4)


@cuda_dtype_test
def test_cuda_rms_norm_in_place_register_kernel(cuda_device, dtype_name):
    torch, dt, tol = cuda_dtype(dtype_name)
    rng = np.random.default_rng(10)
    x = torch.from_numpy(randn(rng, 5, 2048, scale=3.0)).to(dt)
    w = torch.from_numpy(randn(rng, 2048)).to(dt)
    x_dev = x.cuda()
    C.rms_norm(x_dev, w.cuda(), 1e-5, out=x_dev)
    ref = C.rms_norm_reference(x.float().numpy(), w.float().numpy(), 1e-5)
    np.testing.assert_allclose(x_dev.float().cpu().numpy(), ref, rtol=tol, atol=tol * 4)
