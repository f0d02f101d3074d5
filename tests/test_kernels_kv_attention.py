"""KV-cache attention (kernels/kv_attention/, csrc/bind_kv_attention.cpp): append, prefill, decode;
contiguous, paged, int8.

The one reference is the naive C++ `_C.kv_append_reference` / `_C.attention_*_reference` (plain loops,
fp64 softmax), itself checked against torch's scaled_dot_product_attention. The fast CPU path and the
CUDA kernels are compared with it on the same inputs. Caches and outputs are poisoned (NaN) before
each call, so a kernel that reads an unwritten cache row or skips an output row fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the sibling helpers, also under --import-mode=importlib
from kernel_testing import CPU_KERNELS, CUDA_TOL, cuda_dtype_test, cuda_torch  # noqa: E402

C = pytest.importorskip("rsvlm_edge._C")

# (H, H_kv, D): GQA ratios 1, 4, 8 over head dims 64, 80, 96, 128.
HEADS = [(4, 4, 64), (8, 2, 80), (8, 1, 96), (16, 2, 128)]
# Batches as (q_lens, past_lens): single sequences of odd lengths, then batch 3 with different
# lengths and a cached prefix (chunked prefill / image tokens already in the cache).
PREFILL_CASES = [
    ((1,), (0,)),
    ((7,), (0,)),
    ((54,), (0,)),
    ((97,), (0,)),
    ((577,), (0,)),
    ((1297,), (0,)),
    ((7, 54, 1), (0, 13, 96)),
]
# INT8 KV: per-head-per-token symmetric scales. The dequantisation error is at most max|row| / 254
# per element (~0.012 for unit-normal rows of 128); through softmax and the V sum the attention
# output of unit-normal q, K, V stays within this absolute bound (measured max 0.025).
INT8_ATOL = 4e-2


def make_cache(batch, h_kv, d, capacity, paged, dtype=np.float32):
    """Empty caches poisoned with NaN (int8: scales poisoned); paged caches get a shuffled page table."""
    pages_per_seq = -(-capacity // 16)
    if paged:
        num_pages = batch * pages_per_seq + 3
        shape = (num_pages, h_kv, 16, d)
        table = np.random.default_rng(1234).permutation(num_pages)[: batch * pages_per_seq].reshape(batch, pages_per_seq)
        table = table.astype(np.int32)
    else:
        shape = (batch, h_kv, capacity, d)
        table = None
    if dtype == np.int8:
        k = np.full(shape, 77, np.int8)
        v = np.full(shape, -77, np.int8)
        ks = np.full(shape[:3], np.nan, np.float32)
        vs = np.full(shape[:3], np.nan, np.float32)
        return dict(k_cache=k, v_cache=v, page_table=table, k_scale=ks, v_scale=vs)
    k = np.full(shape, np.nan, np.float32)
    v = np.full(shape, np.nan, np.float32)
    return dict(k_cache=k, v_cache=v, page_table=table)


def copy_cache(cache):
    return {k: None if v is None else v.copy() for k, v in cache.items()}


def assert_caches_equal(a, b):
    for name in a:
        if a[name] is not None:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def fill(cache, k_seqs, v_seqs, starts, ends, append=None):
    """Append rows [starts[b], ends[b]) of every sequence through kv_append (or `append`), in one batched call."""
    append = append or C.kv_append
    batch = len(k_seqs)
    width = max(1, max(e - s for s, e in zip(starts, ends)))
    h_kv, d = k_seqs[0].shape[1:]
    kn = np.full((batch, width, h_kv, d), np.nan, np.float32)
    vn = np.full((batch, width, h_kv, d), np.nan, np.float32)
    for b in range(batch):
        n = ends[b] - starts[b]
        kn[b, :n] = k_seqs[b][starts[b] : ends[b]]
        vn[b, :n] = v_seqs[b][starts[b] : ends[b]]
    lens = np.array([e - s for s, e in zip(starts, ends)], np.int32)
    append(cache["k_cache"], cache["v_cache"], kn, vn, np.array(starts, np.int32), new_lens=lens,
           page_table=cache["page_table"], k_scale=cache.get("k_scale"), v_scale=cache.get("v_scale"))


def run_prefill(heads, q_lens, past_lens, paged, cache_dtype=np.float32, seed=0, want_inputs=False, causal=True,
                bf16_products=False):
    """Build a cache holding past + new tokens with kv_append, and the same cache with
    kv_append_reference (they must be equal); run attention_prefill on the first (with `bf16_products`)
    and attention_prefill_reference on the second; return (out, reference, cache)."""
    h, h_kv, d = heads
    rng = np.random.default_rng(seed)
    batch = len(q_lens)
    kv_lens = [p + n for p, n in zip(past_lens, q_lens)]
    s_q = max(q_lens)
    k_seqs = [rng.standard_normal((n, h_kv, d)).astype(np.float32) for n in kv_lens]
    v_seqs = [rng.standard_normal((n, h_kv, d)).astype(np.float32) for n in kv_lens]
    q = np.full((batch, s_q, h, d), np.nan, np.float32)
    for b in range(batch):
        q[b, : q_lens[b]] = rng.standard_normal((q_lens[b], h, d))
    cache = make_cache(batch, h_kv, d, max(kv_lens) + 5, paged, cache_dtype)
    ref_cache = copy_cache(cache)
    for c, append in ((cache, C.kv_append), (ref_cache, C.kv_append_reference)):
        fill(c, k_seqs, v_seqs, [0] * batch, list(past_lens), append)  # the cached prefix
        fill(c, k_seqs, v_seqs, list(past_lens), kv_lens, append)  # the new chunk
    assert_caches_equal(cache, ref_cache)
    outs = []
    for c, attend, flag in ((cache, C.attention_prefill, {"bf16_products": bf16_products}),
                            (ref_cache, C.attention_prefill_reference, {})):
        out = np.full_like(q, np.nan)
        ret = attend(q, c["k_cache"], c["v_cache"], np.array(q_lens, np.int32), np.array(kv_lens, np.int32),
                     out=out, page_table=c["page_table"], k_scale=c.get("k_scale"), v_scale=c.get("v_scale"),
                     causal=causal, **flag)
        assert ret is out
        outs.append(out)
    if want_inputs:
        return outs[0], outs[1], cache, (q, k_seqs, v_seqs)
    return outs[0], outs[1], cache


@pytest.mark.parametrize("heads", HEADS, ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
@pytest.mark.parametrize("lens", PREFILL_CASES, ids=lambda t: "q" + "_".join(map(str, t[0])))
def test_prefill_matches_reference(heads, lens, cpu_kernels):  # avx512vnni: the 16-row block body
    q_lens, past_lens = lens
    if max(q_lens) > 500 and heads[0] > 8:
        heads = (8, 1, heads[2])  # keep the long cases cheap on 2 CPU cores; ratio 8 still covered
    out, ref, _ = run_prefill(heads, q_lens, past_lens, paged=False)
    assert not np.isnan(out).any(), "padding rows must be written (zeros), not left poisoned"
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("heads", [(6, 3, 64), (12, 4, 64), (32, 2, 64), (4, 2, 112), (16, 2, 48)],
                         ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
def test_prefill_every_group_size_and_head_dim(heads, cpu_kernels):
    """Group sizes 2, 3 (16 % G != 0: the per-query path), 16 (one query per 16-row block) and head
    dims without a block body (112, 48): every kernel set gives the reference, batch 2 with a cached
    prefix and a padded sequence, blocks cut by the sequence ends."""
    out, ref, _ = run_prefill(heads, (13, 5), (3, 0), paged=False)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("heads", [(12, 12, 64), (16, 16, 64), (6, 3, 80), (4, 2, 112)],
                         ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
def test_bidirectional_prefill_matches_reference(heads, cpu_kernels):
    """causal=False (a ViT's self-attention: every query sees all its sequence's keys) on every kernel
    set: ViT-B/L head layouts (16-row blocks of one head), GQA, a head dim without a block body; a
    50-token image (CLS + 7x7), a padded shorter sequence and one with a cached prefix."""
    out, ref, _ = run_prefill(heads, (50, 17, 3), (0, 0, 9), paged=False, causal=False)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
    causal, _, _ = run_prefill(heads, (50, 17, 3), (0, 0, 9), paged=False, causal=True)
    assert not np.allclose(causal[0, :49], out[0, :49])  # the flag changes the answer, except the last query
    np.testing.assert_allclose(causal[0, 49], out[0, 49], atol=2e-5, rtol=1e-4)


def bf16(x):
    """float32 -> bf16 -> float32: round to nearest even, subnormals to zero (vcvtneps2bf16)."""
    x = np.asarray(x, np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    return np.where(np.abs(x) < np.finfo(np.float32).tiny, np.float32(0) * x, rounded)


def bf16_definition(q, k_seqs, v_seqs, q_lens, kv_lens, causal):
    """AttentionParams::bf16_products written out in numpy: q * scale, k, the weights exp(s - max) (fp32)
    and v rounded to bf16, products summed in fp64, divided by the fp32 sum of the unrounded weights."""
    batch, s_q, h, d = q.shape
    group = h // k_seqs[0].shape[1]
    scale = np.float32(1.0 / np.sqrt(d))
    out = np.zeros_like(q)
    for b in range(batch):
        ql, kv = q_lens[b], kv_lens[b]
        for i in range(ql):
            n = kv - ql + i + 1 if causal else kv
            for head in range(h):
                k = bf16(k_seqs[b][:n, head // group]).astype(np.float64)
                v = bf16(v_seqs[b][:n, head // group]).astype(np.float64)
                s = k @ bf16(q[b, i, head] * scale).astype(np.float64)
                w = np.exp((s - s.max()).astype(np.float32))
                out[b, i, head] = (bf16(w).astype(np.float64) @ v) / w.astype(np.float64).sum()
    return out


@pytest.mark.skipif("amx" not in CPU_KERNELS, reason="bf16 products need a CPU with AMX-BF16 (kernel set amx)")
@pytest.mark.parametrize("heads", [(12, 12, 64), (16, 16, 64), (8, 2, 128), (16, 1, 64)],
                         ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_bf16_products_on_amx_match_their_definition(heads, causal, paged):
    """The AMX-BF16 body against its definition (numpy, bf16 roundings emulated): tight, where the fp32
    reference differs by bf16 rounding (~1e-2); padded and prefixed sequences, keys past 16/32 multiples."""
    try:
        C.set_cpu_kernels("amx")
        out, ref, _, (q, k_seqs, v_seqs) = run_prefill(heads, (50, 17, 3), (0, 0, 9), paged=paged, causal=causal,
                                                       want_inputs=True, bf16_products=True)
    finally:
        C.set_cpu_kernels("auto")
    assert not np.isnan(out).any()
    want = bf16_definition(q, k_seqs, v_seqs, (50, 17, 3), (50, 17, 12), causal)
    valid = ~np.isnan(q)
    # 5e-4: our vector exp and numpy's differ by an ulp, which flips the bf16 rounding of a weight now and
    # then (0.03 % of outputs move by up to 2e-4); the fp32 attention is ~50x further away
    np.testing.assert_allclose(out[valid], want[valid], atol=5e-4, rtol=1e-3)
    assert np.abs(out[valid] - want[valid]).mean() < 2e-6
    assert (out[~valid] == 0).all()  # padding rows
    assert np.abs(out - ref).max() < 3e-2  # within bf16 rounding of the fp32 attention


@pytest.mark.parametrize("heads", [(12, 12, 64), (6, 3, 80)], ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
@pytest.mark.cpu_kernel_sets("amx", "avx512vnni", "avx2", "portable")
def test_bf16_products_is_a_permission(heads, cpu_kernels):
    """Without an AMX body (other kernel sets; head dims other than 64/128) the flag changes nothing."""
    # an int8 cache has no bf16 body on any kernel set
    plain, _, _ = run_prefill(heads, (50, 3), (0, 9), paged=True, cache_dtype=np.int8, causal=False)
    flagged, _, _ = run_prefill(heads, (50, 3), (0, 9), paged=True, cache_dtype=np.int8, causal=False,
                                bf16_products=True)
    np.testing.assert_array_equal(flagged, plain)
    if cpu_kernels == "amx" and heads[2] in (64, 128):
        return  # an fp32 cache there is the amx body itself: test_bf16_products_on_amx_match_their_definition
    plain, _, _ = run_prefill(heads, (50, 17, 3), (0, 0, 9), paged=False, causal=False)
    flagged, _, _ = run_prefill(heads, (50, 17, 3), (0, 0, 9), paged=False, causal=False, bf16_products=True)
    np.testing.assert_array_equal(flagged, plain)


@pytest.mark.parametrize("heads", [(4, 4, 64), (8, 2, 80)], ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_reference_matches_torch_sdpa(heads, paged, causal):
    """The naive reference against torch's scaled_dot_product_attention (fp64, explicit causal mask
    with a cached prefix, KV heads repeated for GQA; no mask when bidirectional)."""
    torch = pytest.importorskip("torch")
    q_lens, past = (7, 54, 1), (0, 13, 96)
    _, ref, _, (q, k_seqs, v_seqs) = run_prefill(heads, q_lens, past, paged=paged, seed=7, want_inputs=True,
                                                 causal=causal)
    group = heads[0] // heads[1]
    for b in range(len(q_lens)):
        qb = torch.from_numpy(q[b, : q_lens[b]]).double().transpose(0, 1)  # (H, S, D)
        kb = torch.from_numpy(k_seqs[b]).double().repeat_interleave(group, dim=1).transpose(0, 1)  # (H, n, D)
        vb = torch.from_numpy(v_seqs[b]).double().repeat_interleave(group, dim=1).transpose(0, 1)
        n = kb.shape[1]
        mask = torch.arange(n)[None, :] <= (past[b] + torch.arange(q_lens[b]))[:, None]
        if not causal:
            mask = torch.ones_like(mask)
        want = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask).transpose(0, 1)
        np.testing.assert_allclose(ref[b, : q_lens[b]], want.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(ref[b, q_lens[b] :], 0.0)  # padding rows


def run_decode(heads, seq_lens, paged, cache_dtype=np.float32, seed=1, num_splits=0):
    """Cache holds seq_lens[b] - 1 tokens; append the new one with kv_append, then attention_decode;
    the same with kv_append_reference + attention_decode_reference. Returns (out, reference)."""
    h, h_kv, d = heads
    rng = np.random.default_rng(seed)
    batch = len(seq_lens)
    k_seqs = [rng.standard_normal((n, h_kv, d)).astype(np.float32) for n in seq_lens]
    v_seqs = [rng.standard_normal((n, h_kv, d)).astype(np.float32) for n in seq_lens]
    cache = make_cache(batch, h_kv, d, max(seq_lens) + 2, paged, cache_dtype)
    ref_cache = copy_cache(cache)
    past = [n - 1 for n in seq_lens]
    k_new = np.stack([k[-1] for k in k_seqs])  # (B, H_kv, D): the decode-step form of k_new
    v_new = np.stack([v[-1] for v in v_seqs])
    q = rng.standard_normal((batch, h, d)).astype(np.float32)
    outs = []
    for c, append, attend in ((cache, C.kv_append, C.attention_decode),
                              (ref_cache, C.kv_append_reference, C.attention_decode_reference)):
        fill(c, k_seqs, v_seqs, [0] * batch, past, append)
        append(c["k_cache"], c["v_cache"], k_new, v_new, np.array(past, np.int32), page_table=c["page_table"],
               k_scale=c.get("k_scale"), v_scale=c.get("v_scale"))
        out = np.full_like(q, np.nan)
        attend(q, c["k_cache"], c["v_cache"], np.array(seq_lens, np.int32), out=out, page_table=c["page_table"],
               k_scale=c.get("k_scale"), v_scale=c.get("v_scale"), num_splits=num_splits)
        outs.append(out)
    assert_caches_equal(cache, ref_cache)
    return outs[0], outs[1]


@pytest.mark.parametrize("heads", HEADS, ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
@pytest.mark.parametrize("seq_lens", [(1,), (1297,), (1, 54, 577), (97, 7, 608)], ids=str)
@pytest.mark.cpu_kernel_sets("avx2", "portable")  # avx512vnni runs the same attention body as avx2
def test_decode_matches_reference(heads, seq_lens, cpu_kernels):
    out, ref = run_decode(heads, seq_lens, paged=False)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("heads", [(8, 2, 80), (16, 2, 128)], ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
def test_paged_prefill_equals_contiguous(heads):
    q_lens, past = (7, 54, 1), (0, 13, 96)
    contiguous, ref, _ = run_prefill(heads, q_lens, past, paged=False, seed=3)
    paged, _, cache = run_prefill(heads, q_lens, past, paged=True, seed=3)
    assert cache["page_table"].shape[1] > 1 and not np.all(np.diff(cache["page_table"].ravel()) == 1)
    np.testing.assert_array_equal(paged, contiguous)
    np.testing.assert_allclose(paged, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("heads", [(4, 4, 64), (8, 1, 96)], ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
def test_paged_decode_equals_contiguous(heads):
    seq_lens = (17, 1, 97)
    contiguous, ref = run_decode(heads, seq_lens, paged=False, seed=4)
    paged, _ = run_decode(heads, seq_lens, paged=True, seed=4)
    np.testing.assert_array_equal(paged, contiguous)
    np.testing.assert_allclose(paged, ref, atol=2e-5, rtol=1e-4)


def test_int8_append_quantises_per_head_per_token():
    rng = np.random.default_rng(5)
    cache = make_cache(1, 2, 64, 20, paged=False, dtype=np.int8)
    k = (rng.standard_normal((1, 9, 2, 64)) * rng.uniform(0.1, 10, (1, 9, 2, 1))).astype(np.float32)
    C.kv_append(cache["k_cache"], cache["v_cache"], k, -k, np.array([3], np.int32),
                k_scale=cache["k_scale"], v_scale=cache["v_scale"])
    kq = cache["k_cache"][0, :, 3:12].astype(np.float32)  # (H_kv, 9, D)
    ks = cache["k_scale"][0, :, 3:12]
    expect_scale = np.abs(k[0]).max(axis=-1).T / 127.0  # (H_kv, 9)
    np.testing.assert_allclose(ks, expect_scale, rtol=1e-6)
    assert np.abs(kq).max() == 127
    err = np.abs(kq * ks[..., None] - k[0].transpose(1, 0, 2))
    assert np.all(err <= ks[..., None] * 0.5 * (1 + 1e-5)), "dequantised rows must be within half a step"

    np.testing.assert_array_equal(cache["v_cache"][0, :, 3:12], -cache["k_cache"][0, :, 3:12])
    assert np.isnan(cache["k_scale"][0, :, :3]).all() and np.isnan(cache["k_scale"][0, :, 12:]).all()


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_int8_prefill_and_decode_within_tolerance(paged):
    """Against the reference on the same int8 cache (tight), and on an fp32 cache of the same K/V
    (the quantisation error bound)."""
    out, ref, _ = run_prefill((8, 2, 128), (54, 7, 97), (0, 40, 11), paged=paged, cache_dtype=np.int8)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
    _, ref32, _ = run_prefill((8, 2, 128), (54, 7, 97), (0, 40, 11), paged=paged)
    np.testing.assert_allclose(out, ref32, atol=INT8_ATOL, rtol=0)
    out, ref = run_decode((8, 1, 80), (577, 1, 33), paged=paged, cache_dtype=np.int8)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
    _, ref32 = run_decode((8, 1, 80), (577, 1, 33), paged=paged)
    np.testing.assert_allclose(out, ref32, atol=INT8_ATOL, rtol=0)


def test_custom_scale_and_allocated_output():
    rng = np.random.default_rng(6)
    k = rng.standard_normal((1, 1, 12, 64)).astype(np.float32)
    v = rng.standard_normal((1, 1, 12, 64)).astype(np.float32)
    q = rng.standard_normal((1, 2, 64)).astype(np.float32)
    out = C.attention_decode(q, k, v, [12], scale=0.3)
    ref = C.attention_decode_reference(q, k, v, [12], scale=0.3)
    assert out.shape == ref.shape == (1, 2, 64)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
    # scale 0.3 differs from 1/sqrt(64): the reference really uses it
    assert not np.allclose(ref, C.attention_decode_reference(q, k, v, [12]), atol=1e-3)


def _valid_args():
    rng = np.random.default_rng(7)
    k = rng.standard_normal((2, 2, 32, 64)).astype(np.float32)
    return dict(q=rng.standard_normal((2, 5, 4, 64)).astype(np.float32), k_cache=k, v_cache=k.copy(),
                q_lens=np.array([5, 3], np.int32), kv_lens=np.array([9, 3], np.int32))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(q=np.zeros((2, 5, 4, 80), np.float32)),
         r"attention_prefill: argument 'q' must have shape \(B, S_q, H, D=64\) float32 C-contiguous, got \(2, 5, 4, 80\)"),
        (dict(q=np.zeros((2, 5, 3, 64), np.float32)), r"q has H=3 heads, which is not a multiple of the H_kv=2 KV heads"),
        (dict(q=np.zeros((2, 5, 4, 64), np.float64)), r"argument 'q' has numpy dtype float64, which is not supported"),
        (dict(q=np.zeros((2, 5, 4, 64), np.float16)), r"argument 'q' must have shape \(B, S_q, H, D=64\) float32"),
        (dict(q=np.zeros((5, 4, 64), np.float32)), r"argument 'q' must have shape \(B, S_q, H, D=64\)"),
        (dict(v_cache=np.zeros((2, 2, 31, 64), np.float32)),
         r"argument 'v_cache' must have shape \(B_cache=2, H_kv=2, S_max=32, D=64\) float32 C-contiguous, "
         r"got \(2, 2, 31, 64\)"),
        (dict(k_cache=np.zeros((1, 2, 32, 64), np.float32), v_cache=np.zeros((1, 2, 32, 64), np.float32)),
         r"argument 'k_cache' has 1 sequence slots but the batch has B=2"),
        (dict(v_cache=np.zeros((2, 2, 32, 64), np.int8)), r"argument 'v_cache' must have shape .* float32 C-contiguous, got .* int8"),
        (dict(q_lens=np.array([5], np.int32)), r"argument 'q_lens' must have shape \(B=2,\) int32"),
        (dict(q_lens=np.array([5.0, 3.0])), r"argument 'q_lens' must be an integer array, got float64"),
        (dict(kv_lens=np.array([9, 2], np.int32)), r"kv_lens\[1\] = 2 is smaller than q_lens\[1\] = 3"),
        (dict(kv_lens=np.array([33, 3], np.int32)), r"needs 33 cache positions but the cache holds 32"),
        (dict(q_lens=np.array([6, 3], np.int32)), r"q_lens\[0\] = 6 is outside \[0, S_q=5\]"),
        (dict(out=np.zeros((2, 5, 4, 32), np.float32)), r"argument 'out' must have shape \(B=2, S_q=5, H=4, D=64\)"),
        (dict(k_cache=np.zeros((2, 2, 32, 64), np.int8), v_cache=np.zeros((2, 2, 32, 64), np.int8)),
         r"an int8 cache needs k_scale and v_scale"),
        (dict(page_table=np.zeros((3, 2), np.int32)), r"argument 'k_cache' must have shape \(num_pages, H_kv, 16, D\)"),
        (dict(scale=-1.0), r"argument 'scale' must be >= 0"),
    ],
)
def test_prefill_rejects_bad_arguments(change, match):
    args = _valid_args()
    args.update(change)
    q = args.pop("q")
    with pytest.raises(ValueError, match=match):
        C.attention_prefill(q, args.pop("k_cache"), args.pop("v_cache"), args.pop("q_lens"), args.pop("kv_lens"),
                            **args)


def test_paged_rejects_bad_page_table():
    k = np.zeros((4, 2, 16, 64), np.float32)
    q = np.zeros((2, 4, 64), np.float32)
    with pytest.raises(ValueError, match=r"argument 'page_table' must have shape \(B=2, max_pages_per_seq\) int32"):
        C.attention_decode(q, k, k.copy(), [3, 3], page_table=np.zeros((3, 2), np.int32))
    with pytest.raises(ValueError, match=r"page_table\[1, 1\] = 9 is outside \[0, 4\)"):
        C.attention_decode(q, k, k.copy(), [3, 20], page_table=np.array([[0, 1], [2, 9]], np.int32))


def test_append_rejects_bad_arguments():
    k = np.zeros((2, 2, 8, 64), np.float32)
    kn = np.zeros((2, 3, 2, 64), np.float32)
    with pytest.raises(ValueError, match=r"kv_append: argument 'k_new' must have shape \(B, S_new, H_kv=2, D=64\)"):
        C.kv_append(k, k.copy(), np.zeros((2, 3, 4, 64), np.float32), np.zeros((2, 3, 4, 64), np.float32), [0, 0])
    with pytest.raises(ValueError, match=r"argument 'v_new' must have shape \(B=2, S_new=3, H_kv=2, D=64\)"):
        C.kv_append(k, k.copy(), kn, kn[:, :2].copy(), [0, 0])
    with pytest.raises(ValueError, match=r"argument 'start_pos' must have shape \(B=2,\) int32"):
        C.kv_append(k, k.copy(), kn, kn, [0])
    with pytest.raises(ValueError, match=r"kv_append of sequence 1 needs 9 cache positions but the cache holds 8"):
        C.kv_append(k, k.copy(), kn, kn, [0, 6])
    with pytest.raises(ValueError, match=r"new_lens\[0\] = 4 is outside \[0, S_new=3\]"):
        C.kv_append(k, k.copy(), kn, kn, [0, 0], new_lens=[4, 1])
    with pytest.raises(ValueError, match=r"k_scale / v_scale are only used with an int8 cache"):
        C.kv_append(k, k.copy(), kn, kn, [0, 0], k_scale=np.zeros((2, 2, 8), np.float32),
                    v_scale=np.zeros((2, 2, 8), np.float32))
    with pytest.raises(ValueError, match=r"argument 'k_cache' is read-only"):
        ro = k.copy()
        ro.flags.writeable = False
        C.kv_append(ro, k.copy(), kn, kn, [0, 0])


# ---------------------------------------------------------------- kv_append with the RoPE fused in

ROPE_CASES = [  # (H, H_kv, D), S_new, new_lens, start_pos
    ((4, 2, 64), 5, [5, 2, 0], [0, 7, 3]),
    ((8, 1, 96), 1, [1, 1], [0, 40]),
    ((6, 3, 18), 3, [3], [11]),
]


def rope_inputs(heads, s_new, lens, starts, seed=5):
    h, h_kv, d = heads
    rng = np.random.default_rng(seed)
    batch = len(lens)
    q = rng.standard_normal((batch, s_new, h, d)).astype(np.float32)
    kn = rng.standard_normal((batch, s_new, h_kv, d)).astype(np.float32)
    vn = rng.standard_normal((batch, s_new, h_kv, d)).astype(np.float32)
    positions = (np.asarray(starts)[:, None] + np.arange(s_new)[None, :] + 3).astype(np.int32)  # not start_pos
    return q, kn, vn, positions


@pytest.mark.parametrize("case", ROPE_CASES, ids=lambda c: f"H{c[0][0]}-Hkv{c[0][1]}-D{c[0][2]}-S{c[1]}")
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
@pytest.mark.parametrize("cache_dtype", [np.float32, np.int8], ids=["fp32", "int8"])
def test_append_with_rope_equals_rope_then_append(case, paged, cache_dtype):
    """rope_positions / rope_q: the cache gets rotated K rows (k_new untouched), q is rotated in place, every
    row of it: what rope followed by kv_append gives, bit for bit, in the reference and the fast CPU path."""
    heads, s_new, lens, starts = case
    h, h_kv, d = heads
    q, kn, vn, positions = rope_inputs(heads, s_new, lens, starts)
    batch = len(lens)
    capacity = max(starts) + s_new + 1
    for append, rope in ((C.kv_append, C.rope), (C.kv_append_reference, C.rope_reference)):
        cache_fused = make_cache(batch, h_kv, d, capacity, paged, cache_dtype)
        cache_split = copy_cache(cache_fused)
        extra = dict(page_table=cache_fused["page_table"], new_lens=np.array(lens, np.int32))
        q_fused, kn_before = q.copy(), kn.copy()
        append(cache_fused["k_cache"], cache_fused["v_cache"], kn, vn, np.array(starts, np.int32),
               k_scale=cache_fused.get("k_scale"), v_scale=cache_fused.get("v_scale"),
               rope_positions=positions, rope_q=q_fused, rope_theta=500000.0, **extra)
        np.testing.assert_array_equal(kn, kn_before)  # k_new itself is not rotated
        q_split, k_split = q.copy(), kn.copy()
        rope(q_split.reshape(-1, h, d), k_split.reshape(-1, h_kv, d), positions.reshape(-1), 500000.0)
        append(cache_split["k_cache"], cache_split["v_cache"], k_split, vn, np.array(starts, np.int32),
               k_scale=cache_split.get("k_scale"), v_scale=cache_split.get("v_scale"), **extra)
        np.testing.assert_array_equal(q_fused, q_split)
        assert_caches_equal(cache_fused, cache_split)


def test_append_with_rope_rotates_k_alone_and_takes_the_decode_form():
    heads, lens, starts = (4, 2, 64), [1, 1], [3, 9]
    q, kn, vn, positions = rope_inputs(heads, 1, lens, starts)
    cache = make_cache(2, 2, 64, 16, False)
    want = copy_cache(cache)
    C.kv_append(cache["k_cache"], cache["v_cache"], kn[:, 0], vn[:, 0], np.array(starts, np.int32),
                rope_positions=positions[:, 0])  # decode form (B, H_kv, D), positions (B,), no q
    k_rot = kn.copy()
    C.rope(k_rot.reshape(-1, 2, 64), None, positions.reshape(-1), 10000.0)
    C.kv_append(want["k_cache"], want["v_cache"], k_rot, vn, np.array(starts, np.int32))
    assert_caches_equal(cache, want)


def test_append_with_rope_rejects_bad_arguments():
    k = np.full((2, 2, 8, 64), np.nan, np.float32)
    kn = np.zeros((2, 3, 2, 64), np.float32)
    pos = np.zeros((2, 3), np.int32)
    q = np.zeros((2, 3, 4, 64), np.float32)
    for fn in (C.kv_append, C.kv_append_reference):
        with pytest.raises(ValueError, match=r"argument 'rope_q' needs 'rope_positions'"):
            fn(k, k.copy(), kn, kn, [0, 0], rope_q=q)
        with pytest.raises(ValueError, match=r"argument 'rope_positions' must have shape \(B=2, S_new=3\) int32"):
            fn(k, k.copy(), kn, kn, [0, 0], rope_positions=np.zeros((2, 2), np.int32))
        with pytest.raises(ValueError, match=r"rope_positions"):
            fn(k, k.copy(), kn, kn, [0, 0], rope_positions=np.full((2, 3), -1, np.int64))
        with pytest.raises(ValueError, match=r"argument 'rope_theta' must be > 0"):
            fn(k, k.copy(), kn, kn, [0, 0], rope_positions=pos, rope_theta=0.0)
        with pytest.raises(ValueError, match=r"argument 'rope_q' has H=3 heads, not a multiple of H_kv=2"):
            fn(k, k.copy(), kn, kn, [0, 0], rope_positions=pos, rope_q=np.zeros((2, 3, 3, 64), np.float32))
        with pytest.raises(ValueError, match=r"argument 'rope_q' \(rotated in place\) shares memory with 'k_new'"):
            big = np.zeros((2, 3, 2, 64), np.float32)
            fn(k, k.copy(), big, kn, [0, 0], rope_positions=pos, rope_q=big.reshape(2, 3, 2, 64))
        ro = q.copy()
        ro.flags.writeable = False
        with pytest.raises(ValueError, match=r"argument 'rope_q' is read-only"):
            fn(k, k.copy(), kn, kn, [0, 0], rope_positions=pos, rope_q=ro)
        # A refused call leaves q and the cache as they were.
        q_before, k_before = q.copy(), k.copy()
        with pytest.raises(ValueError, match=r"needs 9 cache positions"):
            fn(k, k.copy(), kn, kn, [0, 6], rope_positions=pos, rope_q=q)
        np.testing.assert_array_equal(q, q_before)
        np.testing.assert_array_equal(k, k_before)
    kodd = np.zeros((1, 1, 4, 5), np.float32)
    with pytest.raises(ValueError, match=r"rotary embedding needs an even head_dim D, got D=5"):
        C.kv_append(kodd, kodd.copy(), np.zeros((1, 1, 1, 5), np.float32), np.zeros((1, 1, 1, 5), np.float32), [0],
                    rope_positions=np.zeros((1, 1), np.int32))


@pytest.mark.parametrize("seq_len, path", [(600, "dequantised"), (9000, "int8 loops")])
def test_int8_decode_on_both_cpu_paths(seq_len, path):
    """attention_cpu dequantises an int8 cache's span into fp32 scratch while that stays within 64 MiB (8 KV heads
    x 9000 keys x D 128 x 2 x 4 bytes is past it: the int8 loops); both the reference's attention over the same
    int8 cache to fp32 rounding."""
    out, ref = run_decode((16, 8, 128), (seq_len,), False, np.int8)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)


def test_the_numpy_int8_cache_rows_are_the_kernels_bit_for_bit():
    """backends/decoder_numpy.quantize_kv_rows (the numpy op set's int8 cache) against kv_append_reference's int8
    rows and scales, zero rows included."""
    from rsvlm_edge.backends.decoder_numpy import quantize_kv_rows

    rng = np.random.default_rng(21)
    kn = rng.standard_normal((2, 5, 2, 64)).astype(np.float32) * 3
    kn[1, 2, 0] = 0.0
    cache = make_cache(2, 2, 64, 8, False, np.int8)
    C.kv_append_reference(cache["k_cache"], cache["v_cache"], kn, kn, np.array([0, 0], np.int32),
                          k_scale=cache["k_scale"], v_scale=cache["v_scale"])
    q, scale = quantize_kv_rows(kn.transpose(0, 2, 1, 3))  # (B, K, S, D)
    np.testing.assert_array_equal(cache["k_cache"][:, :, :5], q)
    np.testing.assert_array_equal(cache["k_scale"][:, :, :5], scale)


class FakeCudaArray:
    """Exposes __cuda_array_interface__ without memory behind it: argument checks run before any
    kernel or device access, so mixed-device and dtype errors can be tested without a GPU."""

    def __init__(self, shape, typestr):
        self.__cuda_array_interface__ = dict(shape=tuple(shape), typestr=typestr, data=(0, False), strides=None,
                                             version=3)


def test_rejects_mixed_devices():
    k = np.zeros((1, 2, 16, 64), np.float32)
    with pytest.raises(ValueError, match=r"argument 'k_cache' is on cpu but 'q' is on cuda"):
        C.attention_decode(FakeCudaArray((1, 4, 64), "<f2"), k, k.copy(), [3])
    with pytest.raises(ValueError, match=r"argument 'seq_lens' is on cpu but 'q' is on cuda"):
        gk = FakeCudaArray((1, 2, 16, 64), "<f2")
        C.attention_decode(FakeCudaArray((1, 4, 64), "<f2"), gk, gk, np.array([3], np.int32))


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


@pytest.fixture
def torch_cuda(cuda_device):
    """torch, when a GPU is present and this build has the CUDA kernels (tests/conftest.py: cuda_device)."""
    return cuda_torch()


def _cuda_run(torch, dtype, heads, q_lens, past_lens, paged, int8, decode, num_splits=0, causal=True):
    """Run append + attention on the GPU with torch.cuda tensors (passed through DLPack) and
    return (gpu result as float32 numpy, the naive reference on the same fp16/bf16-rounded inputs and
    a host cache of the same kind, filled by kv_append_reference)."""
    h, h_kv, d = heads
    rng = np.random.default_rng(11)
    batch = len(q_lens)
    kv_lens = [p + n for p, n in zip(past_lens, q_lens)]
    s_q = max(q_lens)
    dev = "cuda"

    def rounded(shape):  # inputs representable in the activation dtype, as float32 numpy
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype).float().numpy()

    k_seqs = [rounded((n, h_kv, d)) for n in kv_lens]
    v_seqs = [rounded((n, h_kv, d)) for n in kv_lens]
    q = np.zeros((batch, s_q, h, d), np.float32)
    for b in range(batch):
        q[b, : q_lens[b]] = rounded((q_lens[b], h, d))
    host = make_cache(batch, h_kv, d, max(kv_lens) + 5, paged, np.int8 if int8 else np.float32)
    cache_dtype = torch.int8 if int8 else dtype
    k_cache = torch.full(host["k_cache"].shape, 0, dtype=cache_dtype, device=dev)
    v_cache = torch.full(host["k_cache"].shape, 0, dtype=cache_dtype, device=dev)
    if not int8:
        k_cache.fill_(float("nan"))
        v_cache.fill_(float("nan"))
    scales = {}
    if int8:
        scales = dict(k_scale=torch.full(host["k_scale"].shape, float("nan"), device=dev),
                      v_scale=torch.full(host["k_scale"].shape, float("nan"), device=dev))
    table = None if host["page_table"] is None else torch.from_numpy(host["page_table"]).to(dev)
    width = max(q_lens)
    for starts, ends in ((np.zeros(batch, int), np.array(past_lens)), (np.array(past_lens), np.array(kv_lens))):
        kn = np.zeros((batch, max(width, max(past_lens), 1), h_kv, d), np.float32)
        vn = np.zeros_like(kn)
        for b in range(batch):
            kn[b, : ends[b] - starts[b]] = k_seqs[b][starts[b] : ends[b]]
            vn[b, : ends[b] - starts[b]] = v_seqs[b][starts[b] : ends[b]]
        C.kv_append(k_cache, v_cache, torch.from_numpy(kn).to(dev, dtype), torch.from_numpy(vn).to(dev, dtype),
                    torch.tensor(starts, dtype=torch.int32, device=dev),
                    new_lens=torch.tensor(ends - starts, dtype=torch.int32, device=dev), page_table=table, **scales)
    lens = lambda x: torch.tensor(x, dtype=torch.int32, device=dev)  # noqa: E731
    if decode:
        q_t = torch.from_numpy(q[:, 0]).to(dev, dtype)
        out = torch.full_like(q_t, float("nan"))
        C.attention_decode(q_t, k_cache, v_cache, lens(kv_lens), out=out, page_table=table,
                           num_splits=num_splits, **scales)
    else:
        q_t = torch.from_numpy(q).to(dev, dtype)
        out = torch.full_like(q_t, float("nan"))
        C.attention_prefill(q_t, k_cache, v_cache, lens(q_lens), lens(kv_lens), out=out, page_table=table,
                            causal=causal, **scales)
    torch.cuda.synchronize()
    fill(host, k_seqs, v_seqs, [0] * batch, list(past_lens), C.kv_append_reference)
    fill(host, k_seqs, v_seqs, list(past_lens), kv_lens, C.kv_append_reference)
    cache_kw = dict(page_table=host["page_table"], k_scale=host.get("k_scale"), v_scale=host.get("v_scale"))
    if decode:
        ref = np.full((batch, h, d), np.nan, np.float32)
        C.attention_decode_reference(q[:, 0], host["k_cache"], host["v_cache"], np.array(kv_lens), out=ref, **cache_kw)
    else:
        ref = np.full(q.shape, np.nan, np.float32)
        C.attention_prefill_reference(q, host["k_cache"], host["v_cache"], np.array(q_lens), np.array(kv_lens),
                                      out=ref, causal=causal, **cache_kw)
    return out.float().cpu().numpy(), ref


@cuda_dtype_test
@pytest.mark.parametrize("heads", HEADS, ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_cuda_prefill_matches_reference(torch_cuda, dtype_name, heads, paged):
    dtype = getattr(torch_cuda, dtype_name)
    for q_lens, past in [((1297,), (0,)), ((7, 54, 1), (0, 13, 96))]:
        got, ref = _cuda_run(torch_cuda, dtype, heads, q_lens, past, paged, int8=False, decode=False)
        np.testing.assert_allclose(got, ref, atol=CUDA_TOL[dtype_name], rtol=CUDA_TOL[dtype_name])


@cuda_dtype_test
@pytest.mark.parametrize("heads", HEADS, ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
def test_cuda_bidirectional_prefill_matches_reference(torch_cuda, dtype_name, heads):
    """causal=False on the GPU (a ViT's attention): every query attends to all its sequence's keys."""
    dtype = getattr(torch_cuda, dtype_name)
    for q_lens, past in [((577,), (0,)), ((50, 17, 3), (0, 0, 9))]:
        got, ref = _cuda_run(torch_cuda, dtype, heads, q_lens, past, False, int8=False, decode=False, causal=False)
        np.testing.assert_allclose(got, ref, atol=CUDA_TOL[dtype_name], rtol=CUDA_TOL[dtype_name])


@cuda_dtype_test
@pytest.mark.parametrize("heads", HEADS, ids=lambda t: f"H{t[0]}-Hkv{t[1]}-D{t[2]}")
@pytest.mark.parametrize("num_splits", [0, 1, 7])
def test_cuda_decode_split_kv_matches_reference(torch_cuda, dtype_name, heads, num_splits):
    dtype = getattr(torch_cuda, dtype_name)
    seq_lens = (1, 8192, 577)
    got, ref = _cuda_run(torch_cuda, dtype, heads, (1, 1, 1), tuple(n - 1 for n in seq_lens), paged=True,
                         int8=False, decode=True, num_splits=num_splits)
    np.testing.assert_allclose(got, ref, atol=CUDA_TOL[dtype_name], rtol=CUDA_TOL[dtype_name])


@cuda_dtype_test
@pytest.mark.parametrize("decode", [False, True], ids=["prefill", "decode"])
def test_cuda_int8_cache_within_tolerance(torch_cuda, dtype_name, decode):
    dtype = getattr(torch_cuda, dtype_name)
    q_lens, past = ((1, 1, 1), (0, 96, 2047)) if decode else ((54, 7, 97), (0, 40, 11))
    got, ref = _cuda_run(torch_cuda, dtype, (8, 2, 128), q_lens, past, paged=False, int8=True, decode=decode)
    # The reference reads a host int8 cache quantised from the same rounded values.
    np.testing.assert_allclose(got, ref, atol=INT8_ATOL + CUDA_TOL[dtype_name], rtol=0)


@cuda_dtype_test
@pytest.mark.parametrize("int8", [False, True], ids=["cache-dtype", "int8"])
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_cuda_append_with_rope_matches_rope_then_append(torch_cuda, dtype_name, int8, paged):
    """One launch rotating q in place and storing rotated K rows: the same values as the rope kernel then
    kv_append on the GPU (the two share their arithmetic; compared within one rounding of the dtype), and as
    the reference on the same rounded inputs within the dtype's tolerance."""
    torch = torch_cuda
    dtype = getattr(torch, dtype_name)
    (h, h_kv, d), s_new, lens, starts = (8, 2, 64), 5, [5, 2, 0], [0, 7, 3]
    q, kn, vn, positions = rope_inputs((h, h_kv, d), s_new, lens, starts)
    q, kn, vn = (torch.from_numpy(a).to(dtype).float().numpy() for a in (q, kn, vn))  # representable inputs
    host = make_cache(3, h_kv, d, 16, paged, np.int8 if int8 else np.float32)
    dev = "cuda"

    def device_cache():
        cache_dtype = torch.int8 if int8 else dtype
        k = torch.zeros(host["k_cache"].shape, dtype=cache_dtype, device=dev)
        v = torch.zeros_like(k)
        extra = {}
        if int8:
            extra = dict(k_scale=torch.full(host["k_scale"].shape, float("nan"), device=dev),
                         v_scale=torch.full(host["k_scale"].shape, float("nan"), device=dev))
        else:
            k.fill_(float("nan"))
            v.fill_(float("nan"))
        return k, v, extra

    table = None if host["page_table"] is None else torch.from_numpy(host["page_table"]).to(dev)
    ints = lambda x: torch.tensor(np.asarray(x), dtype=torch.int32, device=dev)  # noqa: E731
    gpu = lambda a: torch.from_numpy(a).to(dev, dtype)  # noqa: E731
    kf, vf, sf = device_cache()
    q_fused = gpu(q)
    C.kv_append(kf, vf, gpu(kn), gpu(vn), ints(starts), new_lens=ints(lens), page_table=table,
                rope_positions=ints(positions), rope_q=q_fused, rope_theta=10000.0, **sf)
    ks, vs, ss = device_cache()
    q_split, k_split = gpu(q), gpu(kn)
    C.rope(q_split.view(-1, h, d), k_split.view(-1, h_kv, d), ints(positions.reshape(-1)), 10000.0)
    C.kv_append(ks, vs, k_split, gpu(vn), ints(starts), new_lens=ints(lens), page_table=table, **ss)
    torch.cuda.synchronize()
    ulp = CUDA_TOL[dtype_name]
    np.testing.assert_allclose(q_fused.float().cpu().numpy(), q_split.float().cpu().numpy(), rtol=ulp, atol=ulp)
    # The reference: rope_reference then kv_append_reference on the host (fp32), the same rounded inputs.
    q_ref, k_ref = q.copy(), kn.copy()
    C.rope_reference(q_ref.reshape(-1, h, d), k_ref.reshape(-1, h_kv, d), positions.reshape(-1), 10000.0)
    C.kv_append_reference(host["k_cache"], host["v_cache"], k_ref, vn, np.array(starts, np.int32),
                          new_lens=np.array(lens, np.int32), page_table=host["page_table"],
                          k_scale=host.get("k_scale"), v_scale=host.get("v_scale"))
    np.testing.assert_allclose(q_fused.float().cpu().numpy(), q_ref, rtol=CUDA_TOL[dtype_name], atol=CUDA_TOL[dtype_name])
    if int8:
        written = ~np.isnan(host["k_scale"])
        for name in ("k_scale", "v_scale"):
            np.testing.assert_allclose(sf[name].cpu().numpy()[written], host[name][written], rtol=2 * CUDA_TOL[dtype_name])
        kq = kf.cpu().numpy().astype(np.float32) * sf["k_scale"].cpu().numpy()[..., None]
        kq_ref = host["k_cache"].astype(np.float32) * host["k_scale"][..., None]
        np.testing.assert_allclose(kq[written], kq_ref[written], atol=0.05)
        # against rope then kv_append on the GPU: at most one quantisation step apart
        steps = np.abs(kf.cpu().numpy().astype(np.int32) - ks.cpu().numpy().astype(np.int32))
        assert steps[written].max() <= 1
    else:
        got = kf.float().cpu().numpy()
        written = ~np.isnan(host["k_cache"])
        assert (np.isnan(got) == ~written).all()  # the same rows written, nothing else
        np.testing.assert_allclose(got[written], host["k_cache"][written], rtol=CUDA_TOL[dtype_name],
                                   atol=CUDA_TOL[dtype_name])
        np.testing.assert_allclose(got[written], ks.float().cpu().numpy()[written], rtol=ulp, atol=ulp)
        np.testing.assert_array_equal(vf.float().cpu().numpy()[written], vs.float().cpu().numpy()[written])
