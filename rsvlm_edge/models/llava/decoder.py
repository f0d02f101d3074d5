"""LLaMA-family decoder: weights, and pure prefill / decode-step functions over a KV cache (no torch).

As in gpt-fast, the state is explicit: ``DecoderWeights`` (read-only), a preallocated ``KVCache``
and, for the decode step, preallocated ``DecodeBuffers``; ``prefill`` and ``decode_step`` are
functions of (config, weights, ops, cache, inputs, out). ``decode_step`` allocates nothing: every
activation goes to a buffer sized for ``max_batch``, so a GPU backend can capture the step once in a
CUDA graph and replay it per token. ``ops`` is a decoder backend's op set (``rsvlm_edge.backends``).

Weights come from ``decoder.safetensors`` under canonical names (see ``export/llava_checkpoint.py``):
fp32 / fp16 tensors, or for ``w8`` / ``w4`` quantised ``<name>.weight`` plus fp32
``<name>.weight_scale`` for every linear layer (lm_head: w8 in w8 and w4 bundles; formats in
``quant.py``); the embeddings stay float. Compute is fp32. fp16 linear weights stay fp16 in memory when the op set takes them
(``half_weights``) and are widened once at load otherwise; an fp16 embedding table stays fp16 and
only looked-up rows are widened; int8 / int4 weights stay quantised in memory and run as ``qlinear``
(activations quantised to int8 per block of 128 inputs on the fly, exact integer dot products: what
llama.cpp does for Q8_0 / Q4_0).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ...errors import BackendError, BundleError, InputError
from .config import DecoderConfig
from .kv_cache import KVCache
from .quant import w4_group_size


@dataclass
class Linear:
    """A linear layer's weight ``w`` (out, in): fp32 or fp16; int8 with a per-output-channel
    ``scale`` (out, 1) (w8); or packed int4 (out, in/2) with per-group ``scale`` (out, in/group) (w4,
    see ``quant.py``). Quantised layers run as ``qlinear`` (int8 activations, integer dots). An op set's
    ``weight_placement`` may rearrange a float ``w`` for its kernels (native: wide weights as column
    blocks (S, out, in / S)) and copy weights and scales to where its kernels read them fastest (native:
    anonymous memory on huge pages); ``w.shape[-2]`` is always ``out``."""

    w: np.ndarray
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None

    @property
    def is_w4(self) -> bool:
        return self.w.dtype == np.uint8

    @property
    def out_features(self) -> int:
        return int(self.w.shape[-2])

    @property
    def nbytes(self) -> int:
        return self.w.nbytes + (0 if self.scale is None else self.scale.nbytes)


class WeightPlacement(Protocol):
    """Where an op set keeps one decoder's weights (``ops.weight_placement()``, one per weight set)."""

    def linear_weight(self, w: np.ndarray) -> np.ndarray:
        """``w`` (out, in) arranged and placed for the op set's linear kernels (see ``Linear``)."""

    def array(self, a: np.ndarray) -> np.ndarray:
        """``a`` (a quantised weight's scales) placed for the kernels, values and shape unchanged."""

    # Optional: ``fused(arrays)``: ``arrays`` (each (out_i, ...), one dtype and trailing shape: the weights, or the
    # scales, of linears with one input) as one placed array (sum out_i, ...), their rows in order; None where the
    # op set keeps them apart.


@dataclass
class Layer:
    input_norm: np.ndarray
    post_norm: np.ndarray
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    gate: Linear
    up: Linear
    down: Linear
    qkv: Linear | None = None  # q, k, v as one linear (their rows in that order) where the op set fuses them;
    gate_up: Linear | None = None  # gate, up likewise. Then q / k / v / gate / up are views of these rows.


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """The tensors of ``decoder.safetensors`` as read-only views of one memory map (no copy: peak
    RSS is the weights once, shared with the page cache; see ``bundle/safetensors_mmap.py``)."""
    from ...bundle.safetensors_mmap import map_tensors

    return map_tensors(path)


@dataclass
class DecoderWeights:
    embed: np.ndarray  # (vocab, C) float16 or float32
    norm: np.ndarray  # (C,) float32
    lm_head: Linear  # (vocab, C)
    layers: list[Layer]

    @classmethod
    def from_tensors(cls, config: DecoderConfig, tensors: dict[str, np.ndarray], half_weights: bool,
                     placement: WeightPlacement | None = None) -> "DecoderWeights":
        """Check every tensor's presence, dtype and shape against ``config`` and arrange them;
        ``placement``: the op set's arrangement of linear weights and scales (see ``Linear``)."""
        c, kvd, qd, inter = config.hidden_size, config.num_kv_heads * config.head_dim, \
            config.num_heads * config.head_dim, config.intermediate_size

        def get(name: str, shape: tuple[int, ...], allowed: tuple[type, ...]) -> np.ndarray:
            t = tensors.get(name)
            if t is None:
                raise BundleError(f"decoder weights lack '{name}'", "re-export the bundle")
            if t.dtype.type not in allowed or tuple(t.shape) != shape:
                raise BundleError(f"decoder tensor '{name}' is {t.dtype} {tuple(t.shape)}, expected "
                                  f"{'/'.join(np.dtype(a).name for a in allowed)} {shape}", "re-export the bundle")
            return t

        floats = (np.float32, np.float16)
        place_w = placement.linear_weight if placement is not None else (lambda a: a)
        place = placement.array if placement is not None else (lambda a: a)

        def norm(name: str) -> np.ndarray:
            return np.ascontiguousarray(get(name, (c,), floats), dtype=np.float32)

        def checked(name: str, out_f: int, in_f: int, bias: bool = False) -> Linear:
            """The linear layer ``name`` as stored (views of ``tensors``), checked; not placed yet."""
            w = tensors.get(f"{name}.weight")
            scale = tensors.get(f"{name}.weight_scale")
            if w is not None and w.dtype == np.int8:  # w8
                q = get(f"{name}.weight", (out_f, in_f), (np.int8,))
                s = get(f"{name}.weight_scale", (out_f,), (np.float32,))
                if q.size and int(q.min()) < -127:  # the symmetric format never stores -128 (qlinear.h)
                    raise BundleError(f"decoder tensor '{name}.weight' holds -128, outside the w8 range [-127, 127]",
                                      "re-export the bundle with rsvlm-edge export llava --weights w8")
                lin = Linear(np.ascontiguousarray(q), np.ascontiguousarray(s).reshape(out_f, 1))
            elif w is not None and w.dtype == np.uint8:  # w4
                q = get(f"{name}.weight", (out_f, in_f // 2), (np.uint8,))
                s = get(f"{name}.weight_scale", (out_f, in_f // w4_group_size(in_f)), (np.float32,))
                lin = Linear(np.ascontiguousarray(q), np.ascontiguousarray(s))
            else:
                if scale is not None:
                    raise BundleError(f"decoder tensor '{name}.weight_scale' goes with a float weight", "re-export the bundle")
                w = get(f"{name}.weight", (out_f, in_f), floats)
                keep = w.dtype == np.float16 and half_weights
                lin = Linear(np.ascontiguousarray(w, dtype=None if keep else np.float32))
            if bias or f"{name}.bias" in tensors:  # required where the config says so; applied wherever present
                lin.bias = np.ascontiguousarray(get(f"{name}.bias", (out_f,), floats), dtype=np.float32)
            return lin

        def placed(lin: Linear) -> Linear:
            return Linear(place_w(lin.w), None if lin.scale is None else place(lin.scale), lin.bias)

        def linear(name: str, out_f: int, in_f: int, bias: bool = False) -> Linear:
            return placed(checked(name, out_f, in_f, bias))

        def fused(parts: list[Linear]) -> tuple[Linear | None, list[Linear]]:
            """``parts`` (same input, same format) as one placed linear whose output rows are theirs in order, and
            each part as a view of its rows; (None, the parts placed one by one) where the op set does not fuse
            them (``WeightPlacement.fused``) or their formats differ."""
            fuse = getattr(placement, "fused", None)
            same = len({(p.w.dtype, p.w.shape[1:], None if p.scale is None else p.scale.shape[1:], p.bias is None)
                        for p in parts}) == 1
            scale = w = None
            if fuse is not None and same:
                scale = None if parts[0].scale is None else fuse([p.scale for p in parts])
                if parts[0].scale is None or scale is not None:  # never weights without their scales
                    w = fuse([p.w for p in parts])
            if w is None:
                return None, [placed(p) for p in parts]
            bias = None if parts[0].bias is None else np.concatenate([p.bias for p in parts])
            whole, views, row = Linear(w, scale, bias), [], 0
            for p in parts:
                rows = slice(row, row + p.out_features)
                views.append(Linear(w[rows], None if scale is None else scale[rows], None if bias is None else bias[rows]))
                row = rows.stop
            return whole, views

        embed = get("embed_tokens.weight", (config.vocab_size, c), floats)
        layers = []
        for i in range(config.num_layers):
            p = f"layers.{i}."
            qkv, (q, k, v) = fused([checked(p + "q_proj", qd, c, config.attention_bias),
                                    checked(p + "k_proj", kvd, c, config.attention_bias),
                                    checked(p + "v_proj", kvd, c, config.attention_bias)])
            gate_up, (gate, up) = fused([checked(p + "gate_proj", inter, c), checked(p + "up_proj", inter, c)])
            layers.append(Layer(
                input_norm=norm(p + "input_layernorm.weight"),
                post_norm=norm(p + "post_attention_layernorm.weight"),
                q=q, k=k, v=v, o=linear(p + "o_proj", c, qd), gate=gate, up=up, down=linear(p + "down_proj", c, inter),
                qkv=qkv, gate_up=gate_up,
            ))
        return cls(embed=np.ascontiguousarray(embed), norm=norm("norm.weight"),
                   lm_head=linear("lm_head", config.vocab_size, c), layers=layers)

    @property
    def step_bytes(self) -> int:
        """Bytes of weights one decode step reads (every layer + lm_head; embeddings: one row)."""
        total = self.lm_head.nbytes + self.norm.nbytes
        for layer in self.layers:
            total += sum(lin.nbytes for lin in (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down))
            total += layer.input_norm.nbytes + layer.post_norm.nbytes
        return total

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        """float32 (..., C) rows of the embedding table for token ids (...)."""
        return self.embed[ids].astype(np.float32, copy=False)


@dataclass
class DecodeBuffers:
    """Every activation of one decode step, sized for ``max_batch`` (rows ``[:B]`` are used)."""

    x: np.ndarray  # (B_max, C) residual stream
    h: np.ndarray  # (B_max, C) normed
    q: np.ndarray  # (B_max, H, D)
    k: np.ndarray  # (B_max, K, D)
    v: np.ndarray  # (B_max, K, D)
    attn: np.ndarray  # (B_max, H, D)
    proj: np.ndarray  # (B_max, C) o_proj / down_proj output
    gate: np.ndarray  # (B_max, I)
    up: np.ndarray  # (B_max, I)
    act: np.ndarray  # (B_max, I)
    qkv: np.ndarray  # (B_max, H D + 2 K D) a fused q/k/v projection's output (Layer.qkv)
    gate_up: np.ndarray  # (B_max, 2 I) a fused gate/up projection's output (Layer.gate_up)
    positions: np.ndarray  # (B_max,) int64
    ones: np.ndarray  # (B_max,) int64

    @classmethod
    def allocate(cls, config: DecoderConfig, max_batch: int) -> "DecodeBuffers":
        f32 = np.float32
        b, c, h, k, d, i = max_batch, config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim, \
            config.intermediate_size
        return cls(x=np.zeros((b, c), f32), h=np.zeros((b, c), f32), q=np.zeros((b, h, d), f32),
                   k=np.zeros((b, k, d), f32), v=np.zeros((b, k, d), f32), attn=np.zeros((b, h, d), f32),
                   proj=np.zeros((b, c), f32), gate=np.zeros((b, i), f32), up=np.zeros((b, i), f32),
                   act=np.zeros((b, i), f32), qkv=np.zeros((b, (h + 2 * k) * d), f32), gate_up=np.zeros((b, 2 * i), f32),
                   positions=np.zeros(b, np.int64), ones=np.ones(b, np.int64))


def _linear(ops: Any, x: np.ndarray, lin: Linear, out: np.ndarray | None = None) -> np.ndarray:
    if lin.scale is not None:  # w8 / w4: int8 activations, integer dots, weights never widened
        return ops.qlinear(x, lin.w, lin.scale, lin.bias, out=out)
    return ops.linear(x, lin.w, lin.bias, out=out)


def _prefill_block(cfg: DecoderConfig, ops: Any, layer: Layer, k_cache: np.ndarray, v_cache: np.ndarray,
                   x: np.ndarray, positions: np.ndarray, lengths: np.ndarray,
                   kv_lens: np.ndarray | None = None, k_scale: np.ndarray | None = None,
                   v_scale: np.ndarray | None = None) -> np.ndarray:
    """One transformer layer over right-padded x[B, T, C] at ``positions`` [B, T]: ``lengths`` [B] rows
    of each sequence are valid; they are cached from position ``positions[:, 0]`` on and attend to the
    ``kv_lens`` [B] cached positions up to and including their own (default ``lengths``: a whole prompt;
    a later chunk of a prompt attends to the chunks before it too). ``k_scale``/``v_scale``: an int8 cache's."""
    scales = {} if k_scale is None else dict(k_scale=k_scale, v_scale=v_scale)
    batch, tokens, _ = x.shape
    h = ops.rms_norm(x, layer.input_norm, cfg.rms_norm_eps)
    q = _linear(ops, h, layer.q).reshape(batch, tokens, cfg.num_heads, cfg.head_dim)
    k = _linear(ops, h, layer.k).reshape(batch, tokens, cfg.num_kv_heads, cfg.head_dim)
    v = _linear(ops, h, layer.v).reshape(batch, tokens, cfg.num_kv_heads, cfg.head_dim)
    ops.rope(q, k, positions, cfg.rope_theta)
    ops.kv_append(k_cache, v_cache, k, v, positions[:, 0], new_lens=lengths, **scales)
    attn = ops.attention_prefill(q, k_cache, v_cache, lengths, lengths if kv_lens is None else kv_lens, **scales)
    x = x + _linear(ops, attn.reshape(batch, tokens, -1), layer.o)
    h = ops.rms_norm(x, layer.post_norm, cfg.rms_norm_eps)
    return x + _linear(ops, ops.swiglu(_linear(ops, h, layer.gate), _linear(ops, h, layer.up)), layer.down)


def check_prompts(embeds: np.ndarray, lengths: np.ndarray, max_batch: int, max_seq: int) -> np.ndarray:
    """``lengths`` as int64 after checking right-padded prompts ``embeds[B, T, C]`` against the
    decoder's batch and cache sizes (InputError naming what does not fit). Every decoder backend's
    prefill starts with it."""
    batch, tokens = embeds.shape[:2]
    lengths = np.asarray(lengths, dtype=np.int64)
    if batch > max_batch:
        raise InputError(f"batch of {batch} exceeds the runtime's max_batch {max_batch}",
                         "split the batch or raise max_batch")
    if tokens > max_seq:
        raise InputError(f"prompt of {tokens} tokens exceeds the KV cache ({max_seq} positions)",
                         "shorten the prompt or raise max_seq")
    if lengths.shape != (batch,) or lengths.min() < 1 or lengths.max() > tokens:
        raise InputError(f"prompt lengths {lengths.tolist()} do not fit a batch of {batch} x {tokens}")
    return lengths


def check_room(lengths: Any, max_seq: int) -> None:
    """InputError when a sequence of the batch has filled its KV cache (no room for one more token)."""
    if int(max(lengths)) >= max_seq:
        raise InputError(f"generation reached the KV cache limit of {max_seq} positions",
                         "lower max_new_tokens or raise max_seq")


PREFILL_ROWS = 512  # token rows (batch x chunk) a prefill chunk runs at once: bounds its activations


def prefill_chunk_tokens(batch: int, rows: int = PREFILL_ROWS) -> int:
    """Prompt positions per prefill chunk for ``batch`` sequences: ``rows`` rows in all, at least one."""
    return max(1, rows // max(batch, 1))


def prefill(cfg: DecoderConfig, weights: DecoderWeights, ops: Any, cache: KVCache, embeds: np.ndarray,
            lengths: np.ndarray, out: np.ndarray | None = None, chunk_rows: int = PREFILL_ROWS) -> np.ndarray:
    """Run right-padded prompts ``embeds[B, T, C]`` (valid rows ``< lengths[b]``) into a fresh
    cache; returns (or writes to ``out``) logits ``[B, vocab]`` at each sequence's last position.

    The prompt runs in chunks of ``prefill_chunk_tokens(B, chunk_rows)`` positions through all layers,
    each chunk attending to the cached chunks before it, so that activations (the MLP's are
    B x T x intermediate fp32) stay bounded by ``chunk_rows`` rows whatever the prompt length: the same
    result as one pass, as the tests check."""
    batch, tokens, _ = embeds.shape
    lengths = check_prompts(embeds, lengths, cache.max_batch, cache.max_seq)
    step = prefill_chunk_tokens(batch, chunk_rows)
    last = np.empty((batch, cfg.hidden_size), dtype=np.float32)
    for t0 in range(0, int(lengths.max()), step):
        t1 = min(t0 + step, tokens)
        new_lens = np.clip(lengths - t0, 0, t1 - t0)
        kv_lens = np.minimum(lengths, t1)
        positions = np.ascontiguousarray(np.broadcast_to(np.arange(t0, t1, dtype=np.int64), (batch, t1 - t0)))
        x = np.ascontiguousarray(embeds[:, t0:t1], dtype=np.float32)
        for i, layer in enumerate(weights.layers):
            x = _prefill_block(cfg, ops, layer, cache.k[i], cache.v[i], x, positions, new_lens, kv_lens,
                               **cache.scales(i))
        ends = np.flatnonzero((lengths > t0) & (lengths <= t1))  # sequences whose last prompt row is here
        last[ends] = x[ends, lengths[ends] - 1 - t0]
    cache.lengths = lengths.copy()
    return _linear(ops, ops.rms_norm(last, weights.norm, cfg.rms_norm_eps), weights.lm_head, out=out)


def decode_step(cfg: DecoderConfig, weights: DecoderWeights, ops: Any, cache: KVCache, token_ids: np.ndarray,
                buf: DecodeBuffers, out: np.ndarray | None = None, whole_step: Any = None) -> np.ndarray:
    """Append one token per sequence of the current batch (each at its own position); returns (or
    writes to ``out``, (B, vocab) float32) the next logits. Allocates nothing but the logits when
    ``out`` is None. ``whole_step``: the op set's ``whole_decode_step`` over these weights and cache (the
    native one: ``_C.CpuDecodeStep``), which runs the layers below in one call with the same results."""
    batch = len(cache.lengths)
    check_room(cache.lengths, cache.max_seq)
    x, h, q, k, v = buf.x[:batch], buf.h[:batch], buf.q[:batch], buf.k[:batch], buf.v[:batch]
    attn, proj, gate, up, act = buf.attn[:batch], buf.proj[:batch], buf.gate[:batch], buf.up[:batch], buf.act[:batch]
    positions, ones = buf.positions[:batch], buf.ones[:batch]
    positions[...] = cache.lengths
    cache.lengths += 1
    x[...] = weights.embed_tokens(np.asarray(token_ids, dtype=np.int64))
    if whole_step is not None:
        logits = out if out is not None else np.empty((batch, cfg.vocab_size), dtype=np.float32)
        whole_step.run(x, positions, logits)
        return logits
    qd, kvd, inter = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    qkv, gate_up = buf.qkv[:batch], buf.gate_up[:batch]
    for i, layer in enumerate(weights.layers):
        k_cache, v_cache, kv = cache.k[i], cache.v[i], cache.scales(i)  # kv: the int8 cache's scales, or {}
        ops.rms_norm(x, layer.input_norm, cfg.rms_norm_eps, out=h)
        if layer.qkv is not None:  # one GEMV, q / k / v its column ranges (contiguous at batch 1)
            _linear(ops, h, layer.qkv, out=qkv)
            lq = qkv[:, :qd].reshape(q.shape)
            lk, lv = qkv[:, qd:qd + kvd].reshape(k.shape), qkv[:, qd + kvd:].reshape(v.shape)
        else:
            lq, lk, lv = q, k, v
            _linear(ops, h, layer.q, out=q.reshape(batch, -1))
            _linear(ops, h, layer.k, out=k.reshape(batch, -1))
            _linear(ops, h, layer.v, out=v.reshape(batch, -1))
        ops.rope(lq, lk, positions, cfg.rope_theta)
        ops.kv_append(k_cache, v_cache, lk[:, None], lv[:, None], positions, new_lens=ones, **kv)
        ops.attention_decode(lq, k_cache, v_cache, cache.lengths, out=attn, **kv)
        _linear(ops, attn.reshape(batch, -1), layer.o, out=proj)
        np.add(x, proj, out=x)
        ops.rms_norm(x, layer.post_norm, cfg.rms_norm_eps, out=h)
        if layer.gate_up is not None:
            _linear(ops, h, layer.gate_up, out=gate_up)
            ops.swiglu(gate_up[:, :inter], gate_up[:, inter:], out=act)
        else:
            _linear(ops, h, layer.gate, out=gate)
            _linear(ops, h, layer.up, out=up)
            ops.swiglu(gate, up, out=act)
        _linear(ops, act, layer.down, out=proj)
        np.add(x, proj, out=x)
    ops.rms_norm(x, weights.norm, cfg.rms_norm_eps, out=h)
    return _linear(ops, h, weights.lm_head, out=out)


def open_llama_decoder(config: DecoderConfig, tensors: dict[str, np.ndarray], max_batch: int, max_seq: int,
                       backend: str = "auto") -> Any:
    """The decoder for ``backend``: a ``LlamaDecoder`` over an op-set backend (numpy, native), or the
    whole-step decoder of a device backend (``cuda``: ``backends/decoder_cuda.py``), which has the
    same interface."""
    from ...backends import open_decoder

    ops = open_decoder(backend, part=config)
    if hasattr(ops, "llama_decoder"):
        return ops.llama_decoder(config, tensors, max_batch, max_seq)
    return LlamaDecoder(config, tensors, max_batch, max_seq, ops=ops)


def _read_only(path: str, doc: str) -> property:
    """A read-only property that returns ``self.<path>`` (a dotted attribute path)."""
    return property(attrgetter(path), doc=doc)


class LlamaDecoder:
    """A decoder ready to run: config, op set, weights, KV cache and decode buffers together.

    ``prefill`` / ``decode`` call the pure step functions above on this state. Not thread-safe on
    its own: the runtime serialises generations that share one decoder.
    """

    def __init__(self, config: DecoderConfig, tensors: dict[str, np.ndarray], max_batch: int, max_seq: int,
                 backend: str = "auto", ops: Any = None) -> None:
        from ...backends import open_decoder
        from ...native import KV_POOL_ENV, kv_cache_int8, kv_pool_tokens

        self.config = config
        self.ops = ops if ops is not None else open_decoder(backend)
        if kv_pool_tokens():
            raise BackendError(f"{KV_POOL_ENV} is set: the {self.ops.name} decoder backend keeps a contiguous KV cache "
                               "(the paged one is the cuda backend's)",
                               f"unset {KV_POOL_ENV}, or decode on a GPU (--backend cuda)")
        placement = getattr(self.ops, "weight_placement", None)
        self.weights = DecoderWeights.from_tensors(config, tensors, self.ops.half_weights,
                                                   placement() if placement is not None else None)
        self.cache = KVCache.allocate(config, max_batch, max_seq, int8=kv_cache_int8())
        self.buffers = DecodeBuffers.allocate(config, max_batch)
        # The op set's whole-step runner over these weights and cache (native: one C++ call per step), or None.
        make_step = getattr(self.ops, "whole_decode_step", None)
        self.whole_step = make_step(config, self.weights, self.cache) if make_step is not None else None

    max_batch = _read_only("cache.max_batch", "Sequences the KV cache holds (int).")
    max_seq = _read_only("cache.max_seq", "Positions per sequence of the KV cache (int).")
    layers = _read_only("weights.layers", "The decoder layers (list[Layer]).")
    embed = _read_only("weights.embed", "The token embedding table (np.ndarray).")
    lm_head = _read_only("weights.lm_head", "The output projection (Linear).")
    weight_bytes = _read_only("weights.step_bytes", "Bytes of weights one decode step reads (int).")

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return self.weights.embed_tokens(ids)

    def prefill(self, embeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return prefill(self.config, self.weights, self.ops, self.cache, embeds, lengths)

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        return decode_step(self.config, self.weights, self.ops, self.cache, token_ids, self.buffers,
                           whole_step=self.whole_step)

    def decode_sample(self, token_ids: np.ndarray, temperature: float, top_p: float,
                      uniforms: np.ndarray) -> np.ndarray:
        """One step, then the op set's ``top_p_sample`` on its logits with the draws ``uniforms`` (B,) in [0, 1)
        (``generation.sample_with_uniforms``' rule): the sampled ids (B,) int64."""
        return self.ops.top_p_sample(self.decode(token_ids), uniforms, temperature, top_p)
