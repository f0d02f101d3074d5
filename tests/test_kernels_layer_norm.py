"""layer_norm (kernels/layer_norm/, csrc/bind_layer_norm.cpp): fast CPU path (every CPU kernel set) and
CUDA kernel against the naive reference `_C.layer_norm_reference` (plain loops, fp64 statistics), and
the reference against torch.nn.functional.layer_norm, with and without the fused residual add
(x += add in place) and the bias. Outputs are poisoned with NaN before each call.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the sibling helpers, also under --import-mode=importlib
from kernel_testing import cuda_torch, randn  # noqa: E402

C = pytest.importorskip("rsvlm_edge._C")

ODD_SHAPES = [(1, 64), (7, 77), (54, 33), (97, 4096), (577, 5), (1297, 3), (3, 128), (5, 1), (2, 1037)]
VARIANTS = [(True, True), (True, False), (False, True), (False, False)]  # (add, beta)
VARIANT_IDS = ["add+beta", "add", "beta", "plain"]


def args(rng, shape, with_add, with_beta, offset=0.0):
    x = randn(rng, *shape, scale=3.0) + np.float32(offset)
    add = randn(rng, *shape) if with_add else None
    gamma = randn(rng, shape[-1])
    beta = randn(rng, shape[-1]) if with_beta else None
    return x, add, gamma, beta


def run(fn, x, gamma, beta, add, eps=1e-5):
    """fn on a copy of x into a NaN-poisoned out; returns (out, x after the call)."""
    xc = x.copy()
    out = np.full_like(x, np.nan)
    assert fn(xc, gamma, beta, add=add, eps=eps, out=out) is out
    return out, xc


@pytest.mark.parametrize("with_add,with_beta", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape", [(1, 64), (7, 77), (50, 768), (3, 1024)], ids=str)
def test_layer_norm_and_reference_match_torch(shape, with_add, with_beta):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, add, gamma, beta = args(rng, shape, with_add, with_beta)
    xt = torch.from_numpy(x + add if with_add else x)  # fp32 add, as the stored residual stream
    expect = torch.nn.functional.layer_norm(xt, (shape[-1],), torch.from_numpy(gamma),
                                            None if beta is None else torch.from_numpy(beta), 1e-5).numpy()
    for fn in (C.layer_norm, C.layer_norm_reference):
        out, x_after = run(fn, x, gamma, beta, add)
        np.testing.assert_array_equal(x_after, xt.numpy())  # x += add in place (or untouched)
        np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_add,with_beta", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_layer_norm_matches_reference(shape, with_add, with_beta, cpu_kernels):
    rng = np.random.default_rng(1)
    x, add, gamma, beta = args(rng, shape, with_add, with_beta)
    out, x_fast = run(C.layer_norm, x, gamma, beta, add)
    ref, x_ref = run(C.layer_norm_reference, x, gamma, beta, add)
    assert np.isfinite(ref).all()
    np.testing.assert_array_equal(x_fast, x_ref)
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6 * (1 + np.abs(gamma).max()))


@pytest.mark.parametrize("shape", [(7, 77), (3, 768), (2, 1037)], ids=str)
def test_layer_norm_is_two_pass_on_rows_with_a_large_mean(shape, cpu_kernels):
    """Rows of mean 1e4 and spread 1: E[x^2] - E[x]^2 in fp32 would lose every digit of the variance
    (ulp(1e8) = 8); the two-pass statistics keep the result within the fp32 rounding of the mean."""
    rng = np.random.default_rng(2)
    x, add, gamma, beta = args(rng, shape, True, True, offset=1e4)
    x = (x - np.float32(1e4)) / np.float32(3.0) + np.float32(1e4)
    out, _ = run(C.layer_norm, x, gamma, beta, add, eps=1e-6)
    ref, _ = run(C.layer_norm_reference, x, gamma, beta, add, eps=1e-6)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=2e-3 * np.abs(gamma).max())


def test_layer_norm_constant_rows_and_eps():
    """A constant row has variance 0: out = beta with eps > 0, as torch; eps=0 gives NaN there (0 * inf)."""
    x = np.full((3, 40), 2.5, np.float32)
    gamma, beta = randn(np.random.default_rng(3), 40), randn(np.random.default_rng(4), 40)
    for fn in (C.layer_norm, C.layer_norm_reference):
        np.testing.assert_array_equal(fn(x, gamma, beta), np.broadcast_to(beta, x.shape))
        assert np.isnan(fn(x, gamma, beta, eps=0.0)).all()


def test_layer_norm_defaults_allocate_out_and_leave_x():
    rng = np.random.default_rng(5)
    x = randn(rng, 5, 33)
    x0 = x.copy()
    gamma = randn(rng, 33)
    out = C.layer_norm(x, gamma)
    assert out.shape == (5, 33) and out.dtype == np.float32
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_allclose(out, C.layer_norm_reference(x, gamma, None, eps=1e-5), rtol=2e-6, atol=1e-5)


def test_layer_norm_zero_rows_and_bad_arguments():
    g = np.ones(16, np.float32)
    x = np.zeros((3, 16), np.float32)
    for fn in (C.layer_norm, C.layer_norm_reference):
        name = fn.__name__
        assert fn(np.zeros((0, 16), np.float32), g).shape == (0, 16)
        assert fn(np.zeros((0, 16), np.float32), g, g, add=np.zeros((0, 16), np.float32)).shape == (0, 16)
        with pytest.raises(ValueError, match=rf"^{name}: argument 'gamma' must have shape \(D=16,\) float32"):
            fn(x, np.zeros(15, np.float32))
        with pytest.raises(ValueError, match=r"argument 'beta' must have shape \(D=16,\) float32"):
            fn(x, g, np.zeros(17, np.float32))
        with pytest.raises(ValueError, match=r"argument 'gamma' must have shape \(D=16,\) float32 C-contiguous, got \(16,\) float16"):
            fn(x, g.astype(np.float16))
        with pytest.raises(ValueError, match=r"argument 'add' must have shape \(M=3, D=16\) float32"):
            fn(x.copy(), g, add=np.zeros((2, 16), np.float32))
        with pytest.raises(ValueError, match=r"argument 'x' must have D >= 1"):
            fn(np.zeros((3, 0), np.float32), np.zeros(0, np.float32))
        with pytest.raises(ValueError, match=r"argument 'eps' must be >= 0"):
            fn(x, g, eps=float("nan"))
        with pytest.raises(ValueError, match=r"argument 'eps' must be >= 0"):
            fn(x, g, eps=-1e-5)
        with pytest.raises(ValueError, match=r"argument 'x' must have shape \(M, D\) float32 C-contiguous, got \(3, 16\) float16"):
            fn(x.astype(np.float16), g)
        with pytest.raises(ValueError, match=r"argument 'x' must have shape \(M, D\) float32 C-contiguous, got \(3, 8\) float32 non-contiguous"):
            fn(np.zeros((3, 16), np.float32)[:, ::2], np.ones(8, np.float32))
        with pytest.raises(ValueError, match=r"argument 'x' must have shape \(M, D\) float32"):
            fn(np.zeros(16, np.float32), g)
        with pytest.raises(ValueError, match=r"argument 'x' has numpy dtype float64, which is not supported"):
            fn(np.zeros((3, 16)), g)
        with pytest.raises(ValueError, match=r"argument 'out' must have shape \(M=3, D=16\) float32"):
            fn(x, g, out=np.zeros((3, 15), np.float32))
        with pytest.raises(ValueError, match=r"argument 'gamma' is required but got None"):
            fn(x, None)
        ro = x.copy()
        ro.flags.writeable = False
        with pytest.raises(ValueError, match=r"argument 'x' is read-only"):
            fn(ro, g, add=x)  # x += add needs a writable x
        assert fn(ro, g).shape == (3, 16)  # without add x is only read


def test_layer_norm_refuses_outputs_that_share_memory():
    rng = np.random.default_rng(6)
    g = np.ones(8, np.float32)
    for fn in (C.layer_norm, C.layer_norm_reference):
        x = randn(rng, 4, 8)
        with pytest.raises(ValueError, match=r"argument 'out' shares memory with 'x'"):
            fn(x, g, out=x)
        buf = randn(rng, 5, 8)
        with pytest.raises(ValueError, match=r"argument 'out' shares memory with 'x'"):
            fn(buf[:4], g, out=buf[1:])  # partial overlap
        add = randn(rng, 4, 8)
        with pytest.raises(ValueError, match=r"argument 'out' shares memory with 'add'"):
            fn(x, g, add=add, out=add)
        with pytest.raises(ValueError, match=r"argument 'x' \(updated in place by the add\) shares memory with 'add'"):
            fn(x, g, add=x)
        gb = randn(rng, 4, 8)
        with pytest.raises(ValueError, match=r"argument 'out' shares memory with 'gamma'"):
            fn(x, gb[2], out=gb)  # gamma is a row of out
        np.testing.assert_array_equal(fn(x, g, out=np.full_like(x, np.nan)), fn(x.copy(), g))


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

CUDA_DTYPES = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}  # tolerance vs the fp64 reference


@pytest.mark.cuda
@pytest.mark.parametrize("dtype_name", list(CUDA_DTYPES))
@pytest.mark.parametrize("with_add,with_beta", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape", [(1, 64), (7, 77), (50, 768), (577, 5), (3, 1280)], ids=str)
def test_cuda_layer_norm_matches_reference(cuda_device, dtype_name, shape, with_add, with_beta):
    torch = cuda_torch()
    dt, tol = getattr(torch, dtype_name), CUDA_DTYPES[dtype_name]
    rng = np.random.default_rng(8)
    x, add, gamma, beta = (None if a is None else torch.from_numpy(a).to(dt) for a in args(rng, shape, with_add, with_beta))
    x_gpu = x.cuda()
    out = torch.full(shape, float("nan"), dtype=dt, device="cuda")
    C.layer_norm(x_gpu, gamma.cuda(), None if beta is None else beta.cuda(),
                 add=None if add is None else add.cuda(), eps=1e-5, out=out)
    # The GPU adds in fp32 and rounds the sum to the dtype: the statistics are those of the rounded x.
    x_new = (x.float() + add.float()).to(dt) if with_add else x
    assert torch.equal(x_gpu.cpu(), x_new)
    ref = C.layer_norm_reference(x_new.float().numpy(), gamma.float().numpy(),
                                 None if beta is None else beta.float().numpy(), eps=1e-5,
                                 out=np.full(shape, np.nan, np.float32))
    np.testing.assert_allclose(out.float().cpu().numpy(), ref, rtol=tol, atol=tol * 4)


@pytest.mark.cuda
def test_cuda_layer_norm_argument_checks(cuda_device):
    torch = cuda_torch()
    x = torch.zeros(3, 16, device="cuda", dtype=torch.float16)
    g = torch.ones(16, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match=r"argument 'out' is required for CUDA inputs"):
        C.layer_norm(x, g)
    with pytest.raises(ValueError, match=r"argument 'gamma' must have shape \(D=16,\) float16"):
        C.layer_norm(x, g.float(), out=torch.empty_like(x))
    with pytest.raises(ValueError, match=r"argument 'gamma' is on cpu but 'x' is on cuda"):
        C.layer_norm(x, g.cpu(), out=torch.empty_like(x))
    with pytest.raises(ValueError, match=r"argument 'out' shares memory with 'x'"):
        C.layer_norm(x, g, out=x)
    with pytest.raises(ValueError, match=r"layer_norm_reference: argument 'x' is on cuda"):
        C.layer_norm_reference(x, g)
