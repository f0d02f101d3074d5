"""LLaMA decoder ops (kernels/decoder_ops*, kernels/linear_cpu.cpp): rms_norm, rope, swiglu, linear
(fp32 / fp16 / int8 weights; GEMV and GEMM paths; avx2 and portable CPU kernels), quantize.

References: HF transformers' LlamaRMSNorm / LlamaRotaryEmbedding + apply_rotary_pos_emb (torch, CPU,
fp32) and float64 numpy. Outputs are poisoned with NaN before each call.
"""

from __future__ import annotations

import numpy as np
import pytest

C = pytest.importorskip("rsvlm_edge._C")


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("shape", [(1, 64), (7, 77), (97, 4096), (3, 128)], ids=str)
def test_rms_norm_matches_llama_rmsnorm(shape):
    torch = pytest.importorskip("torch")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    rng = np.random.default_rng(0)
    x = randn(rng, *shape, scale=3.0)
    w = randn(rng, shape[-1])
    ref_mod = LlamaRMSNorm(shape[-1], eps=1e-5)
    with torch.no_grad():
        ref_mod.weight.copy_(torch.from_numpy(w))
        ref = ref_mod(torch.from_numpy(x)).numpy()
    out = np.full_like(x, np.nan)
    assert C.rms_norm(x, w, 1e-5, out=out) is out
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    x64 = x.astype(np.float64)
    ref64 = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(C.rms_norm(x, w, 1e-5), ref64, rtol=1e-5, atol=1e-5)


def test_rms_norm_in_place():
    rng = np.random.default_rng(1)
    x = randn(rng, 5, 33)
    w = randn(rng, 33)
    expect = C.rms_norm(x, w)
    C.rms_norm(x, w, out=x)
    np.testing.assert_array_equal(x, expect)


# ---------------------------------------------------------------- RoPE


def hf_rope(q, k, positions, theta):
    """q (T, H, D), k (T, H_kv, D) through HF LlamaRotaryEmbedding + apply_rotary_pos_emb."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    t, h, d = q.shape
    cfg = LlamaConfig(hidden_size=h * d, num_attention_heads=h, num_key_value_heads=k.shape[1], head_dim=d,
                      max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": theta})
    emb = LlamaRotaryEmbedding(cfg)
    tq = torch.from_numpy(q).transpose(0, 1)[None]  # (1, H, T, D)
    tk = torch.from_numpy(k).transpose(0, 1)[None]
    cos, sin = emb(tq, torch.from_numpy(positions.astype(np.int64))[None])
    rq, rk = apply_rotary_pos_emb(tq, tk, cos, sin)
    return rq[0].transpose(0, 1).numpy(), rk[0].transpose(0, 1).numpy()


@pytest.mark.parametrize("t, h, h_kv, d, theta", [(1, 4, 4, 64, 10000.0), (7, 8, 2, 80, 10000.0),
                                                   (97, 8, 1, 128, 500000.0), (54, 4, 4, 96, 10000.0)])
def test_rope_matches_hf_llama(t, h, h_kv, d, theta):
    rng = np.random.default_rng(2)
    q = randn(rng, t, h, d)
    k = randn(rng, t, h_kv, d)
    positions = rng.integers(0, 4096, t).astype(np.int32)
    positions[0] = 0
    ref_q, ref_k = hf_rope(q, k, positions, theta)
    C.rope(q, k, positions, theta)
    # Angles reach 4096 rad in fp32 (as in HF); a 1-ulp difference of theta**(-2i/D) between libm
    # and torch moves them by up to ~5e-4 rad. Measured max difference: 2.5e-5.
    np.testing.assert_allclose(q, ref_q, atol=1e-4, rtol=0)
    np.testing.assert_allclose(k, ref_k, atol=1e-4, rtol=0)


def test_rope_small_positions_exact_and_q_only():
    rng = np.random.default_rng(3)
    q = randn(rng, 6, 7, 64)
    positions = np.arange(6)  # int64: converted to int32 on the CPU path
    q64 = q.astype(np.float64)
    inv = 1.0 / 10000.0 ** (np.arange(0, 64, 2) / 64.0)
    a = positions[:, None, None] * inv  # (T, 1, 32)
    x1, x2 = q64[..., :32], q64[..., 32:]
    ref = np.concatenate([x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)], -1)
    C.rope(q, None, positions)
    np.testing.assert_allclose(q, ref, atol=1e-5, rtol=0)


def test_rope_rejects_bad_arguments():
    q = np.zeros((5, 4, 64), np.float32)
    with pytest.raises(ValueError, match=r"rope: argument 'k' must have shape \(T=5, H_kv, D=64\) float32"):
        C.rope(q, np.zeros((4, 2, 64), np.float32), np.arange(5))
    with pytest.raises(ValueError, match=r"rope: argument 'positions' must have shape \(T=5,\) int32"):
        C.rope(q, None, np.arange(4))
    with pytest.raises(ValueError, match=r"even head_dim"):
        C.rope(np.zeros((5, 4, 63), np.float32), None, np.arange(5))
    with pytest.raises(ValueError, match=r"argument 'positions' must be an integer array"):
        C.rope(q, None, np.arange(5.0))
    with pytest.raises(ValueError, match=r"argument 'q' is read-only"):
        q.flags.writeable = False
        C.rope(q, None, np.arange(5))


# ---------------------------------------------------------------- SwiGLU


@pytest.mark.parametrize("shape", [(1, 11008), (7, 97), (15, 33)], ids=str)
def test_swiglu_matches_reference(shape):
    rng = np.random.default_rng(4)
    g = randn(rng, *shape, scale=4.0)
    u = randn(rng, *shape)
    out = np.full_like(g, np.nan)
    C.swiglu(g, u, out=out)
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(out, g64 / (1 + np.exp(-g64)) * u, rtol=1e-5, atol=1e-6)
    C.swiglu(g, u, out=g)  # in place over gate
    np.testing.assert_array_equal(g, out)


# ---------------------------------------------------------------- linear / fp16 / int8


def _cpu_kernel_sets() -> list[str]:
    """The CPU micro-kernel sets this machine can run ('avx2' on x86-64 with AVX2+FMA+F16C)."""
    names = []
    for name in ("avx2", "portable"):
        try:
            C.set_cpu_kernels(name)
            names.append(name)
        except ValueError:
            pass
    C.set_cpu_kernels("auto")
    return names


CPU_KERNELS = _cpu_kernel_sets()


@pytest.fixture(params=CPU_KERNELS)
def cpu_kernels(request):
    """Runs the test with each CPU kernel set (linear: avx2 and portable), then restores the default."""
    assert C.set_cpu_kernels(request.param) == request.param
    yield request.param
    C.set_cpu_kernels("auto")


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
    ref = x.astype(np.float64) @ w.astype(np.float64).T + (0 if bias is None else bias)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [1, 3, 17, 130])
@pytest.mark.parametrize("k, n", [(67, 200), (1000, 67), (200, 1000), (2100, 67)], ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_linear_fp16_weights_match_float64_reference(cpu_kernels, m, k, n, with_bias):
    rng = np.random.default_rng(10)
    x = randn(rng, m, k)
    w16 = randn(rng, n, k, scale=k**-0.5).astype(np.float16)
    bias = randn(rng, n) if with_bias else None
    out = np.full((m, n), np.nan, np.float32)
    assert C.linear(x, w16, bias, out=out) is out
    ref = x.astype(np.float64) @ w16.astype(np.float64).T + (0 if bias is None else bias)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


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
    deq = w8.astype(np.float64) * scale[:, None]
    np.testing.assert_allclose(out, x.astype(np.float64) @ deq.T + bias, rtol=1e-5, atol=1e-5)
    # Against the unquantised weights: error bounded by half a step per weight (|x| summed).
    bound = 0.5 * np.abs(x).astype(np.float64) @ np.broadcast_to(scale, (k, n)) + 1e-5
    assert np.all(np.abs(out - (x.astype(np.float64) @ w.T + bias)) <= bound)


def test_linear_allocated_output():
    rng = np.random.default_rng(7)
    x = randn(rng, 3, 16)
    w = randn(rng, 5, 16)
    y = C.linear(x, w)
    assert y.shape == (3, 5) and y.dtype == np.float32
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-5)


def test_decoder_ops_reject_bad_arguments():
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
    with pytest.raises(ValueError, match=r"set_cpu_kernels: argument 'name' must be 'auto', 'avx2' or 'portable', got 'sse'"):
        C.set_cpu_kernels("sse")
    with pytest.raises(ValueError, match=r"argument 'x' must have shape \(M, K\) float32 C-contiguous, got \(3, 16\) float16"):
        C.linear(x.astype(np.float16), np.zeros((5, 16), np.float32))
    with pytest.raises(ValueError, match=r"argument 'out' must have shape \(M=3, N=5\) float32"):
        C.linear(x, np.zeros((5, 16), np.float32), out=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"argument 'out' must not be x"):
        C.linear(x, np.zeros((16, 16), np.float32), out=x)
    with pytest.raises(ValueError, match=r"rms_norm: argument 'weight' must have shape \(D=16,\) float32"):
        C.rms_norm(x, np.zeros(15, np.float32))
    with pytest.raises(ValueError, match=r"swiglu: argument 'up' must have shape \(T=3, F=16\) float32"):
        C.swiglu(x, np.zeros((3, 15), np.float32))
    with pytest.raises(ValueError, match=r"quantize_weight_int8: argument 'w' must have shape \(N, K\) float32"):
        C.quantize_weight_int8(np.zeros(5, np.float32))


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


@pytest.fixture
def torch_cuda(cuda_device):
    """torch, when a GPU is present and this build has the CUDA kernels (tests/conftest.py: cuda_device)."""
    if not C.built_with_cuda():
        pytest.skip("rsvlm_edge was built without CUDA kernels")
    import torch

    return torch


CUDA_TOL = {"float16": 2e-3, "bfloat16": 1.6e-2}


def _to_gpu(torch, a, dtype):
    return torch.from_numpy(a).to("cuda", dtype)


def _rounded(torch, a, dtype):
    """a rounded to the GPU activation dtype, back as float32 numpy (the CPU reference's input)."""
    return torch.from_numpy(a).to(dtype).float().numpy()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_cuda_rms_norm_swiglu_rope_match_cpu(torch_cuda, dtype_name):
    torch = torch_cuda
    dt = getattr(torch, dtype_name)
    tol = CUDA_TOL[dtype_name]
    rng = np.random.default_rng(8)
    x = _rounded(torch, randn(rng, 97, 4096, scale=3.0), dt)
    w = _rounded(torch, randn(rng, 4096), dt)
    out = torch.full((97, 4096), float("nan"), dtype=dt, device="cuda")
    C.rms_norm(_to_gpu(torch, x, dt), _to_gpu(torch, w, dt), 1e-5, out=out)
    np.testing.assert_allclose(out.float().cpu().numpy(), C.rms_norm(x, w, 1e-5), rtol=tol, atol=tol * 4)

    g = _rounded(torch, randn(rng, 7, 11008, scale=4.0), dt)
    u = _rounded(torch, randn(rng, 7, 11008), dt)
    out = torch.full((7, 11008), float("nan"), dtype=dt, device="cuda")
    C.swiglu(_to_gpu(torch, g, dt), _to_gpu(torch, u, dt), out=out)
    np.testing.assert_allclose(out.float().cpu().numpy(), C.swiglu(g, u), rtol=tol, atol=tol)

    q = _rounded(torch, randn(rng, 54, 32, 128), dt)
    k = _rounded(torch, randn(rng, 54, 8, 128), dt)
    pos = rng.integers(0, 2048, 54).astype(np.int32)
    gq, gk = _to_gpu(torch, q, dt), _to_gpu(torch, k, dt)
    C.rope(gq, gk, torch.from_numpy(pos).cuda())
    C.rope(q, k, pos)
    np.testing.assert_allclose(gq.float().cpu().numpy(), q, atol=tol * 4, rtol=0)
    np.testing.assert_allclose(gk.float().cpu().numpy(), k, atol=tol * 4, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("m, k, n", [(1, 4096, 11008), (7, 77, 129), (97, 320, 33)], ids=str)
@pytest.mark.parametrize("int8", [False, True], ids=["dense", "int8"])
def test_cuda_linear_matches_cpu(torch_cuda, dtype_name, m, k, n, int8):
    torch = torch_cuda
    dt = getattr(torch, dtype_name)
    rng = np.random.default_rng(9)
    x = _rounded(torch, randn(rng, m, k), dt)
    w = _rounded(torch, randn(rng, n, k, scale=k**-0.5), dt)
    bias = _rounded(torch, randn(rng, n), dt)
    out = torch.full((m, n), float("nan"), dtype=dt, device="cuda")
    if int8:
        w8, scale = C.quantize_weight_int8(w)
        C.linear(_to_gpu(torch, x, dt), torch.from_numpy(w8).cuda(), _to_gpu(torch, bias, dt),
                 w_scale=torch.from_numpy(scale).cuda(), out=out)
        ref = C.linear(x, w8, bias, w_scale=scale)
    else:
        C.linear(_to_gpu(torch, x, dt), _to_gpu(torch, w, dt), _to_gpu(torch, bias, dt), out=out)
        ref = C.linear(x, w, bias)
    tol = CUDA_TOL[dtype_name]
    np.testing.assert_allclose(out.float().cpu().numpy(), ref, rtol=tol, atol=tol * 2)
