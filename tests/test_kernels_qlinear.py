"""qlinear (kernels/qlinear/, csrc/bind_qlinear.cpp): int8 / int4 weights x int8 activations quantised
per block of 128 inputs. The naive reference against an independent float64 formula; the fast CPU
path (every micro-kernel set this CPU has, GEMV and GEMM loop nests) and the numpy twin of the
decoder op set against the reference on odd shapes with NaN-poisoned outputs; argument checks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the sibling helpers, also under --import-mode=importlib
from kernel_testing import CPU_KERNELS, cuda_dtype, cuda_dtype_test, randn  # noqa: E402

C = pytest.importorskip("rsvlm_edge._C")

from rsvlm_edge.backends import decoder_numpy  # noqa: E402
from rsvlm_edge.models.llava.quant import dequantize_w4, quantize_w4, quantize_w8, w4_round, w4_scale  # noqa: E402

# amx changes qlinear's GEMM loop nest (M >= 4: tile products); every cpu_kernels test runs it too.
pytestmark = pytest.mark.cpu_kernel_sets("amx", "avx512vnni", "avx2", "portable")


def quantised(rng, n, k, fmt, groups=None):
    """(w, w_scale (N, G), the integer weights (N, K)) of a seeded weight in format i8 or i4."""
    w = randn(rng, n, k, scale=k**-0.5)
    if fmt == "i8":
        q, s = quantize_w8(w)
        return q, s.reshape(n, 1), q.astype(np.int64)
    if groups is None:
        packed, s = quantize_w4(w)  # the exported format: groups of 128, or the whole row
    else:  # any legal group count: whole multiples of 128 inputs
        g = w.reshape(n, groups, k // groups)
        s = w4_scale(g)  # export's rule: levels -8..7, negative scales where a group's extreme is positive
        q = w4_round(g, s[:, :, None]).astype(np.int16).reshape(n, k) + 8
        packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    ints = np.rint(dequantize_w4(packed, np.ones_like(s))).astype(np.int64)
    return packed, s, ints


def float64_formula(x, ints, w_scale, bias=None):
    """The definition in rsvlm_edge/qlinear.h, written independently in float64."""
    m, k = x.shape
    n, groups = w_scale.shape
    y = np.zeros((m, n))
    for b0 in range(0, k, 128):
        blk = x[:, b0:b0 + 128]
        amax = np.abs(blk).max(1)
        inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
        xq = np.clip(np.rint(blk * inv[:, None]), -127, 127).astype(np.int64)
        dot = xq @ ints[:, b0:b0 + 128].T  # exact
        sx = (amax / np.float32(127)).astype(np.float32)
        y += sx.astype(np.float64)[:, None] * w_scale[:, b0 // (k // groups)].astype(np.float64)[None] * dot
    return y + (0 if bias is None else bias)


def reference(x, w, w_scale, bias=None):
    out = np.full((x.shape[0], w.shape[0]), np.nan, np.float32)
    assert C.qlinear_reference(x, w, w_scale, bias, out=out) is out
    return out


SHAPES = [(1, 2048, 37), (2, 300, 7), (3, 130, 5), (4, 128, 9), (5, 64, 3), (7, 1024, 33), (17, 194, 12), (1, 2, 1)]


@pytest.mark.parametrize("fmt", ["i8", "i4"])
@pytest.mark.parametrize("m, k, n", [(1, 256, 5), (3, 300, 7), (6, 2, 4)], ids=str)
def test_reference_is_the_definition(fmt, m, k, n):
    rng = np.random.default_rng(m * 1000 + k)
    x = randn(rng, m, k)
    w, s, ints = quantised(rng, n, k, fmt)
    bias = randn(rng, n)
    np.testing.assert_allclose(reference(x, w, s, bias), float64_formula(x, ints, s, bias), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", ["i8", "i4"])
@pytest.mark.parametrize("m, k, n", SHAPES, ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_fast_path_matches_reference(cpu_kernels, fmt, m, k, n, with_bias):
    rng = np.random.default_rng(7 + m + k + n)
    x = randn(rng, m, k)
    w, s, _ = quantised(rng, n, k, fmt)
    bias = randn(rng, n) if with_bias else None
    out = np.full((m, n), np.nan, np.float32)  # poisoned: every element must be written
    assert C.qlinear(x, w, s, bias, out=out) is out
    ref = reference(x, w, s, bias)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())
    twin = decoder_numpy.qlinear(x, w, s, bias)
    np.testing.assert_allclose(twin, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("groups", [2, 4, 16])
def test_int4_group_scales(cpu_kernels, groups):
    """Several weight-scale groups per row (group = K / G, a multiple of 128)."""
    rng = np.random.default_rng(groups)
    k = 2048
    x = randn(rng, 3, k)
    w, s, ints = quantised(rng, 11, k, "i4", groups=groups)
    assert s.shape == (11, groups)
    ref = reference(x, w, s)
    np.testing.assert_allclose(ref, float64_formula(x, ints, s), rtol=1e-6, atol=1e-6)
    for m in (1, 3):  # GEMV and GEMM
        np.testing.assert_allclose(C.qlinear(x[:m].copy(), w, s), ref[:m], rtol=2e-5, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("fmt", ["i8", "i4"])
def test_gemv_and_gemm_rows_agree(cpu_kernels, fmt):
    """A row's result does not depend on the loop nest (M < 4 GEMV, M >= 4 GEMM) beyond fp32 rounding."""
    rng = np.random.default_rng(3)
    x = randn(rng, 9, 1000)
    w, s, _ = quantised(rng, 21, 1000, fmt)
    gemm = C.qlinear(x, w, s)
    for i in range(3):
        np.testing.assert_allclose(C.qlinear(x[i:i + 1].copy(), w, s)[0], gemm[i], rtol=1e-5, atol=1e-5)


def test_micro_kernel_sets_agree():
    rng = np.random.default_rng(5)
    x = randn(rng, 5, 777 * 2)
    results = {}
    for fmt in ("i8", "i4"):
        w, s, _ = quantised(rng, 13, 777 * 2, fmt)
        try:
            for name in CPU_KERNELS:
                C.set_cpu_kernels(name)
                results[(fmt, name)] = (C.qlinear(x[:2].copy(), w, s), C.qlinear(x, w, s))
        finally:
            C.set_cpu_kernels("auto")
        first = results[(fmt, CPU_KERNELS[0])]
        for name in CPU_KERNELS[1:]:
            for a, b in zip(first, results[(fmt, name)]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif("amx" not in CPU_KERNELS, reason="this CPU has no AMX-INT8 tiles (or Linux did not grant them)")
@pytest.mark.parametrize("fmt", ["i8", "i4"])
@pytest.mark.parametrize("m, k, n, groups", [
    (4, 2, 1, 1),         # one quad, one output
    (5, 62, 3, 1),        # K % 4 != 0 (i8) and < 64: one short block
    (16, 128, 32, 1),     # exactly one row block, one pair of panels
    (17, 194, 33, 1),     # a row block of 1, a panel of 1, a short last block
    (31, 1000, 47, 1),    # odd everything
    (40, 2048, 64, 16),   # i4 groups of 128; two steps of row blocks (whole-pair staging)
    (70, 20480, 40, 1),   # several spans of row blocks (the B tiles of a span are capped)
], ids=str)
def test_amx_gemm_is_the_vnni_gemm_bit_for_bit(fmt, m, k, n, groups):
    """The AMX tile GEMM adds each block's exact int32 dot with the avx512vnni tile's float operations in
    its order, so the two agree bit for bit (and with the reference to fp32 rounding)."""
    if fmt == "i4" and k % 2:
        pytest.skip("i4 needs an even K")
    rng = np.random.default_rng(m + k + n)
    x = randn(rng, m, k)
    x[1, : min(k, 128)] = 0  # an all-zero block
    w, s, _ = quantised(rng, n, k, fmt, groups=groups if fmt == "i4" and groups > 1 else None)
    bias = randn(rng, n)
    try:
        C.set_cpu_kernels("avx512vnni")
        vnni = C.qlinear(x, w, s, bias)
        C.set_cpu_kernels("amx")
        out = np.full((m, n), np.nan, np.float32)  # poisoned: every element must be written
        assert C.qlinear(x, w, s, bias, out=out) is out
    finally:
        C.set_cpu_kernels("auto")
    np.testing.assert_array_equal(out, vnni)
    ref = reference(x, w, s, bias)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())


def test_zero_and_nonfinite_activation_blocks(cpu_kernels):
    """An all-zero row gives the bias; a NaN or inf anywhere in a row gives NaN in that row only."""
    rng = np.random.default_rng(11)
    for fmt in ("i8", "i4"):
        w, s, _ = quantised(rng, 6, 256, fmt)
        bias = randn(rng, 6)
        x = randn(rng, 5, 256)
        x[0] = 0
        x[1, 200] = np.nan
        x[2, 3] = np.inf
        x[3, 130] = -np.inf
        for m in (1, 5):  # GEMV and GEMM
            y = C.qlinear(x[:m].copy(), w, s, bias)
            np.testing.assert_array_equal(y[0], bias)
            if m == 5:
                assert np.isnan(y[1:4]).all() and np.isfinite(y[4]).all()
            ref = reference(x[:m].copy(), w, s, bias)
            np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))


def test_empty_inputs():
    w, s, _ = quantised(np.random.default_rng(0), 4, 128, "i8")
    assert C.qlinear(np.zeros((0, 128), np.float32), w, s).shape == (0, 4)
    assert C.qlinear(np.zeros((2, 128), np.float32), w[:0], s[:0]).shape == (2, 0)


@pytest.mark.campaign("native")
def test_bad_arguments_are_value_errors():
    x = np.ones((2, 256), np.float32)
    w8, s8, _ = quantised(np.random.default_rng(0), 5, 256, "i8")
    w4, s4, _ = quantised(np.random.default_rng(0), 5, 256, "i4")
    cases = [
        ((x, w8, s8[:, 0]), r"qlinear: argument 'w_scale' must have shape \(N=5, G\) float32"),
        ((x, w8.astype(np.int32), s8), r"qlinear: argument 'w' must have shape \(N, K=256\) int8"),
        ((x, w4[:, :100], s4), r"qlinear: argument 'w' must have shape \(N, K/2=128\) uint8"),
        ((x[:, :255].copy(), w4, s4), r"int4 weights \(uint8 w\) pack two inputs per byte and need an even K"),
        ((x, w8, np.ones((5, 3), np.float32)), r"must have G groups of K / G inputs.*got G=3 for K=256"),
        ((np.ones((2, 200), np.float32), np.ones((5, 200), np.int8), np.ones((5, 2), np.float32)),
         r"got G=2 for K=200"),
        ((x.astype(np.float16), w8, s8), r"qlinear: argument 'x' must have shape \(M, K\) float32"),
        ((x.astype(np.float64), w8, s8), r"argument 'x' has numpy dtype float64, which is not supported"),
        ((x, w8, s8, np.ones(4, np.float32)), r"qlinear: argument 'bias' must have shape \(N=5,\) float32"),
        ((x, w8, s8.astype(np.float16)), r"argument 'w_scale' must have shape \(N=5, G\) float32"),
        ((x, w8, s8, None, x), r"argument 'out' must have shape \(M=2, N=5\) float32"),
        ((x, None, s8), r"argument 'w' is required but got None"),
    ]
    for args, pattern in cases:
        kw = {}
        if len(args) == 5:
            args, kw = args[:4], {"out": args[4]}
        for fn in (C.qlinear, C.qlinear_reference):
            name = "qlinear_reference" if fn is C.qlinear_reference else "qlinear"
            with pytest.raises(ValueError, match=pattern.replace("qlinear:", name + ":")):
                fn(*args, **kw)
    read_only = np.zeros((2, 5), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        C.qlinear(x, w8, s8, out=read_only)


@pytest.mark.campaign("native")
def test_out_must_not_alias_x():
    x = np.ones((3, 256), np.float32)
    w = np.ones((256, 256), np.int8)
    with pytest.raises(ValueError, match="must not be x"):
        C.qlinear(x, w, np.ones((256, 1), np.float32), out=x)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


@cuda_dtype_test
# Decode batches up to 8 and beyond (several blocks of rows, the last partial); K up to 12288 (shared memory
# for the quantised inputs of a block's rows).
@pytest.mark.parametrize("m, k, n", [(1, 2048, 5632), (3, 300, 33), (5, 130, 7), (8, 2048, 40), (13, 512, 9),
                                     (8, 6144, 24), (5, 12288, 9)], ids=str)
@pytest.mark.parametrize("fmt", ["i8", "i4"])
def test_cuda_qlinear_matches_reference(cuda_device, dtype_name, m, k, n, fmt):
    torch, dt, tol = cuda_dtype(dtype_name)
    rng = np.random.default_rng(9)
    x = torch.from_numpy(randn(rng, m, k)).to(dt).float().numpy()  # the GPU dtype's values
    w, s, _ = quantised(rng, n, k, fmt)
    bias = torch.from_numpy(randn(rng, n)).to(dt).float().numpy()
    out = torch.full((m, n), float("nan"), dtype=dt, device="cuda")
    C.qlinear(torch.from_numpy(x).to("cuda", dt), torch.from_numpy(w).cuda(), torch.from_numpy(s).cuda(),
              torch.from_numpy(bias).to("cuda", dt), out=out)
    ref = reference(x, w, s, bias)
    np.testing.assert_allclose(out.float().cpu().numpy(), ref, rtol=tol, atol=tol * 2 * np.abs(ref).max())


def test_activation_quantisation_is_the_definition_bit_for_bit(cpu_kernels):
    """With identity int8 weights y = sx * xq exactly: every micro-kernel set's (vectorised)
    quantiser gives the reference's values bit for bit, NaN/inf rows and a short last block included."""
    rng = np.random.default_rng(21)
    k = 1000  # 7 full blocks and one of 104
    x = (rng.standard_normal((9, k)) * rng.uniform(0.01, 100, (9, 1))).astype(np.float32)
    x[2, 5], x[3, 700], x[4, 999] = np.nan, np.inf, -np.inf
    x[5] = 0
    x[6, ::2] = 0.5  # ties: round half to even
    x[6, 1::2] = 127
    eye, ones = np.eye(k, dtype=np.int8), np.ones((k, 1), np.float32)
    for m in (1, 9):  # GEMV and GEMM
        np.testing.assert_array_equal(C.qlinear(x[:m].copy(), eye, ones), C.qlinear_reference(x[:m].copy(), eye, ones))


def test_w4_export_rule_uses_all_sixteen_levels_and_signed_scales():
    """quant.py's rule: each group's largest-magnitude entry m is level -8 (scale m / -8, negative where m
    is positive), so nibble 0 appears and half the scales are negative; the kernels read q = nibble - 8
    times the scale whatever its sign (checked against the float64 formula in the tests above)."""
    w = randn(np.random.default_rng(5), 64, 256)
    packed, s = quantize_w4(w)
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(64, 256)
    assert nibbles.min() == 0 and nibbles.max() <= 15 and (s < 0).any() and (s > 0).any()
    g = w.reshape(64, 2, 128)
    extreme = np.take_along_axis(g, np.abs(g).argmax(2)[..., None], 2)[..., 0]
    np.testing.assert_array_equal(s, extreme / np.float32(-8))
    deq = dequantize_w4(packed, s).reshape(64, 2, 128)
    np.testing.assert_array_equal(np.take_along_axis(deq, np.abs(g).argmax(2)[..., None], 2)[..., 0], extreme)
    err, step = np.abs(deq - g), np.abs(s)[..., None]
    inside = np.abs(g) <= 7.5 * step  # within the levels: round to nearest; beyond +7 (opposite sign): clipped
    assert (err[inside] <= (step / 2 + 1e-6).repeat(128, -1)[inside]).all() and (err <= step + 1e-6).all()
    assert (w4_scale(np.zeros((3, 128))) == 1).all() and (w4_round(np.array([100.0, -100.0]), 1.0) == [7, -8]).all()
