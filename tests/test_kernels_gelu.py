"""gelu (kernels/gelu/, csrc/bind_gelu.cpp): in place, kinds erf / tanh / quick. The fast CPU path
(every CPU kernel set) and the CUDA kernel against the naive reference `_C.gelu_reference` (fp64), and
both against torch: F.gelu (approximate "none" and "tanh") and x * sigmoid(1.702 x), on a grid that
includes extreme values. The arrays sit inside NaN-poisoned buffers whose guard cells must survive.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the sibling helpers, also under --import-mode=importlib
from kernel_testing import cuda_torch, randn  # noqa: E402

C = pytest.importorskip("rsvlm_edge._C")

KINDS = ["erf", "tanh", "quick"]
FMAX = np.finfo(np.float32).max
GUARD = 19  # poisoned cells on each side (odd: the array starts at an unaligned address)


def grid():
    """Dense on [-20, 20] (both pieces of the erf approximation, the exp underflow near +-13.2), then
    extreme finite values: tiny and subnormal, large, up to 1e30."""
    dense = np.linspace(-20.0, 20.0, 80001)
    ext = [0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1e-30, -1e-30, 1e-7, -1e-7, 0.999999, 1.0, 1.000001, -1.0,
           13.2, -13.2, 14.0, -14.0, 30.0, -30.0, 88.0, -88.0, 100.0, -100.0, 1e3, -1e3, 1e6, -1e6, 1e10, -1e10,
           1e19, -1e19, 1e30, -1e30]
    return np.concatenate([dense, ext]).astype(np.float32)


def torch_act(torch, x, kind):
    t = torch.from_numpy(x)
    if kind == "erf":
        return torch.nn.functional.gelu(t)
    if kind == "tanh":
        return torch.nn.functional.gelu(t, approximate="tanh")
    return t * torch.sigmoid(1.702 * t)


def apply(fn, x, kind):
    """fn on a copy of x (M, N) placed inside a NaN-poisoned buffer; checks the guards and that fn
    returns its argument; returns the result."""
    buf = np.full(x.size + 2 * GUARD, np.nan, np.float32)
    view = buf[GUARD:GUARD + x.size].reshape(x.shape)
    view[...] = x
    assert fn(view, kind) is view
    assert np.isnan(buf[:GUARD]).all() and np.isnan(buf[GUARD + x.size:]).all(), "wrote outside x"
    return view.copy()


def assert_close_scaled(got, want, x, tol, what):
    got, want, x = (np.ravel(a).astype(np.float64) for a in (got, want, x))
    err = np.abs(got - want) / np.maximum(1.0, np.abs(x))
    worst = int(np.argmax(err))
    assert err[worst] <= tol, f"{what}: max |err| / max(1, |x|) = {err[worst]:.3g} at x={x[worst]!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_gelu_and_reference_match_torch(kind, cpu_kernels):
    """max |err| <= 2e-6 * max(1, |x|) against torch's float32 op; the fp64 reference against torch's
    float64 op within the rounding to float32."""
    torch = pytest.importorskip("torch")
    x = grid().reshape(1, -1)
    expect32 = torch_act(torch, x, kind).numpy()
    expect64 = torch_act(torch, x.astype(np.float64), kind).numpy()
    fast = apply(C.gelu, x, kind)
    ref = apply(C.gelu_reference, x, kind)
    assert np.isfinite(fast).all() and np.isfinite(ref).all()
    assert_close_scaled(fast, expect32, x, 2e-6, f"gelu {kind} vs torch float32")
    assert_close_scaled(fast, expect64, x, 2e-7, f"gelu {kind} vs torch float64")
    assert_close_scaled(ref, expect64, x, 1e-7, f"gelu_reference {kind} vs torch float64")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 3072), (7, 97), (15, 33), (54, 1), (577, 7), (1297, 3), (3, 17)], ids=str)
def test_gelu_matches_reference(shape, kind, cpu_kernels):
    rng = np.random.default_rng(4)
    x = randn(rng, *shape, scale=4.0)
    fast = apply(C.gelu, x, kind)
    ref = apply(C.gelu_reference, x, kind)
    assert_close_scaled(fast, ref, x, 3e-7, f"gelu {kind}")
    # relative accuracy where the result is small (the negative tail: no 1 + erf cancellation)
    tiny = np.abs(ref) > 1e-30
    np.testing.assert_allclose(fast[tiny], ref[tiny], rtol=2e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gelu_special_values(kind, cpu_kernels):
    """+inf -> +inf, -inf -> -0, NaN -> NaN, +-FLT_MAX, signed zeros and subnormals, at every lane
    position of the 8- and 16-lane paths and in their tails."""
    specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, FMAX, -FMAX, 1e-40, -1e-40, 1e30, -1e30, 13.5, -13.5,
                         -14.5, 87.5, -87.5, 3.0, -3.0], np.float32)
    x = np.concatenate([np.roll(specials, k) for k in range(16)] + [specials[:7]]).reshape(1, -1)
    fast = apply(C.gelu, x, kind)
    ref = apply(C.gelu_reference, x, kind)
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(x))
    np.testing.assert_array_equal(np.isnan(ref), np.isnan(x))
    assert (fast[x == np.inf] == np.inf).all() and (ref[x == np.inf] == np.inf).all()
    for out in (fast, ref):
        neg_inf = out[x == -np.inf]
        assert (neg_inf == 0).all() and np.signbit(neg_inf).all(), f"{kind}(-inf) must be -0, got {neg_inf[:3]}"
        assert (out[x == FMAX] == FMAX).all() and (out[x == -FMAX] == 0).all()
        assert (out[x == 1e30] == np.float32(1e30)).all()
        zeros = (x == 0)
        np.testing.assert_array_equal(np.signbit(out[zeros]), np.signbit(x[zeros]))  # act(-0) = -0
    finite = np.isfinite(x)
    assert_close_scaled(fast[finite], ref[finite], x[finite], 3e-7, f"gelu {kind}")


def test_gelu_empty_and_bad_arguments():
    for fn in (C.gelu, C.gelu_reference):
        name = fn.__name__
        for shape in [(0, 5), (5, 0), (0, 0)]:
            x = np.zeros(shape, np.float32)
            assert fn(x) is x
        x = np.ones((3, 16), np.float32)
        with pytest.raises(ValueError, match=rf"^{name}: argument 'kind' must be 'erf', 'tanh' or 'quick', got 'none'"):
            fn(x, "none")
        with pytest.raises(ValueError, match=r"argument 'x' must have shape \(M, N\) float32 C-contiguous, got \(3, 16\) float16"):
            fn(x.astype(np.float16))
        with pytest.raises(ValueError, match=r"argument 'x' must have shape \(M, N\) float32 C-contiguous, got \(3, 8\) float32 non-contiguous"):
            fn(x[:, ::2])
        with pytest.raises(ValueError, match=r"argument 'x' must have shape \(M, N\) float32 C-contiguous, got \(16,\) float32"):
            fn(np.ones(16, np.float32))
        with pytest.raises(ValueError, match=r"argument 'x' must have shape \(M, N\) float32 C-contiguous, got \(2, 3, 4\) float32"):
            fn(np.ones((2, 3, 4), np.float32))
        with pytest.raises(ValueError, match=r"argument 'x' has numpy dtype float64, which is not supported"):
            fn(np.ones((3, 16)))
        with pytest.raises(ValueError, match=r"argument 'x' is required but got None"):
            fn(None)
        ro = np.ones((3, 16), np.float32)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match=r"argument 'x' is read-only"):
            fn(ro)
        np.testing.assert_array_equal(x, 1.0)  # refused calls leave x alone


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

CUDA_DTYPES = {"float32": 2e-6, "float16": 2e-3, "bfloat16": 1.6e-2}  # tolerance vs the fp64 reference


@pytest.mark.cuda
@pytest.mark.parametrize("dtype_name", list(CUDA_DTYPES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(7, 3072), (1297, 3)], ids=str)
def test_cuda_gelu_matches_reference(cuda_device, dtype_name, kind, shape):
    torch = cuda_torch()
    dt, tol = getattr(torch, dtype_name), CUDA_DTYPES[dtype_name]
    x = torch.from_numpy(randn(np.random.default_rng(8), *shape, scale=4.0)).to(dt)  # inputs rounded to the dtype
    x_gpu = x.cuda()
    assert C.gelu(x_gpu, kind) is x_gpu
    ref = C.gelu_reference(x.float().numpy(), kind)
    np.testing.assert_allclose(x_gpu.float().cpu().numpy(), ref, rtol=tol, atol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_gelu_special_values_and_grid(cuda_device, kind):
    torch = cuda_torch()
    x = np.concatenate([grid(), np.array([np.inf, -np.inf, np.nan, FMAX, -FMAX], np.float32)]).reshape(1, -1)
    x_gpu = torch.from_numpy(x).cuda()
    C.gelu(x_gpu, kind)
    got = x_gpu.cpu().numpy()
    ref = apply(C.gelu_reference, x, kind)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))
    assert got[0, -5] == np.inf and got[0, -4] == 0 and np.signbit(got[0, -4])
    finite = np.isfinite(x)
    assert_close_scaled(got[finite], ref[finite], x[finite], 2e-6, f"CUDA gelu {kind}")


@pytest.mark.cuda
def test_cuda_gelu_argument_checks(cuda_device):
    torch = cuda_torch()
    x = torch.zeros(3, 16, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match=r"argument 'x' must have shape \(M, N\) float32\|float16\|bfloat16"):
        C.gelu(x[:, ::2])
    with pytest.raises(ValueError, match=r"gelu_reference: argument 'x' is on cuda"):
        C.gelu_reference(x)
