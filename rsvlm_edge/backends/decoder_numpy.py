"""The ``numpy`` decoder backend: the reference op set (fp32 numpy), and the op-set contract every
decoder backend follows.

The signatures are those of the native bindings, so a decoder backend is a namespace with these
functions (B = batch, T = tokens, H = query heads, K = KV heads, D = head dim, S = cache length):

Ops that return an array also take ``out=`` (same shape, float32, C-contiguous) and then write
there and return it, so a decode step can run on preallocated buffers (and be captured once in a
CUDA graph by a GPU backend).

* ``rms_norm(x[..., C], weight[C], eps) -> y``
* ``rope(q[..., H, D], k[..., K, D], positions[...], theta) -> None`` in place, rotate-half
  convention (transformers' LLaMA, rope_type "default")
* ``swiglu(gate, up) -> silu(gate) * up``
* ``linear(x[..., I], w[O, I], bias[O] | None, w_scale=None | [O]) -> y``: ``w`` dense, or int8
  with per-output-channel ``w_scale`` (weight-only INT8). Dense ``w`` is float32, or float16 when
  the op set's ``half_weights`` is True (native: converted to fp32 inside the kernel)
* ``qlinear(x[..., I], w, w_scale[O, G], bias[O] | None) -> y``: quantised weights (int8 ``w[O, I]``
  or packed int4 ``w[O, I/2]`` uint8, the formats of ``models/llava/quant.py``) times int8
  activations quantised per block of 128 inputs on the fly, exact integer block dots (W8A8 / W4A8;
  the definition is ``include/rsvlm_edge/qlinear.h``, this module's ``qlinear`` its numpy twin)
* ``kv_append(k_cache, v_cache, k_new[B, T, K, D], v_new, start_pos[B], new_lens=[B], k_scale=, v_scale=)``:
  caches are ``[B_cache, K, S, D]``; row t of sequence b goes to position start_pos[b] + t, t < new_lens[b].
  With ``k_scale``/``v_scale`` (``[B_cache, K, S]`` float32) the caches are int8: each row stored as
  round-half-even(x * 127 / max|x|) with its scale max|x| / 127 (``include/rsvlm_edge/kv_attention.h``), and the
  attention ops below take the same two arguments
* ``attention_prefill(q[B, T, H, D], k_cache, v_cache, q_lens[B], kv_lens[B]) -> [B, T, H, D]``:
  causal over the cache; query i of sequence b sits at kv_lens[b] - q_lens[b] + i
* ``attention_decode(q[B, H, D], k_cache, v_cache, seq_lens[B]) -> [B, H, D]``
  (GQA everywhere: query head h reads KV head h // (H / K)).
* ``top_p_sample(logits[B, V], uniforms[B] | None, temperature, top_p) -> ids[B]`` int64: the next tokens by
  the nucleus rule with the draws given (this module's ``top_p_sample`` is its definition; the native one is
  ``include/rsvlm_edge/top_p_sample.h``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .registry import BackendSpec, Probe, register

OP_NAMES = ("rms_norm", "rope", "swiglu", "linear", "qlinear", "kv_append", "attention_prefill", "attention_decode",
            "top_p_sample")
QACT_BLOCK = 128  # inputs per activation quantisation block (kQActBlock)


def _store(y: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return y
    out[...] = y
    return out


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6, out: np.ndarray | None = None) -> np.ndarray:
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    return _store((x / np.sqrt(var + np.float32(eps))) * weight, out)


def rope_tables(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape positions.shape + (head_dim / 2,), computed in fp32 like transformers."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
    freqs = positions.astype(np.float32)[..., None] * inv_freq
    return np.cos(freqs), np.sin(freqs)


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].copy(), x[..., half:].copy()
    x[..., :half] = x1 * cos - x2 * sin
    x[..., half:] = x2 * cos + x1 * sin


def rope(q: np.ndarray, k: np.ndarray | None, positions: np.ndarray, theta: float = 10000.0) -> None:
    cos, sin = rope_tables(positions, q.shape[-1], theta)
    cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads
    _rotate(q, cos, sin)
    if k is not None:
        _rotate(k, cos, sin)


def swiglu(gate: np.ndarray, up: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return _store(gate / (np.float32(1.0) + np.exp(-gate)) * up, out)


def linear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, w_scale: np.ndarray | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    if w_scale is None:
        y = x @ w.T
    else:  # weight-only INT8: the int8 matrix is widened per call, the scale applied per output
        y = (x @ w.T.astype(np.float32)) * w_scale
    return _store(y if bias is None else y + bias, out)


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of x (M, K) float32 -> (xq (M, K) int8, sx (M, blocks) float32): per block of 128 inputs
    sx = max|x| / 127 and xq = round-half-even(x * (127 / max|x|)) in [-127, 127], all in float32 as
    the C++ definition (``quantize_activations`` in kernels/qlinear/qlinear.cpp) computes them; an
    all-zero block gives sx = 0, a block with a non-finite value sx = NaN and xq = 0."""
    m, k = x.shape
    blocks = -(-k // QACT_BLOCK)
    xb = np.zeros((m, blocks * QACT_BLOCK), np.float32)
    xb[:, :k] = x
    xb = xb.reshape(m, blocks, QACT_BLOCK)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        amax = np.abs(xb).max(axis=2)
        finite = np.isfinite(xb).all(axis=2)
        inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), np.float32(0)).astype(np.float32)
        q = np.clip(np.rint(xb * inv[:, :, None]), -127, 127)
        q = np.where(finite[:, :, None], q, 0).astype(np.int8)
        sx = np.where(finite, amax / np.float32(127), np.float32(np.nan)).astype(np.float32)
    return q.reshape(m, -1)[:, :k], sx


def _weight_q(w: np.ndarray, k: int) -> np.ndarray:
    """The integer weights (O, I) of an int8 or packed int4 tensor."""
    if w.dtype == np.int8:
        return w
    q = np.empty((w.shape[0], k), np.int8)
    q[:, 0::2] = (w & 0x0F).astype(np.int8) - 8
    q[:, 1::2] = (w >> 4).astype(np.int8) - 8
    return q


def qlinear(x: np.ndarray, w: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
    lead, k = x.shape[:-1], x.shape[-1]
    xq, sx = quantize_activations(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, k))
    m, blocks = sx.shape
    o, groups = w_scale.shape
    pad = blocks * QACT_BLOCK - k
    xb = np.pad(xq, ((0, 0), (0, pad))).astype(np.float64).reshape(m, blocks, QACT_BLOCK).transpose(1, 0, 2)
    wb = np.pad(_weight_q(w, k), ((0, 0), (0, pad))).astype(np.float64).reshape(o, blocks, QACT_BLOCK).transpose(1, 2, 0)
    dots = xb @ wb  # (blocks, M, O): exact integer sums
    group = k // groups
    sw = w_scale[:, (np.arange(blocks) * QACT_BLOCK) // group].T.astype(np.float64)  # (blocks, O)
    with np.errstate(invalid="ignore"):
        y = (dots * sx.T.astype(np.float64)[:, :, None] * sw[:, None, :]).sum(axis=0)
    if bias is not None:
        y = y + bias
    return _store(y.astype(np.float32).reshape(*lead, o), out)


def quantize_kv_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (..., D) float32 -> (int8 rows, float32 scales (...)): the int8 KV cache's symmetric per-row format,
    in float32 as the C++ append computes it (scale = max|x| / 127, q = round-half-even(x * (127 / max|x|)))."""
    x = np.asarray(x, dtype=np.float32)
    amax = np.abs(x).max(axis=-1)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(x * inv[..., None]), -127, 127).astype(np.int8)
    return q, (amax / np.float32(127)).astype(np.float32)


def _cached(cache: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """A cache slice as float32: itself, or its int8 rows times their scales."""
    return cache if scale is None else cache.astype(np.float32) * scale[..., None]


def kv_append(
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    k_new: np.ndarray,
    v_new: np.ndarray,
    start_pos: np.ndarray,
    new_lens: np.ndarray | None = None,
    k_scale: np.ndarray | None = None,
    v_scale: np.ndarray | None = None,
) -> None:
    if k_new.ndim == 3:  # decode: (B, K, D)
        k_new, v_new = k_new[:, None], v_new[:, None]
    batch, tokens = k_new.shape[:2]
    lens = np.full(batch, tokens) if new_lens is None else np.asarray(new_lens)
    parts = [(k_cache, k_scale, k_new), (v_cache, v_scale, v_new)]
    for b in range(batch):
        s0, n = int(start_pos[b]), int(lens[b])
        for cache, scale, new in parts:
            rows = new[b, :n].transpose(1, 0, 2)  # (K, n, D)
            if scale is None:
                cache[b, :, s0 : s0 + n] = rows
            else:
                cache[b, :, s0 : s0 + n], scale[b, :, s0 : s0 + n] = quantize_kv_rows(rows)


def _softmax_masked(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    scores = np.where(valid, scores, np.float32(-np.inf))
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


def attention_prefill(
    q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, q_lens: np.ndarray, kv_lens: np.ndarray,
    k_scale: np.ndarray | None = None, v_scale: np.ndarray | None = None,
) -> np.ndarray:
    batch, tokens, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    q_lens, kv_lens = np.asarray(q_lens), np.asarray(kv_lens)
    span = int(kv_lens.max())
    keys = _cached(k_cache[:batch, :, :span], None if k_scale is None else k_scale[:batch, :, :span])[:, :, None]
    values = _cached(v_cache[:batch, :, :span], None if v_scale is None else v_scale[:batch, :, :span])[:, :, None]
    qg = q.transpose(0, 2, 1, 3).reshape(batch, kv_heads, heads // kv_heads, tokens, dim)
    scores = (qg @ keys.swapaxes(-1, -2)) * np.float32(1.0 / np.sqrt(dim))  # B,K,G,T,S
    qpos = (kv_lens - q_lens)[:, None] + np.arange(tokens)[None, :]  # B,T absolute query positions
    kpos = np.arange(span)
    valid = (kpos[None, None, :] <= qpos[:, :, None]) & (kpos[None, None, :] < kv_lens[:, None, None])
    probs = _softmax_masked(scores, valid[:, None, None])
    out = (probs @ values).reshape(batch, heads, tokens, dim).transpose(0, 2, 1, 3)
    out[np.arange(tokens)[None, :] >= q_lens[:, None]] = 0.0  # padded query rows, as the kernel
    return out


def attention_decode(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, seq_lens: np.ndarray,
                     out: np.ndarray | None = None, k_scale: np.ndarray | None = None,
                     v_scale: np.ndarray | None = None) -> np.ndarray:
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    seq_lens = np.asarray(seq_lens)
    span = int(seq_lens.max())
    keys = _cached(k_cache[:batch, :, :span], None if k_scale is None else k_scale[:batch, :, :span])  # B,K,S,D
    values = _cached(v_cache[:batch, :, :span], None if v_scale is None else v_scale[:batch, :, :span])
    qg = q.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = (qg @ keys.swapaxes(-1, -2)) * np.float32(1.0 / np.sqrt(dim))  # B,K,G,S
    valid = np.arange(span)[None, :] < seq_lens[:, None]  # B,S
    probs = _softmax_masked(scores, valid[:, None, None])
    return _store((probs @ values).reshape(batch, heads, dim), out)


def top_p_sample(logits: np.ndarray, uniforms: np.ndarray | None, temperature: float, top_p: float) -> np.ndarray:
    """The sampling rule with the draws given (``uniforms`` (B,) in [0, 1)): softmax(logits / T) in fp64, the
    tokens by probability, descending (ties by index), the smallest prefix whose mass reaches ``top_p``, then
    the first of them whose share of the nucleus' mass, summed in that order, exceeds the row's draw (numpy's
    ``Generator.choice``). ``temperature <= 0``, or a softmax that is not finite (logits / T overflowed): the
    argmax."""
    if temperature <= 0.0:
        return np.argmax(logits, axis=-1)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        z = logits.astype(np.float64) / temperature
        z -= z.max(axis=-1, keepdims=True)
        probs = np.exp(z)
        probs /= probs.sum(axis=-1, keepdims=True)
    out = np.empty(logits.shape[0], dtype=np.int64)
    for b in range(logits.shape[0]):
        if not np.isfinite(probs[b]).all():
            out[b] = int(np.argmax(logits[b]))
            continue
        order = np.argsort(-probs[b], kind="stable")
        sorted_p = probs[b, order]
        keep = int(np.searchsorted(np.cumsum(sorted_p), top_p) + 1) if top_p < 1.0 else len(order)
        keep = min(keep, len(order))
        cdf = np.cumsum(sorted_p[:keep] / sorted_p[:keep].sum())
        cdf /= cdf[-1]
        out[b] = order[min(int(np.searchsorted(cdf, uniforms[b], side="right")), keep - 1)]
    return out


# half_weights: linear takes float16 dense weights as they are (numpy could too, but x @ w.T on
# float16 is slow, so the decoder widens them to float32 at load for the numpy ops).
NUMPY = SimpleNamespace(name="numpy", half_weights=False, **{n: globals()[n] for n in OP_NAMES})

register(BackendSpec(
    name="numpy", kind="decoder", rank=100, device="cpu",
    summary="reference decoder ops in numpy (fp32; slow, exact)",
    probe=lambda: Probe(True, versions=f"numpy {np.__version__}", device="cpu"),
    factory=lambda: NUMPY,
))
