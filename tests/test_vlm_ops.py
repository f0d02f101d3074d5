"""The decoder's op sets (numpy reference, and the native kernels when built) against torch /
transformers references, and KV-cache consistency of the decoder."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_testing import tiny_decoder_config, tiny_decoder_tensors

from rsvlm_edge.backends import decoder_numpy as ops
from rsvlm_edge.backends import registry

torch = pytest.importorskip("torch")


def _native_or_none():
    try:
        from rsvlm_edge.backends.decoder_native import native_ops

        return native_ops()
    except ImportError:
        return None


NATIVE = _native_or_none()
OP_SETS = [pytest.param(ops.NUMPY, id="numpy"),
           pytest.param(NATIVE, id="native", marks=pytest.mark.skipif(NATIVE is None, reason="_C has no decoder kernels"))]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _torch_attention(q, k, v, causal_offset=0):
    """softmax(q k^T / sqrt(d)) v for one sequence; q (T,H,D), k/v (S,K,D), GQA by repeat."""
    heads, kv = q.shape[1], k.shape[1]
    qt = torch.from_numpy(np.ascontiguousarray(q)).transpose(0, 1)[None]
    kt = torch.from_numpy(np.ascontiguousarray(k)).transpose(0, 1).repeat_interleave(heads // kv, dim=0)[None]
    vt = torch.from_numpy(np.ascontiguousarray(v)).transpose(0, 1).repeat_interleave(heads // kv, dim=0)[None]
    t, s = q.shape[0], k.shape[0]
    mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=causal_offset)
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
    return out[0].transpose(0, 1).numpy()


@pytest.mark.parametrize("op", OP_SETS)
@pytest.mark.parametrize("lengths", [[1], [7, 13, 1], [54, 97]])
def test_append_and_prefill_attention_match_torch_per_sequence(op, lengths):
    rng = _rng(len(lengths))
    b, t, h, kv, d = len(lengths), max(lengths), 8, 2, 16
    q = rng.standard_normal((b, t, h, d), dtype=np.float32)
    k = rng.standard_normal((b, t, kv, d), dtype=np.float32)
    v = rng.standard_normal((b, t, kv, d), dtype=np.float32)
    k_cache = np.full((b + 1, kv, 128, d), 1e4, dtype=np.float32)  # stale garbage must not be read
    v_cache = np.full((b + 1, kv, 128, d), -1e4, dtype=np.float32)
    lens = np.array(lengths, dtype=np.int32)
    op.kv_append(k_cache, v_cache, k, v, np.zeros(b, np.int32), new_lens=lens)
    out = op.attention_prefill(q, k_cache, v_cache, lens, lens)
    assert out.shape == (b, t, h, d)
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(k_cache[i, :, :n], k[i, :n].transpose(1, 0, 2))
        assert (k_cache[i, :, n:] == 1e4).all()  # rows past new_lens untouched
        ref = _torch_attention(q[i, :n], k[i, :n], v[i, :n])
        np.testing.assert_allclose(out[i, :n], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", OP_SETS)
def test_attention_decode_reads_only_each_sequences_cache_prefix(op):
    rng = _rng(1)
    b, h, kv, d, s = 3, 4, 2, 8, 40
    lengths = np.array([1, 17, 40], dtype=np.int32)
    k_cache = np.full((5, kv, s, d), 1e4, dtype=np.float32)
    v_cache = np.full((5, kv, s, d), -1e4, dtype=np.float32)
    k_new = rng.standard_normal((b, kv, d), dtype=np.float32)
    v_new = rng.standard_normal((b, kv, d), dtype=np.float32)
    for i, n in enumerate(lengths):
        k_cache[i, :, : n - 1] = rng.standard_normal((kv, n - 1, d))
        v_cache[i, :, : n - 1] = rng.standard_normal((kv, n - 1, d))
    op.kv_append(k_cache, v_cache, k_new, v_new, lengths - 1)
    q = rng.standard_normal((b, h, d), dtype=np.float32)
    out = op.attention_decode(q, k_cache, v_cache, lengths)
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(k_cache[i, :, n - 1], k_new[i])
        ref = _torch_attention(q[i][None], k_cache[i, :, :n].transpose(1, 0, 2), v_cache[i, :, :n].transpose(1, 0, 2),
                               causal_offset=n)
        np.testing.assert_allclose(out[i], ref[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", OP_SETS)
def test_rope_and_rms_norm_match_transformers_llama(op):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=10000.0, rms_norm_eps=1e-6)
    rng = _rng(2)
    q = rng.standard_normal((2, 9, 4, 16), dtype=np.float32)
    k = rng.standard_normal((2, 9, 2, 16), dtype=np.float32)
    positions = np.stack([np.arange(9), np.arange(100, 109)]).astype(np.int32)
    cos, sin = LlamaRotaryEmbedding(cfg)(torch.from_numpy(q), torch.from_numpy(positions.astype(np.int64)))
    ref_q, ref_k = apply_rotary_pos_emb(torch.from_numpy(q).transpose(1, 2), torch.from_numpy(k).transpose(1, 2), cos, sin)
    op.rope(q, k, positions, 10000.0)
    np.testing.assert_allclose(q, ref_q.transpose(1, 2).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(k, ref_k.transpose(1, 2).numpy(), rtol=1e-5, atol=1e-5)

    norm = LlamaRMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(rng.standard_normal(64, dtype=np.float32)))
        h = rng.standard_normal((3, 5, 64), dtype=np.float32)
        ref = norm(torch.from_numpy(h)).numpy()
    np.testing.assert_allclose(op.rms_norm(h, norm.weight.detach().numpy(), 1e-6), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", OP_SETS)
def test_linear_dense_w8_and_swiglu(op):
    from rsvlm_edge.models.llava.quant import quantize_w8

    rng = _rng(3)
    w = rng.standard_normal((48, 32), dtype=np.float32)
    bias = rng.standard_normal(48, dtype=np.float32)
    x = rng.standard_normal((2, 5, 32), dtype=np.float32)
    np.testing.assert_allclose(op.linear(x, w, bias), x @ w.T + bias, rtol=1e-5, atol=1e-5)
    q, scale = quantize_w8(w)
    assert np.abs(q.astype(np.float32) * scale[:, None] - w).max() <= scale.max() / 2 + 1e-6
    np.testing.assert_allclose(op.linear(x, q, None, w_scale=scale), x @ (q.astype(np.float32) * scale[:, None]).T,
                               rtol=1e-5, atol=1e-5)
    g, u = rng.standard_normal((2, 3, 7), dtype=np.float32)
    ref = torch.nn.functional.silu(torch.from_numpy(g)) * torch.from_numpy(u)
    np.testing.assert_allclose(op.swiglu(g, u), ref.numpy(), rtol=1e-6, atol=1e-6)


def _random_decoder_weights(rng):
    return tiny_decoder_tensors(
        lambda name, shape: rng.standard_normal(shape, dtype=np.float32) * (1.0 if name == "embed_tokens" else 0.2),
        bias=lambda n: rng.standard_normal(n, dtype=np.float32) * 0.1)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("native", marks=pytest.mark.skipif(NATIVE is None, reason="no kernels"))])
def test_decoder_cache_decode_equals_full_prefill(backend):
    """Prefill(prefix) + decode steps must give the logits of a prefill over the whole sequence,
    with sequences of different lengths padded in one batch."""
    from rsvlm_edge.models.llava.decoder import LlamaDecoder

    cfg = tiny_decoder_config(attention_bias=True)
    rng = _rng(4)
    weights = _random_decoder_weights(rng)
    dec = LlamaDecoder(cfg, weights, max_batch=2, max_seq=32, backend=backend)
    assert dec.ops.name == backend
    seqs = [rng.integers(0, 50, 11), rng.integers(0, 50, 6)]
    prompt_lens = np.array([7, 2])
    embeds = np.zeros((2, 7, 32), np.float32)
    for b in range(2):
        embeds[b, : prompt_lens[b]] = dec.embed_tokens(seqs[b][: prompt_lens[b]])
    step_logits = [dec.prefill(embeds, prompt_lens)]
    for t in range(4):
        step_logits.append(dec.decode(np.array([seqs[0][7 + t], seqs[1][2 + t]])))
    reference = LlamaDecoder(cfg, weights, max_batch=1, max_seq=32, backend="numpy")
    for b in range(2):
        for t in range(5):
            n = prompt_lens[b] + t
            ref = reference.prefill(reference.embed_tokens(seqs[b][:n])[None], np.array([n]))
            np.testing.assert_allclose(step_logits[t][b], ref[0], rtol=1e-4, atol=1e-4)


def test_native_backend_request_without_kernels_is_a_clear_error(monkeypatch):
    from rsvlm_edge.backends.registry import Probe
    from rsvlm_edge.errors import BackendError

    spec = registry._REGISTRY["native"]
    monkeypatch.setitem(registry._REGISTRY, "native", type(spec)(**{**spec.__dict__, "probe": lambda: Probe(
        False, "this build of rsvlm_edge._C lacks rms_norm")}))
    assert registry.open_decoder("auto") is ops.NUMPY
    with pytest.raises(BackendError, match="lacks rms_norm"):
        registry.open_decoder("native")


def test_w4_packing_and_group_quantisation():
    from rsvlm_edge.models.llava.quant import dequantize_w4, quantize_w4

    w = np.array([[8.0, -7.0, 0.0, 4.0] * 64], dtype=np.float32)  # one row, 256 inputs: 2 groups of 128
    packed, scale = quantize_w4(w)
    assert packed.shape == (1, 128) and scale.shape == (1, 2)
    np.testing.assert_array_equal(scale, [[-1.0, -1.0]])  # the extreme 8 is level -8: scale 8 / -8
    assert packed[0, 0] == (-8 + 8) | ((7 + 8) << 4)  # even input in the low nibble; -7 / -1 = level 7
    np.testing.assert_array_equal(dequantize_w4(packed, scale), w)
    rng = _rng(5)
    w = rng.standard_normal((40, 384), dtype=np.float32)
    packed, scale = quantize_w4(w)
    err = np.abs(dequantize_w4(packed, scale) - w).reshape(40, 3, 128)
    step = np.abs(scale)[:, :, None]
    inside = np.abs(w.reshape(40, 3, 128)) <= 7.5 * step  # beyond level +7 on the extreme's other side: clipped
    assert (err[inside] <= np.broadcast_to(step / 2 + 1e-6, err.shape)[inside]).all() and (err <= step + 1e-6).all()


@pytest.mark.skipif(NATIVE is None, reason="_C has no decoder kernels")
def test_fp16_prefill_gemm_choice(monkeypatch):
    """RSVLM_EDGE_FP16_GEMM: bf16x3 (default; on AMX CPUs fp16 linears of 32 rows and more run as three bf16
    products) or fp32; the two prefills agree to the bf16x3 error bound and pick the same tokens; a wrong
    value is a BackendError naming the variable and its values."""
    from rsvlm_edge.backends.decoder_native import native_ops
    from rsvlm_edge.errors import BackendError
    from rsvlm_edge.models.llava.decoder import LlamaDecoder

    cfg = tiny_decoder_config()
    rng = _rng(8)
    tensors = {k: v.astype(np.float16) if v.ndim == 2 else v for k, v in _random_decoder_weights(rng).items()}
    prompt = rng.integers(0, 50, (2, 40))  # 80 rows of x per linear: the AMX GEMM where the CPU has it
    logits = {}
    for value in ("bf16x3", "fp32"):
        monkeypatch.setenv("RSVLM_EDGE_FP16_GEMM", value)
        dec = LlamaDecoder(cfg, tensors, max_batch=2, max_seq=48, backend="native")
        embeds = np.stack([dec.embed_tokens(p) for p in prompt])
        logits[value] = dec.prefill(embeds, np.array([40, 40]))
    np.testing.assert_allclose(logits["bf16x3"], logits["fp32"], rtol=1e-3, atol=1e-3 * np.abs(logits["fp32"]).max())
    np.testing.assert_array_equal(logits["bf16x3"].argmax(-1), logits["fp32"].argmax(-1))
    monkeypatch.setenv("RSVLM_EDGE_FP16_GEMM", "fast")
    with pytest.raises(BackendError, match=r"RSVLM_EDGE_FP16_GEMM='fast' is not one of bf16x3, fp32") as e:
        native_ops()
    assert "fp32" in e.value.fix
