"""rope (kernels/rope/, csrc/bind_rope.cpp): fast CPU path and CUDA kernel against the naive reference
`_C.rope_reference` (plain loops, fp64 rotation), and both against HF transformers'
LlamaRotaryEmbedding + apply_rotary_pos_emb. Positions: any integer dtype on the host, range-checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the sibling helpers, also under --import-mode=importlib
from kernel_testing import cuda_dtype, cuda_dtype_test, randn  # noqa: E402

C = pytest.importorskip("rsvlm_edge._C")


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


ROPE_CASES = [(1, 4, 4, 64, 10000.0), (7, 8, 2, 80, 10000.0), (97, 8, 1, 128, 500000.0), (54, 4, 4, 96, 10000.0)]


@pytest.mark.parametrize("t, h, h_kv, d, theta", ROPE_CASES)
def test_rope_and_reference_match_hf_llama(t, h, h_kv, d, theta):
    rng = np.random.default_rng(2)
    q = randn(rng, t, h, d)
    k = randn(rng, t, h_kv, d)
    positions = rng.integers(0, 4096, t).astype(np.int32)
    positions[0] = 0
    ref_q, ref_k = hf_rope(q, k, positions, theta)
    rq, rk = q.copy(), k.copy()
    C.rope_reference(rq, rk, positions, theta)
    C.rope(q, k, positions, theta)
    # Angles reach 4096 rad in fp32 (as in HF); a 1-ulp difference of theta**(-2i/D) between libm
    # and torch moves them by up to ~5e-4 rad. Measured max difference: 2.5e-5.
    for got_q, got_k in ((q, k), (rq, rk)):
        np.testing.assert_allclose(got_q, ref_q, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_k, ref_k, atol=1e-4, rtol=0)
    # Fast path vs reference: the same fp32 angles, cos/sin in fp32 vs fp64.
    np.testing.assert_allclose(q, rq, atol=2e-5, rtol=0)
    np.testing.assert_allclose(k, rk, atol=2e-5, rtol=0)


@pytest.mark.parametrize("t, h, h_kv, d", [(1, 1, 1, 2), (7, 3, 1, 6), (577, 2, 1, 64), (1297, 1, 1, 10)])
def test_rope_matches_reference_odd_shapes(t, h, h_kv, d):
    rng = np.random.default_rng(5)
    q = randn(rng, t, h, d)
    k = randn(rng, t, h_kv, d)
    positions = rng.integers(0, 70000, t)  # int64
    rq, rk = q.copy(), k.copy()
    C.rope_reference(rq, rk, positions)
    C.rope(q, k, positions)
    np.testing.assert_allclose(q, rq, atol=3e-5, rtol=0)
    np.testing.assert_allclose(k, rk, atol=3e-5, rtol=0)


def test_rope_small_positions_exact_and_q_only():
    rng = np.random.default_rng(3)
    q = randn(rng, 6, 7, 64)
    positions = np.arange(6)  # int64: range-checked and converted on the CPU path
    q64 = q.astype(np.float64)
    inv = 1.0 / 10000.0 ** (np.arange(0, 64, 2) / 64.0)
    a = positions[:, None, None] * inv  # (T, 1, 32)
    x1, x2 = q64[..., :32], q64[..., 32:]
    ref = np.concatenate([x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)], -1)
    rq = q.copy()
    C.rope_reference(rq, None, positions)
    C.rope(q, None, positions)
    np.testing.assert_allclose(q, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(rq, ref, atol=1e-5, rtol=0)


def test_rope_rejects_bad_arguments():
    q = np.zeros((5, 4, 64), np.float32)
    for fn in (C.rope, C.rope_reference):
        with pytest.raises(ValueError, match=r"argument 'k' must have shape \(T=5, H_kv, D=64\) float32"):
            fn(q, np.zeros((4, 2, 64), np.float32), np.arange(5))
        with pytest.raises(ValueError, match=r"argument 'positions' must have shape \(T=5,\) int32"):
            fn(q, None, np.arange(4))
        with pytest.raises(ValueError, match=r"even head_dim"):
            fn(np.zeros((5, 4, 63), np.float32), None, np.arange(5))
        with pytest.raises(ValueError, match=r"argument 'positions' must be an integer array"):
            fn(q, None, np.arange(5.0))
        # 64-bit positions are range-checked, never truncated (2**32 + 1 would wrap to 1).
        with pytest.raises(ValueError, match=r"argument 'positions' has value 4294967297 at \[1\]"):
            fn(q, None, np.array([0, 2**32 + 1, 2, 3, 4], np.int64))
        with pytest.raises(ValueError, match=r"argument 'positions' has value -1 at \[2\], outside \[0, 2\^31-1\]"):
            fn(q, None, [0, 1, -1, 3, 4])
        with pytest.raises(ValueError, match=r"argument 'positions' has value 18446744073709551615"):
            fn(q, None, np.array([0, 1, 2, 3, 2**64 - 1], np.uint64))
        with pytest.raises(ValueError, match=r"argument 'q' must have H >= 1"):
            fn(np.zeros((5, 0, 64), np.float32), None, np.arange(5))
    with pytest.raises(ValueError, match=r"argument 'q' is read-only"):
        q.flags.writeable = False
        C.rope(q, None, np.arange(5))


def test_rope_zero_tokens_and_strided_positions():
    for fn in (C.rope, C.rope_reference):
        fn(np.zeros((0, 2, 8), np.float32), np.zeros((0, 1, 8), np.float32), np.zeros(0, np.int64))
    rng = np.random.default_rng(6)
    q = randn(rng, 4, 2, 8)
    positions = np.arange(8, dtype=np.int16)[::2]  # non-contiguous, 16-bit
    expect = q.copy()
    C.rope_reference(expect, None, positions.astype(np.int32).copy())
    C.rope(q, None, positions)
    np.testing.assert_allclose(q, expect, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

@cuda_dtype_test
@pytest.mark.parametrize("t", [1, 54, 1297])
def test_cuda_rope_matches_reference(cuda_device, dtype_name, t):
    torch, dt, tol = cuda_dtype(dtype_name)
    rng = np.random.default_rng(8)
    q = torch.from_numpy(randn(rng, t, 32, 128)).to(dt)
    k = torch.from_numpy(randn(rng, t, 8, 128)).to(dt)
    pos = rng.integers(0, 2048, t).astype(np.int32)
    gq, gk = q.cuda(), k.cuda()
    C.rope(gq, gk, torch.from_numpy(pos).cuda())
    rq, rk = q.float().numpy(), k.float().numpy()
    C.rope_reference(rq, rk, pos)
    np.testing.assert_allclose(gq.float().cpu().numpy(), rq, atol=tol * 4, rtol=0)
    np.testing.assert_allclose(gk.float().cpu().numpy(), rk, atol=tol * 4, rtol=0)
