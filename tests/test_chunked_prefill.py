"""Prefill in chunks (models/llava/decoder.py ``prefill``, ``chunk_rows``) equals one pass: the same
last-position logits, the same KV cache and the same decode steps after it, for ragged batches whose
prompts end in different chunks, on every CPU decoder backend and weight format."""

from __future__ import annotations

import numpy as np
import pytest
from decoder_fixtures import small_tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from util import cpu_decoder_ops

from rsvlm_edge.models.llava.config import DecoderConfig
from rsvlm_edge.models.llava.decoder import LlamaDecoder, prefill, prefill_chunk_tokens

CFG = DecoderConfig(model_type="llama", vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
                    max_position_embeddings=128, attention_bias=True, bos_token_id=1, eos_token_id=2)


def run(backend: str, fmt: str, lengths: list[int], chunk_rows: int, steps: int = 3):
    dec = LlamaDecoder(CFG, small_tensors(CFG, fmt, seed=3), max_batch=len(lengths), max_seq=max(lengths) + steps + 1, ops=cpu_decoder_ops(backend))
    rng = np.random.default_rng(sum(lengths))
    ids = rng.integers(3, CFG.vocab_size, (len(lengths), max(lengths)))
    embeds = dec.embed_tokens(ids)
    for b, n in enumerate(lengths):
        embeds[b, n:] = 0.0  # padding rows must not matter
    logits = [prefill(dec.config, dec.weights, dec.ops, dec.cache, embeds, np.array(lengths), chunk_rows=chunk_rows)]
    cache = [(dec.cache.k[:, b, :, :n].copy(), dec.cache.v[:, b, :, :n].copy()) for b, n in enumerate(lengths)]
    for _ in range(steps):
        logits.append(dec.decode(logits[-1].argmax(-1)))
    return np.stack(logits), cache


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("fmt", ["fp16", "w8", "w4"])
@pytest.mark.parametrize("chunk_rows", [3, 12, 40], ids=lambda r: f"rows{r}")
def test_chunks_equal_one_pass(backend, fmt, chunk_rows):
    lengths = [37, 5, 20]  # with 3 sequences: chunks of 1, 4 and 13 positions
    whole, whole_cache = run(backend, fmt, lengths, chunk_rows=10_000)
    chunked, chunked_cache = run(backend, fmt, lengths, chunk_rows=chunk_rows)
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-4 * float(np.abs(whole).max()))
    # atol: fp16 native linears of 32 rows and more may run as bf16x3 on AMX (each product within 2^-15 of x w),
    # short chunks as exact fp32 products: the two agree to ~1e-5 of the values' scale, a chunking error is O(1)
    for (k1, v1), (k2, v2) in zip(chunked_cache, whole_cache):
        np.testing.assert_allclose(k1, k2, rtol=1e-4, atol=5e-5 * float(np.abs(k2).max()))
        np.testing.assert_allclose(v1, v2, rtol=1e-4, atol=5e-5 * float(np.abs(v2).max()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(1, 24), min_size=1, max_size=4), chunk_rows=st.integers(1, 30))
def test_any_ragged_batch_and_chunk_size(lengths, chunk_rows):
    whole, _ = run("numpy", "fp16", lengths, chunk_rows=10_000, steps=1)
    chunked, _ = run("numpy", "fp16", lengths, chunk_rows=chunk_rows, steps=1)
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-4 * float(np.abs(whole).max()))


def test_chunk_sizes():
    assert prefill_chunk_tokens(1) == 512 and prefill_chunk_tokens(8) == 64 and prefill_chunk_tokens(3, 12) == 4
    assert prefill_chunk_tokens(1000) == 1 and prefill_chunk_tokens(0) == 512
