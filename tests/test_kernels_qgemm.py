"""qgemm (kernels/qgemm/, csrc/bind_qgemm.cpp): the W8A8 encoder GEMM, activations quantised per row,
int8 weights packed once by qgemm_pack. The naive reference against an independent float64 formula; the
fast CPU path (every micro-kernel set this CPU has, amx included) against the reference on odd shapes with NaN-poisoned
outputs; the packed layout; non-finite, zero and extreme inputs; agreement with qlinear where the two
definitions coincide (K <= 128); argument checks."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the sibling helpers, also under --import-mode=importlib
from kernel_testing import CPU_KERNELS, randn  # noqa: E402

C = pytest.importorskip("rsvlm_edge._C")

# qgemm is the op with an AMX body: its `cpu_kernels` tests run every set, amx included.
pytestmark = pytest.mark.cpu_kernel_sets("amx", "avx512vnni", "avx2", "portable")

from rsvlm_edge.models.llava.quant import quantize_w8  # noqa: E402

MAX_K = 133144  # kQGemmMaxK: the largest K with K * 127 * 127 < 2^31


def weights(rng, n, k):
    """(w (N, K) int8, w_scale (N,) float32) of a seeded weight, in quantize_w8's format."""
    return quantize_w8(randn(rng, n, k, scale=k**-0.5))


def float64_formula(x, w, w_scale, bias=None):
    """The definition in rsvlm_edge/qgemm.h, written independently in float64 (one block per row)."""
    amax = np.abs(x).max(1) if x.shape[1] else np.zeros(len(x), np.float32)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    xq = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int64)
    sx = (amax / np.float32(127)).astype(np.float32).astype(np.float64)
    y = sx[:, None] * w_scale.astype(np.float64)[None] * (xq @ w.astype(np.int64).T)
    return y + (0 if bias is None else bias)


def reference(x, w, w_scale, bias=None):
    out = np.full((x.shape[0], w.shape[0]), np.nan, np.float32)
    assert C.qgemm_reference(x, w, w_scale, bias, out=out) is out
    return out


def fast(x, packed, n, bias=None):
    out = np.full((x.shape[0], n), np.nan, np.float32)  # poisoned: every element must be written
    assert C.qgemm(x, packed, bias, out=out) is out
    return out


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (3, 300, 7), (6, 1030, 20), (2, 5, 33)], ids=str)
def test_reference_is_the_definition(m, k, n):
    rng = np.random.default_rng(m * 1000 + k)
    x = randn(rng, m, k)
    w, s = weights(rng, n, k)
    bias = randn(rng, n)
    np.testing.assert_allclose(reference(x, w, s, bias), float64_formula(x, w, s, bias), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 4, 5, 127, 771])
def test_fast_path_matches_reference(cpu_kernels, k):
    """Every M x N of odd sizes (partial row blocks and panels, K padded to 4), with and without bias."""
    rng = np.random.default_rng(k)
    for m in (0, 1, 3, 7, 50, 129):
        x = randn(rng, m, k, scale=3.0)
        for n in (1, 15, 17, 48, 100):
            w, s = weights(rng, n, k)
            bias = randn(rng, n) if (m + n) % 2 else None
            packed = C.qgemm_pack(w, s)
            got, ref = fast(x, packed, n, bias), reference(x, w, s, bias)
            scale = np.abs(ref).max() if ref.size else 1.0
            np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6 * scale, err_msg=f"M={m} N={n} K={k}")


def test_clip_shapes_match_reference(cpu_kernels):
    """A ViT-B tower's widths (several weight groups, several work items per thread)."""
    rng = np.random.default_rng(3)
    for m, k, n in ((50, 768, 2304), (77, 3072, 768)):
        x = randn(rng, m, k)
        w, s = weights(rng, n, k)
        bias = randn(rng, n)
        ref = reference(x, w, s, bias)
        np.testing.assert_allclose(fast(x, C.qgemm_pack(w, s), n, bias), ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())


def test_packed_layout():
    """The documented layout (rsvlm_edge/qgemm.h), rebuilt in numpy: header, weight panels, sums, scales."""
    rng = np.random.default_rng(1)
    n, k = 21, 10
    w, s = weights(rng, n, k)
    packed = C.qgemm_pack(w, s)
    k4, panels = 12, 2
    lanes = panels * 16
    assert packed.dtype == np.uint8 and packed.ndim == 1 and packed.ctypes.data % 64 == 0
    assert packed.size == 64 + lanes * k4 + 8 * lanes
    header = packed[:32].view(np.int32)
    assert bytes(packed[:4]) == b"RQGM" and list(header[1:6]) == [1, n, k, k4, panels]
    assert packed[:32].view(np.int64)[3] == packed.size and not packed[36:64].any()
    wp = np.zeros((lanes, k4), np.int8)
    wp[:n, :k] = w
    expect = wp.reshape(panels, 16, k4 // 4, 4).transpose(0, 2, 1, 3).reshape(-1)
    np.testing.assert_array_equal(packed[64:64 + lanes * k4].view(np.int8), expect)
    sums = packed[64 + lanes * k4:64 + lanes * k4 + 4 * lanes].view(np.int32)
    np.testing.assert_array_equal(sums[:n], w.astype(np.int32).sum(1))
    assert not sums[n:].any()
    scales = packed[64 + lanes * (k4 + 4):].view(np.float32)
    np.testing.assert_array_equal(scales[:n], s)
    assert not scales[n:].any()


def test_nonfinite_and_zero_rows(cpu_kernels):
    """An all-zero row gives the bias exactly (0 without bias); a NaN or inf anywhere in a row gives NaN
    in that row only."""
    rng = np.random.default_rng(11)
    k, n = 300, 37
    w, s = weights(rng, n, k)
    packed = C.qgemm_pack(w, s)
    bias = randn(rng, n)
    x = randn(rng, 12, k)
    x[0] = 0
    x[1, 200] = np.nan
    x[2, 3] = np.inf
    x[3, 299] = -np.inf
    x[9] = 0
    x[10, :] = np.inf
    y = fast(x, packed, n, bias)
    np.testing.assert_array_equal(y[0], bias)
    np.testing.assert_array_equal(y[9], bias)
    assert np.isnan(y[[1, 2, 3, 10]]).all()
    assert np.isfinite(y[[4, 5, 6, 7, 8, 11]]).all()
    ref = reference(x, w, s, bias)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_allclose(y[4:9], ref[4:9], rtol=2e-6, atol=2e-6 * np.abs(ref[4:9]).max())
    y0 = fast(x, packed, n)
    np.testing.assert_array_equal(y0[[0, 9]], 0)


@pytest.mark.parametrize("k", [4099, MAX_K])
def test_extreme_weights_reach_the_int32_bound_exactly(cpu_kernels, k):
    """w = +-127 everywhere and |xq| = 127: |dot| = K * 127 * 127, at K = kQGemmMaxK just below 2^31 (the
    unsigned activations' sums wrap in int32 on the way; the result is exact)."""
    n = 19
    w = np.full((n, k), 127, np.int8)
    w[1::2] = -127
    w[5, ::2] = -127  # mixed signs in one channel: dot 127 * 127 * (number of + minus number of -)
    s = np.full(n, 2.0**-20, np.float32)
    x = np.ones((3, k), np.float32)
    x[1] = -1
    x[2, 1::2] = -0.5  # rounds to -64 (half to even: -63.5)
    packed = C.qgemm_pack(w, s)
    y, ref = fast(x, packed, n), reference(x, w, s)
    dot = x.copy()
    dot[dot == 1], dot[dot == -1], dot[dot == -0.5] = 127, -127, -64
    exact = (np.float64(1 / np.float32(127)) * 2.0**-20 * (dot.astype(np.int64) @ w.astype(np.int64).T))
    assert abs(int(dot[0].astype(np.int64) @ w[0].astype(np.int64))) == k * 127 * 127
    np.testing.assert_allclose(ref, exact, rtol=1e-7)
    np.testing.assert_allclose(y, ref, rtol=1e-6)


def test_agrees_with_qlinear_when_one_block(cpu_kernels):
    """K <= 128: qlinear's one activation block per row is qgemm's row block: the same numbers up to
    fp32 rounding of the outer product."""
    rng = np.random.default_rng(5)
    for k in (1, 7, 64, 100, 128):
        x = randn(rng, 9, k)
        w, s = weights(rng, 33, k)
        bias = randn(rng, 33)
        q = C.qlinear(x, w, s.reshape(-1, 1), bias)
        np.testing.assert_allclose(fast(x, C.qgemm_pack(w, s), 33, bias), q, rtol=1e-6, atol=1e-6 * np.abs(q).max())


def test_activation_quantisation_is_the_definition_bit_for_bit(cpu_kernels):
    """With identity weights y = sx * xq exactly: every micro-kernel set's (vectorised) quantiser gives the
    reference's values bit for bit: NaN/inf rows, ties (round half to even), a subnormal row max (127 / amax
    overflows to inf: 0 * inf quantises to -127, as the definition's std::max(-127, NaN) does), a short tail."""
    rng = np.random.default_rng(21)
    k = 1001
    x = (rng.standard_normal((10, k)) * rng.uniform(0.01, 100, (10, 1))).astype(np.float32)
    x[2, 5], x[3, 700], x[4, 1000] = np.nan, np.inf, -np.inf
    x[5] = 0
    x[6, ::2] = 0.5  # ties
    x[6, 1::2] = 127
    x[7, 1::2] = 2.5
    x[7, ::2] = -127
    x[8] = 0
    x[8, 3], x[8, 999] = 1e-40, -1e-40  # subnormal amax
    eye, ones = np.eye(k, dtype=np.int8), np.ones(k, np.float32)
    packed = C.qgemm_pack(eye, ones)
    for m in (1, 10):
        np.testing.assert_array_equal(fast(x[:m].copy(), packed, k), reference(x[:m].copy(), eye, ones))


@pytest.mark.skipif(not {"amx", "avx512vnni"} <= set(CPU_KERNELS), reason="needs a CPU with AMX-INT8 tiles")
def test_amx_equals_avx512vnni_bit_for_bit():
    """Both bodies quantise identically, sum exact int32 dots and run the same float epilogue: equal outputs,
    bit for bit, on tails of every kind (rows past 32, odd panels, K past a 64-input chunk, non-finite rows)."""
    rng = np.random.default_rng(11)
    try:
        for m, k, n in ((1, 1, 1), (33, 64, 32), (31, 68, 48), (70, 1030, 50), (5, 4099, 17)):
            x = randn(rng, m, k, scale=2.0)
            x[m // 2, k // 2] = np.nan if m > 2 else x[m // 2, k // 2]
            w, s = weights(rng, n, k)
            packed, bias = C.qgemm_pack(w, s), randn(rng, n)
            out = {}
            for name in ("amx", "avx512vnni"):
                C.set_cpu_kernels(name)
                out[name] = fast(x, packed, n, bias)
            np.testing.assert_array_equal(out["amx"], out["avx512vnni"], err_msg=f"M={m} K={k} N={n}")
    finally:
        C.set_cpu_kernels("auto")


def test_empty_rows_and_out():
    w, s = weights(np.random.default_rng(0), 4, 9)
    packed = C.qgemm_pack(w, s)
    assert C.qgemm(np.zeros((0, 9), np.float32), packed).shape == (0, 4)
    assert C.qgemm_reference(np.zeros((0, 9), np.float32), w, s).shape == (0, 4)
    x = randn(np.random.default_rng(1), 3, 9)
    np.testing.assert_array_equal(C.qgemm(x, packed), fast(x, packed, 4))


def test_concurrent_calls_from_python_threads():
    """Each calling thread keeps its own activation scratch; concurrent calls do not mix."""
    rng = np.random.default_rng(8)
    w, s = weights(rng, 70, 500)
    packed = C.qgemm_pack(w, s)
    xs = [randn(rng, m, 500) for m in (5, 64, 130, 9)]
    expected = [C.qgemm(x, packed) for x in xs]
    errors = []

    def work(i):
        for _ in range(20):
            if not np.array_equal(C.qgemm(xs[i], packed), expected[i]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.campaign("native")
def test_bad_arguments_are_value_errors():
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 64)
    w, s = weights(rng, 5, 64)
    packed = C.qgemm_pack(w, s)
    cases = [
        ((x.astype(np.float64), packed), r"argument 'x' has numpy dtype float64, which is not supported"),
        ((x.astype(np.float16), packed), r"qgemm: argument 'x' must have shape \(M, K=64\) float32 C-contiguous"),
        ((np.asfortranarray(randn(rng, 3, 64)), packed), r"argument 'x' must have shape \(M, K=64\) float32 "
                                                          r"C-contiguous, got \(3, 64\) float32 non-contiguous"),
        ((randn(rng, 2, 65), packed), r"qgemm: argument 'x' must have shape \(M, K=64\) float32 C-contiguous, "
                                      r"got \(2, 65\)"),
        ((x, packed.view(np.int8)), r"qgemm: argument 'packed' must have shape \(bytes,\) uint8"),
        ((x, packed[::2]), r"argument 'packed' must have shape \(bytes,\) uint8 C-contiguous, got .* non-contiguous"),
        ((x, packed.reshape(-1, packed.size // 8)), r"argument 'packed' must have shape \(bytes,\) uint8"),
        ((x, packed[:-1]), r"qgemm: argument 'packed' must have \d+ bytes for N=5, K=64 .*\(truncated"),
        ((x, np.concatenate([packed, packed[:1]])), r"argument 'packed' must have \d+ bytes .*truncated or padded"),
        ((x, packed[:40]), r"argument 'packed' has 40 bytes, fewer than the 64 of a qgemm_pack header"),
        ((x, w.view(np.uint8).reshape(-1)), r"argument 'packed' is not a qgemm_pack buffer"),
        ((x, packed, np.ones(4, np.float32)), r"qgemm: argument 'bias' must have shape \(N=5,\) float32"),
        ((x, packed, np.ones(5, np.float64)), r"argument 'bias' has numpy dtype float64"),
        ((x, packed, None, np.zeros((2, 4), np.float32)), r"argument 'out' must have shape \(M=2, N=5\) float32"),
        ((x, None), r"argument 'packed' is required but got None"),
    ]
    for args, pattern in cases:
        kw = {"out": args[3]} if len(args) == 4 else {}
        with pytest.raises(ValueError, match=pattern):
            C.qgemm(*args[:3], **kw)
    for where, value in ((0, 0x00), (9, 0x01), (13, 0x7F), (24, 0x10)):  # magic, N, K, size: the checksum fails
        bad = packed.copy()
        bad[where] ^= value or 0xFF
        with pytest.raises(ValueError, match=r"qgemm: argument 'packed' is not a qgemm_pack buffer"):
            C.qgemm(x, bad)
    newer = packed.copy()
    newer[4] = 2  # version 2 with a valid checksum: refused by version
    newer[32:36] = np.frombuffer(_fnv1a(bytes(newer[:32])).to_bytes(4, "little"), np.uint8)
    with pytest.raises(ValueError, match=r"argument 'packed' has format version 2, this build reads version 1"):
        C.qgemm(x, newer)
    read_only = np.zeros((2, 5), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        C.qgemm(x, packed, out=read_only)


def _fnv1a(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


@pytest.mark.campaign("native")
def test_reference_and_pack_arguments_are_value_errors():
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 64)
    w, s = weights(rng, 5, 64)
    cases = [
        ((x, w.astype(np.int32), s), r"qgemm_reference: argument 'w' must have shape \(N, K=64\) int8"),
        ((x, w, s.reshape(5, 1)), r"qgemm_reference: argument 'w_scale' must have shape \(N=5,\) float32"),
        ((x, w, s.astype(np.float16)), r"argument 'w_scale' must have shape \(N=5,\) float32"),
        ((x, w[:, :63].copy(), s), r"qgemm_reference: argument 'w' must have shape \(N, K=64\) int8"),
        ((x, np.zeros((0, 64), np.int8), s[:0]), r"argument 'w' must have N >= 1"),
    ]
    for args, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            C.qgemm_reference(*args)
    bad = w.copy()
    bad[3, 7] = -128
    with pytest.raises(ValueError, match=r"qgemm_reference: argument 'w' must hold int8 values in \[-127, 127\].*"
                                         r"\(3, 7\)"):
        C.qgemm_reference(x, bad, s)
    pack_cases = [
        ((bad, s), r"qgemm_pack: argument 'w' must hold int8 values in \[-127, 127\] .*got -128 at \(3, 7\)"),
        ((w.astype(np.uint8), s), r"qgemm_pack: argument 'w' must have shape \(N, K\) int8"),
        ((w[:, ::2], s), r"qgemm_pack: argument 'w' must have shape \(N, K\) int8 C-contiguous, got .*non-contiguous"),
        ((w, s[:4]), r"qgemm_pack: argument 'w_scale' must have shape \(N=5,\) float32"),
        ((w, s.astype(np.float64)), r"argument 'w_scale' has numpy dtype float64"),
        ((np.zeros((5, 0), np.int8), s), r"qgemm_pack: argument 'w' must have K >= 1"),
        ((np.zeros((0, 4), np.int8), s[:0]), r"qgemm_pack: argument 'w' must have N >= 1"),
        ((np.zeros((1, MAX_K + 1), np.int8), s[:1]), rf"qgemm_pack: argument 'w' has K={MAX_K + 1}, more than "
                                                     rf"{MAX_K}"),
        ((None, s), r"argument 'w' is required but got None"),
    ]
    for args, pattern in pack_cases:
        with pytest.raises(ValueError, match=pattern):
            C.qgemm_pack(*args)
    with pytest.raises(ValueError, match=rf"qgemm_reference: argument 'x' has K={MAX_K + 1}, more than {MAX_K}"):
        C.qgemm_reference(np.zeros((1, MAX_K + 1), np.float32), np.zeros((1, MAX_K + 1), np.int8), s[:1])


@pytest.mark.campaign("native")
def test_out_must_not_overlap_x_or_bias():
    rng = np.random.default_rng(2)
    x = randn(rng, 3, 32)
    w, s = weights(rng, 32, 32)
    packed = C.qgemm_pack(w, s)
    for fn, args in ((C.qgemm, (packed,)), (C.qgemm_reference, (w, s))):
        with pytest.raises(ValueError, match="argument 'out' must not overlap x"):
            fn(x, *args, out=x)
        buf = np.zeros((4, 32), np.float32)
        with pytest.raises(ValueError, match="argument 'out' must not overlap bias"):
            fn(x, *args, buf[1], out=buf[1:])
        with pytest.raises(ValueError, match="argument 'out' must not overlap x"):
            fn(buf[:3], *args, out=buf[1:])
