"""linear (kernels/linear/, csrc/bind_linear.cpp): dense fp32 / fp16 and weight-only int8 weights; GEMV
and GEMM paths; avx2 and portable CPU micro-kernels; quantize_weight_int8.

Every fast path is compared with the naive reference `_C.linear_reference` (plain loops, fp64
accumulation), and the reference with numpy's float64 matmul. Outputs are poisoned with NaN first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the sibling helpers, also under --import-mode=importlib
from kernel_testing import CPU_KERNELS, cuda_dtype, cuda_dtype_test, randn  # noqa: E402

C = pytest.importorskip("rsvlm_edge._C")


def reference(x, w, bias=None, **kw):
    """The naive reference into a NaN-poisoned output."""
    out = np.full((x.shape[0], w.shape[0]), np.nan, np.float32)
    assert C.linear_reference(x, w, bias, out=out, **kw) is out
    return out


@pytest.mark.parametrize("wdtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("m, k, n", [(1, 4096, 11), (7, 77, 129), (97, 320, 33)], ids=str)
def test_linear_reference_matches_numpy_float64(wdtype, m, k, n):
    rng = np.random.default_rng(13)
    x = randn(rng, m, k)
    w = randn(rng, n, k, scale=k**-0.5)
    bias = randn(rng, n)
    kw = {}
    if wdtype == "int8":
        w, kw["w_scale"] = C.quantize_weight_int8(w)
        deq = w.astype(np.float64) * kw["w_scale"][:, None].astype(np.float64)
    else:
        w = w.astype(wdtype)
        deq = w.astype(np.float64)
    expect = x.astype(np.float64) @ deq.T + bias
    np.testing.assert_allclose(reference(x, w, bias, **kw), expect, rtol=1e-6, atol=1e-6)


# (M, K, N): M < 4 runs the GEMV path, M >= 4 the GEMM path (K > 1024: several K blocks, N > 32:
# several panels; ragged edges everywhere).
LINEAR_SHAPES = [(1, 4096, 11), (3, 50, 17), (7, 77, 129), (97, 320, 33), (1, 9, 1), (130, 2100, 67), (17, 67, 1000)]


@pytest.mark.parametrize("m, k, n", LINEAR_SHAPES, ids=lambda s: str(s))
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_linear_dense_matches_reference(cpu_kernels, m, k, n, with_bias):
    rng = np.random.default_rng(5)
    x = randn(rng, m, k)
    w = randn(rng, n, k, scale=k**-0.5)
    bias = randn(rng, n) if with_bias else None
    out = np.full((m, n), np.nan, np.float32)
    C.linear(x, w, bias, out=out)
    np.testing.assert_allclose(out, reference(x, w, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [1, 3, 5, 8, 17, 64, 130])
@pytest.mark.parametrize("k, n", [(67, 200), (1000, 67), (200, 1000), (2100, 67)], ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_linear_fp16_weights_match_reference(cpu_kernels, m, k, n, with_bias):
    rng = np.random.default_rng(10)
    x = randn(rng, m, k)
    w16 = randn(rng, n, k, scale=k**-0.5).astype(np.float16)
    bias = randn(rng, n) if with_bias else None
    out = np.full((m, n), np.nan, np.float32)
    assert C.linear(x, w16, bias, out=out) is out
    np.testing.assert_allclose(out, reference(x, w16, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wdtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("m, k, n", [(17, 2100, 67), (130, 67, 200), (4, 200, 1000)], ids=str)
def test_linear_gemm_path_equals_gemv_path(cpu_kernels, wdtype, m, k, n):
    """M >= 4 (GEMM) against the same rows one at a time (GEMV): equal up to summation order."""
    rng = np.random.default_rng(11)
    x = randn(rng, m, k)
    w = randn(rng, n, k, scale=k**-0.5)
    kw = {}
    if wdtype == "int8":
        w, kw["w_scale"] = C.quantize_weight_int8(w)
    else:
        w = w.astype(wdtype)
    bias = randn(rng, n)
    gemm = C.linear(x, w, bias, **kw)
    gemv = np.concatenate([C.linear(x[i : i + 1], w, bias, **kw) for i in range(m)])
    pairs = np.concatenate([C.linear(x[i : i + 2], w, bias, **kw) for i in range(0, m - 1, 2)])
    # Outputs are O(1); the two paths sum K products in different orders (K blocks of 1024 in the GEMM).
    np.testing.assert_allclose(gemm, gemv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gemm[: len(pairs)], pairs, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(len(CPU_KERNELS) < 2, reason="only the portable CPU kernels run here")
@pytest.mark.parametrize("wdtype", ["float32", "float16", "int8"])
def test_linear_avx2_and_portable_kernels_agree(wdtype):
    rng = np.random.default_rng(12)
    x = randn(rng, 37, 1100)
    w = randn(rng, 150, 1100, scale=1100**-0.5)
    kw = {}
    if wdtype == "int8":
        w, kw["w_scale"] = C.quantize_weight_int8(w)
    else:
        w = w.astype(wdtype)
    got = {}
    try:
        for name in CPU_KERNELS:
            C.set_cpu_kernels(name)
            got[name] = (C.linear(x, w, **kw), C.linear(x[:2], w, **kw))
    finally:
        C.set_cpu_kernels("auto")
    for a, b in zip(got["avx2"], got["portable"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # O(1) outputs, different summation orders


@pytest.mark.skipif("amx" not in CPU_KERNELS, reason="this CPU has no AMX-BF16 tiles (or Linux did not grant them)")
@pytest.mark.parametrize("m, k, n", [(32, 1, 1), (32, 31, 17), (33, 33, 47), (47, 100, 33), (100, 4097, 5),
                                     (130, 2048, 64)], ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_linear_fp16_bf16x3_on_amx_keeps_its_error_bound(m, k, n, with_bias):
    """bf16x3 (fp16 weights, amx, M >= 32): three bf16 products per weight on AMX tiles; each product within
    2^-15 of x * w relatively, so |y - y_ref| <= (2^-14 + K 2^-24) sum_k |x w| (fp32 accumulation beside it),
    every element written; and it does differ from the exact-product path (the tiles did run)."""
    rng = np.random.default_rng(m + k + n)
    x = randn(rng, m, k) * rng.uniform(0.01, 100, (m, 1)).astype(np.float32)
    w = randn(rng, n, k, scale=k**-0.5).astype(np.float16)
    bias = randn(rng, n) if with_bias else None
    ref = reference(x, w, bias)
    try:
        C.set_cpu_kernels("amx")
        out = np.full((m, n), np.nan, np.float32)
        assert C.linear(x, w, bias, out=out, bf16x3=True) is out
        exact = C.linear(x, w, bias)
    finally:
        C.set_cpu_kernels("auto")
    bound = (2.0**-14 + k * 2.0**-24) * (np.abs(x).astype(np.float64) @ np.abs(w.astype(np.float64)).T) + 1e-6
    assert np.all(np.abs(out.astype(np.float64) - ref) <= bound)
    if k > 1:
        assert not np.array_equal(out, exact)


@pytest.mark.cpu_kernel_sets("amx", "avx512vnni", "avx2", "portable")
@pytest.mark.parametrize("m", [5, 31, 64])
def test_linear_bf16x3_changes_nothing_where_it_does_not_apply(cpu_kernels, m):
    """Without AMX (every kernel set but amx), below 32 rows, or for fp32 / int8 weights, bf16x3=True is the
    exact path bit for bit."""
    rng = np.random.default_rng(m)
    x = randn(rng, m, 300)
    w32 = randn(rng, 40, 300, scale=0.05)
    w8, s8 = C.quantize_weight_int8(w32)
    for w, kw in ((w32.astype(np.float16), {}), (w32, {}), (w8, {"w_scale": s8})):
        applies = cpu_kernels == "amx" and m >= 32 and w.dtype == np.float16
        if not applies:
            np.testing.assert_array_equal(C.linear(x, w, bf16x3=True, **kw), C.linear(x, w, **kw))


@pytest.mark.skipif("amx" not in CPU_KERNELS, reason="this CPU has no AMX-BF16 tiles (or Linux did not grant them)")
def test_linear_bf16x3_below_32_rows_and_nonfinite_rows():
    """amx: below 32 rows bf16x3 changes nothing; a NaN or inf in a row of x makes that row NaN only (an inf
    splits into inf + NaN parts: NaN where the exact path may give inf)."""
    rng = np.random.default_rng(9)
    x = randn(rng, 40, 96)
    w = randn(rng, 24, 96, scale=0.1).astype(np.float16)
    x[3, 7], x[5, 90] = np.nan, np.inf
    try:
        C.set_cpu_kernels("amx")
        np.testing.assert_array_equal(C.linear(x[:31].copy(), w, bf16x3=True), C.linear(x[:31].copy(), w))
        y = C.linear(x, w, bf16x3=True)
    finally:
        C.set_cpu_kernels("auto")
    bad = np.zeros(40, bool)
    bad[[3, 5]] = True
    assert np.isnan(y[bad]).all() and np.isfinite(y[~bad]).all()


def test_linear_fp16_conversion_is_exact_for_every_half(cpu_kernels):
    """Every binary16 value (inf and NaN included) times 1.0 comes out as numpy's float32 of it:
    K = 1 goes through the scalar conversion, an identity x (K = 64) through the vector one."""
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    w = every.reshape(-1, 1)
    expect = every.astype(np.float32)
    np.testing.assert_array_equal(C.linear(np.ones((1, 1), np.float32), w)[0], expect)  # GEMV
    np.testing.assert_array_equal(C.linear(np.ones((5, 1), np.float32), w)[3], expect)  # GEMM
    finite = every[np.isfinite(every)].reshape(-1, 64)  # (992, 64)
    eye = np.eye(64, dtype=np.float32)
    np.testing.assert_array_equal(C.linear(eye, finite), finite.astype(np.float32).T)  # GEMM
    np.testing.assert_array_equal(C.linear(eye[5:6], finite)[0], finite[:, 5].astype(np.float32))  # GEMV


@pytest.mark.parametrize("m, k, n", LINEAR_SHAPES, ids=lambda s: str(s))
def test_linear_int8_matches_dequantised_reference(cpu_kernels, m, k, n):
    rng = np.random.default_rng(6)
    x = randn(rng, m, k)
    w = randn(rng, n, k, scale=k**-0.5)
    w[0] = 0.0  # an all-zero output channel gets scale 0
    w8, scale = C.quantize_weight_int8(w)
    assert w8.dtype == np.int8 and scale.dtype == np.float32 and scale[0] == 0
    np.testing.assert_allclose(scale, np.abs(w).max(1) / 127, rtol=1e-6)
    assert np.all(np.abs(w8.astype(np.float32) * scale[:, None] - w) <= scale[:, None] * 0.5 * (1 + 1e-5))
    bias = randn(rng, n)
    out = np.full((m, n), np.nan, np.float32)
    C.linear(x, w8, bias, w_scale=scale, out=out)
    np.testing.assert_allclose(out, reference(x, w8, bias, w_scale=scale), rtol=1e-5, atol=1e-5)
    # Against the unquantised weights: error bounded by half a step per weight (|x| summed).
    bound = 0.5 * np.abs(x).astype(np.float64) @ np.broadcast_to(scale, (k, n)) + 1e-5
    assert np.all(np.abs(out - (x.astype(np.float64) @ w.T + bias)) <= bound)


def test_linear_allocated_output():
    rng = np.random.default_rng(7)
    x = randn(rng, 3, 16)
    w = randn(rng, 5, 16)
    y = C.linear(x, w)
    assert y.shape == (3, 5) and y.dtype == np.float32
    np.testing.assert_allclose(y, C.linear_reference(x, w), rtol=1e-5, atol=1e-5)


def test_linear_rejects_bad_arguments():
    x = np.zeros((3, 16), np.float32)
    with pytest.raises(ValueError, match=r"linear: argument 'w' must have shape \(N, K=16\) float32\|float16\|int8 C-contiguous, got \(5, 15\)"):
        C.linear(x, np.zeros((5, 15), np.float32))
    with pytest.raises(ValueError, match=r"argument 'w' is int8 and needs w_scale"):
        C.linear(x, np.zeros((5, 16), np.int8))
    with pytest.raises(ValueError, match=r"argument 'w_scale' must have shape \(N=5,\) float32"):
        C.linear(x, np.zeros((5, 16), np.int8), w_scale=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"argument 'w_scale' is only used with int8 w"):
        C.linear(x, np.zeros((5, 16), np.float32), w_scale=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"argument 'bias' must have shape \(N=5,\) float32"):
        C.linear(x, np.zeros((5, 16), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"argument 'w' must have shape \(N, K=16\) float32\|float16\|int8 C-contiguous, got \(5, 16\) int32"):
        C.linear(x, np.zeros((5, 16), np.int32))
    with pytest.raises(ValueError, match=r"argument 'w' must have shape \(N, K=16\) float32\|float16\|int8 C-contiguous, got \(5, 16\) float16 non-contiguous"):
        C.linear(x, np.zeros((5, 32), np.float16)[:, ::2])
    with pytest.raises(ValueError, match=r"argument 'w_scale' is only used with int8 w; w is float16"):
        C.linear(x, np.zeros((5, 16), np.float16), w_scale=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"set_cpu_kernels: argument 'name' must be 'auto', 'amx', 'avx512vnni', 'avx2' or 'portable', got 'sse'"):
        C.set_cpu_kernels("sse")
    with pytest.raises(ValueError, match=r"argument 'x' must have shape \(M, K\) float32 C-contiguous, got \(3, 16\) float16"):
        C.linear(x.astype(np.float16), np.zeros((5, 16), np.float32))
    with pytest.raises(ValueError, match=r"argument 'out' must have shape \(M=3, N=5\) float32"):
        C.linear(x, np.zeros((5, 16), np.float32), out=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"argument 'out' must not be x"):
        C.linear(x, np.zeros((16, 16), np.float32), out=x)
    with pytest.raises(ValueError, match=r"quantize_weight_int8: argument 'w' must have shape \(N, K\) float32"):
        C.quantize_weight_int8(np.zeros(5, np.float32))


@pytest.mark.parametrize("fn", ["linear", "linear_reference"])
def test_linear_empty_inputs(fn):
    f = getattr(C, fn)
    assert f(np.zeros((0, 16), np.float32), np.ones((5, 16), np.float32)).shape == (0, 5)
    assert f(np.ones((3, 16), np.float32), np.ones((0, 16), np.float32)).shape == (3, 0)
    with pytest.raises(ValueError, match=r"argument 'x' must have K >= 1"):
        f(np.ones((3, 0), np.float32), np.ones((5, 0), np.float32))


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


@cuda_dtype_test
@pytest.mark.parametrize("m, k, n", [(1, 4096, 11008), (7, 77, 129), (8, 2048, 300), (97, 320, 33)], ids=str)
@pytest.mark.parametrize("int8", [False, True], ids=["dense", "int8"])
def test_cuda_linear_matches_reference(cuda_device, dtype_name, m, k, n, int8):
    torch, dt, tol = cuda_dtype(dtype_name)
    rng = np.random.default_rng(9)
    rounded = lambda a: torch.from_numpy(a).to(dt).float().numpy()  # noqa: E731  (the GPU dtype's values)
    to_gpu = lambda a: torch.from_numpy(a).to("cuda", dt)  # noqa: E731
    x = rounded(randn(rng, m, k))
    w = rounded(randn(rng, n, k, scale=k**-0.5))
    bias = rounded(randn(rng, n))
    out = torch.full((m, n), float("nan"), dtype=dt, device="cuda")
    if int8:
        w8, scale = C.quantize_weight_int8(w)
        C.linear(to_gpu(x), torch.from_numpy(w8).cuda(), to_gpu(bias), w_scale=torch.from_numpy(scale).cuda(), out=out)
        ref = reference(x, w8, bias, w_scale=scale)
    else:
        C.linear(to_gpu(x), to_gpu(w), to_gpu(bias), out=out)
        ref = reference(x, w, bias)
    np.testing.assert_allclose(out.float().cpu().numpy(), ref, rtol=tol, atol=tol * 2)
