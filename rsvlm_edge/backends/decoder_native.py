"""The ``native`` decoder backend: the C++ kernels of ``rsvlm_edge._C`` on the CPU, as an op set
with the contract of ``decoder_numpy.py`` (the kernels take 2-D activations, so leading dims are
flattened here; ``out=`` buffers are passed through to the kernels)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from ..bundle.safetensors_mmap import release_pages
from .decoder_numpy import OP_NAMES
from .host_memory import HugePageArena
from .registry import BackendSpec, Probe, probe_native_ops, register


def _ext() -> Any:
    from ..native import _c

    return _c()


def _flat(out: np.ndarray | None, cols: int) -> np.ndarray | None:
    return None if out is None else out.reshape(-1, cols)


def native_ops() -> SimpleNamespace:
    """The native kernels as an op set (raises ImportError when the extension is not built). fp16 linears of 32
    rows and more (prefill) may run as three bf16 products on AMX tiles (``native.fp16_gemm_bf16x3``)."""
    from ..native import fp16_gemm_bf16x3, weight_memory_copy

    _C = _ext()
    bf16x3 = fp16_gemm_bf16x3()
    copy_weights = weight_memory_copy()

    def rms_norm(x, weight, eps=1e-6, out=None):
        x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
        y = _C.rms_norm(x2, weight, eps, out=_flat(out, x.shape[-1]))
        return out if out is not None else y.reshape(x.shape)

    def rope(q, k, positions, theta=10000.0):
        qf = np.ascontiguousarray(q)
        kf = None if k is None else np.ascontiguousarray(k)
        _C.rope(qf.reshape(-1, *q.shape[-2:]), None if kf is None else kf.reshape(-1, *k.shape[-2:]),
                np.ascontiguousarray(positions, dtype=np.int64).reshape(-1), theta)
        if qf is not q:  # the kernel rotated a contiguous copy: write it back
            q[...] = qf
        if k is not None and kf is not k:
            k[...] = kf

    def swiglu(gate, up, out=None):
        g2 = np.ascontiguousarray(gate).reshape(-1, gate.shape[-1])
        y = _C.swiglu(g2, np.ascontiguousarray(up).reshape(g2.shape), out=_flat(out, gate.shape[-1]))
        return out if out is not None else y.reshape(gate.shape)

    def linear(x, w, bias=None, w_scale=None, out=None):
        n = w.shape[-2]
        x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
        if w.ndim == 3:  # column blocks (NativeWeights.linear_weight): one call per block, summed
            ks = w.shape[2]
            y = _C.linear(np.ascontiguousarray(x2[:, :ks]), w[0], bias, out=_flat(out, n), bf16x3=bf16x3)
            for s in range(1, w.shape[0]):
                y += _C.linear(np.ascontiguousarray(x2[:, s * ks:(s + 1) * ks]), w[s], bf16x3=bf16x3)
        else:
            y = _C.linear(x2, w, bias, w_scale=w_scale, out=_flat(out, n), bf16x3=bf16x3)
        return out if out is not None else y.reshape(*x.shape[:-1], n)

    def qlinear(x, w, w_scale, bias=None, out=None):
        y = _C.qlinear(np.ascontiguousarray(x).reshape(-1, x.shape[-1]), w, w_scale, bias,
                       out=_flat(out, w.shape[0]))
        return out if out is not None else y.reshape(*x.shape[:-1], w.shape[0])

    def kv_append(k_cache, v_cache, k_new, v_new, start_pos, new_lens=None, k_scale=None, v_scale=None):
        _C.kv_append(k_cache, v_cache, np.ascontiguousarray(k_new), np.ascontiguousarray(v_new),
                     np.ascontiguousarray(start_pos, dtype=np.int64),
                     new_lens=None if new_lens is None else np.ascontiguousarray(new_lens, dtype=np.int64),
                     k_scale=k_scale, v_scale=v_scale)

    def attention_prefill(q, k_cache, v_cache, q_lens, kv_lens, k_scale=None, v_scale=None):
        return _C.attention_prefill(np.ascontiguousarray(q), k_cache, v_cache,
                                    np.ascontiguousarray(q_lens, dtype=np.int64),
                                    np.ascontiguousarray(kv_lens, dtype=np.int64), k_scale=k_scale, v_scale=v_scale)

    def attention_decode(q, k_cache, v_cache, seq_lens, out=None, k_scale=None, v_scale=None):
        return _C.attention_decode(np.ascontiguousarray(q), k_cache, v_cache,
                                   np.ascontiguousarray(seq_lens, dtype=np.int64), out=out, k_scale=k_scale,
                                   v_scale=v_scale)

    below_one = np.nextafter(np.float32(1), np.float32(0))

    def top_p_sample(logits, uniforms, temperature, top_p):
        # float32 draws for the kernel: a float64 draw just under 1 would round up to 1.0
        u = None if uniforms is None else np.minimum(np.asarray(uniforms, dtype=np.float32), below_one)
        return _C.top_p_sample(np.ascontiguousarray(logits, dtype=np.float32), u, float(temperature), float(top_p))

    ops = dict(rms_norm=rms_norm, rope=rope, swiglu=swiglu, linear=linear, qlinear=qlinear, kv_append=kv_append,
               attention_prefill=attention_prefill, attention_decode=attention_decode, top_p_sample=top_p_sample)
    assert set(ops) == set(OP_NAMES)
    return SimpleNamespace(name="native", half_weights=True, weight_placement=lambda: NativeWeights(copy_weights),
                           whole_decode_step=lambda config, weights, cache: whole_decode_step(config, weights, cache,
                                                                                              bf16x3),
                           **ops)


def whole_decode_step(config: Any, weights: Any, cache: Any, bf16x3: bool) -> Any:
    """``_C.CpuDecodeStep`` over ``weights`` (decoder.py's DecoderWeights, placed by ``NativeWeights``) and
    ``cache`` (its KVCache): decoder.py's ``decode_step`` over this op set in one C++ call (the same results;
    ``decode_step(..., whole_step=)`` runs it). None when ``RSVLM_EDGE_DECODE_STEP=ops``."""
    from ..native import decode_step_whole

    if not decode_step_whole():
        return None

    def lin(layer: Any) -> dict | None:
        return None if layer is None else {"w": layer.w, "scale": layer.scale, "bias": layer.bias}

    layers = []
    for i, layer in enumerate(weights.layers):
        d = dict(input_norm=layer.input_norm, post_norm=layer.post_norm, o=lin(layer.o), down=lin(layer.down),
                 k_cache=cache.k[i], v_cache=cache.v[i], **cache.scales(i))
        if layer.qkv is not None:
            d.update(qkv=lin(layer.qkv))
        else:
            d.update(q=lin(layer.q), k=lin(layer.k), v=lin(layer.v))
        if layer.gate_up is not None:
            d.update(gate_up=lin(layer.gate_up))
        else:
            d.update(gate=lin(layer.gate), up=lin(layer.up))
        layers.append(d)
    shape = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                 intermediate_size=config.intermediate_size, num_layers=config.num_layers, num_heads=config.num_heads,
                 num_kv_heads=config.num_kv_heads, head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps,
                 rope_theta=config.rope_theta)
    try:
        return _ext().CpuDecodeStep(shape, cache.max_batch, layers, weights.norm, lin(weights.lm_head), bf16x3=bf16x3)
    except (ValueError, MemoryError) as e:  # weights the op-by-op step would take (checked above) but this one refuses
        from ..errors import BackendError
        from ..native import DECODE_STEP_ENV

        raise BackendError(f"the native decode step could not be set up: {e}",
                           f"set {DECODE_STEP_ENV}=ops to run the decoder op by op") from None


class NativeWeights:
    """Where one decoder's weights live for the native kernels (the op set's ``weight_placement`` makes one
    per weight set): wide float linear weights as column blocks (``column_blocks``); with ``copy``
    (``RSVLM_EDGE_WEIGHT_MEMORY``, default) every linear weight and scale copied out of the bundle's file map
    into a ``HugePageArena`` (its mapped pages released), else the views as they are."""

    def __init__(self, copy: bool) -> None:
        self.arena = HugePageArena() if copy else None

    def linear_weight(self, w: np.ndarray) -> np.ndarray:
        blocks = column_blocks(w, self.arena.empty if self.arena is not None else np.empty)
        if blocks is not w or self.arena is None:
            return blocks
        return self.arena.copy(w)

    def array(self, a: np.ndarray) -> np.ndarray:
        return a if self.arena is None else self.arena.copy(a)

    def fused(self, arrays: list[np.ndarray]) -> np.ndarray | None:
        """``arrays`` (q / k / v, or gate / up: weights or scales) as one read-only arena array, rows in order, their
        mapped pages released; None when weights stay mapped or would be column blocks (float, K > MAX_BLOCK_INPUTS).
        One GEMV over q, k and v instead of three: the k / v projections alone stream at about 19 GB/s (w8) and
        9 GB/s (w4), too short for the thread pool and the prefetchers to get going."""
        first = arrays[0]
        blocked = first.dtype in (np.float16, np.float32) and first.shape[1] > MAX_BLOCK_INPUTS  # see column_blocks
        if self.arena is None or first.ndim != 2 or blocked:
            return None
        return self.arena.concat(arrays)


# A float weight row is dotted with the whole fp32 input row x, which the GEMV reads once per weight row: past
# about 12 KiB of x (plus the row of weights streaming past it) x no longer stays in the 32 KiB L1 and the
# weight stream slows down. Measured on 2 Zen 4 cores, fp16 GEMVs over 22 matrices of 23 MB at batch 1
# (GB/s of weights): K 2048 34-48, K 2816 34-45, K 4096 30-36, K 5632 (TinyLlama's down_proj) 23-24.
MAX_BLOCK_INPUTS = 3072


def column_blocks(w: np.ndarray, empty: Callable[..., np.ndarray] = np.empty) -> np.ndarray:
    """A float linear weight (N, K) with K > MAX_BLOCK_INPUTS as contiguous column blocks (S, N, K / S): the
    fewest blocks of at most MAX_BLOCK_INPUTS inputs, a multiple of 16 each, that divide K (S <= 16; else
    ``w`` as it is). ``linear`` then runs one GEMV per block, its slice of x staying in L1, and sums them
    (y = sum_s x[:, s K/S : (s + 1) K/S] @ w[s].T, the same sum in another order). The copy replaces the
    mapped tensor in resident memory (its pages are released); ``empty(shape, dtype)`` allocates it. Quantised
    (int8 / uint8) weights pass through."""
    if w.ndim != 2 or w.dtype not in (np.float16, np.float32) or w.shape[1] <= MAX_BLOCK_INPUTS:
        return w
    n, k = w.shape
    for s in range(-(-k // MAX_BLOCK_INPUTS), 17):
        if k % s == 0 and (k // s) % 16 == 0:
            blocks = empty((s, n, k // s), w.dtype)
            np.copyto(blocks, w.reshape(n, s, k // s).transpose(1, 0, 2))
            blocks.flags.writeable = False
            release_pages(w)
            return blocks
    return w


def _probe() -> Probe:
    return probe_native_ops(OP_NAMES)


register(BackendSpec(
    name="native", kind="decoder", rank=50, device="cpu",
    summary="our C++ kernels on the CPU (AVX2/F16C or portable; fp16/int8 weights kept in memory)",
    probe=_probe,
    factory=native_ops,
))
