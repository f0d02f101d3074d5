"""The decoder's op set, numpy implementation (fp32 compute).

Every op the LLaMA decoder uses goes through this small surface so that the native kernels
(``rsvlm_edge._C``: KV-cache attention, RMSNorm, RoPE, SwiGLU, INT8 GEMV) can replace them one by
one. Shapes (B = batch, T = tokens, H = query heads, K = KV heads, D = head dim, S = cache length):

* ``rmsnorm(x[..., C], w[C], eps)``
* ``rope(x[B,T,H,D], cos[B,T,D/2], sin[B,T,D/2])`` (rotate-half convention, as transformers' LLaMA)
* ``linear(x[..., I], w_t[I,O], bias[O] | None)``; ``linear_w8(x, q_t[I,O] int8, scale[O], bias)``
* ``swiglu(gate, up) = silu(gate) * up``
* ``kv_append(cache[Bmax,K,S,D], new[B,T,K,D], start[B])`` writes ``new`` at positions ``start..``
* ``attention_prefill(q[B,T,H,D], k[B,T,K,D], v[B,T,K,D], lengths[B]) -> [B,T,H*D]`` causal, keys
  at or past ``lengths[b]`` are padding
* ``attention_decode(q[B,H,D], k_cache, v_cache, lengths[B]) -> [B,H*D]`` one query per sequence
  over the first ``lengths[b]`` cached positions (GQA: query head h reads KV head h // (H/K)).
"""

from __future__ import annotations

import numpy as np

NAME = "numpy"


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    return (x / np.sqrt(var + np.float32(eps))) * w


def rope_tables(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape positions.shape + (head_dim / 2,), computed in fp32 like transformers."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
    freqs = positions.astype(np.float32)[..., None] * inv_freq
    return np.cos(freqs), np.sin(freqs)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def linear(x: np.ndarray, w_t: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    y = x @ w_t
    return y if bias is None else y + bias


def linear_w8(x: np.ndarray, q_t: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    # Weight-only INT8: y = (x @ q) * scale per output channel; the int8 matrix is widened per call.
    y = (x @ q_t.astype(np.float32)) * scale
    return y if bias is None else y + bias


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    return gate / (np.float32(1.0) + np.exp(-gate)) * up


def kv_append(cache: np.ndarray, new: np.ndarray, start: np.ndarray) -> None:
    batch, tokens = new.shape[:2]
    if tokens == 1:
        cache[np.arange(batch), :, start] = new[:, 0]
        return
    if np.all(start == start[0]):
        s0 = int(start[0])
        cache[:batch, :, s0 : s0 + tokens] = new.transpose(0, 2, 1, 3)
        return
    for b in range(batch):
        s0 = int(start[b])
        cache[b, :, s0 : s0 + tokens] = new[b].transpose(1, 0, 2)


def _softmax_masked(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    scores = np.where(valid, scores, np.float32(-np.inf))
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


def attention_prefill(q: np.ndarray, k: np.ndarray, v: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    batch, tokens, heads, dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    qg = q.transpose(0, 2, 1, 3).reshape(batch, kv_heads, group, tokens, dim)
    kt = k.transpose(0, 2, 3, 1)[:, :, None]  # B,K,1,D,T
    vt = v.transpose(0, 2, 1, 3)[:, :, None]  # B,K,1,T,D
    scores = (qg @ kt) * np.float32(1.0 / np.sqrt(dim))  # B,K,G,T,T
    pos = np.arange(tokens)
    valid = (pos[None, :] <= pos[:, None])[None] & (pos[None, None, :] < lengths[:, None, None])  # B,T,T
    probs = _softmax_masked(scores, valid[:, None, None])
    out = probs @ vt  # B,K,G,T,D
    return out.reshape(batch, heads, tokens, dim).transpose(0, 2, 1, 3).reshape(batch, tokens, heads * dim)


def attention_decode(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    span = int(lengths.max())
    keys = k_cache[:batch, :, :span]  # B,K,S,D
    values = v_cache[:batch, :, :span]
    qg = q.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = (qg @ keys.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(dim))  # B,K,G,S
    valid = np.arange(span)[None, :] < lengths[:, None]  # B,S
    probs = _softmax_masked(scores, valid[:, None, None])
    return (probs @ values).reshape(batch, heads * dim)
