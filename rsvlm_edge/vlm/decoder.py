"""LLaMA-family decoder over a preallocated KV cache (no torch).

Weights come from ``decoder.safetensors`` under canonical names (see ``checkpoint.py``):
fp32 / fp16 tensors, or for ``w8`` / ``w4`` quantised ``<name>.weight`` plus fp32
``<name>.weight_scale`` for every linear layer except the embeddings and lm_head (formats in
``quant.py``). Compute is fp32. fp16 linear weights (lm_head included) stay fp16 in memory with the
native ops (the kernel converts them on the fly) and are widened once at load for the numpy ops;
an fp16 embedding table stays fp16 and only the looked-up rows are widened; norms are widened;
int8 / int4 weights stay quantised in memory.

The KV cache is ``(layers, max_batch, kv_heads, max_seq, head_dim)`` fp32, allocated once and
updated in place. Prefill takes a right-padded batch of input embeddings with per-sequence lengths
(positions 0..len-1); each decode step appends one token per sequence at its own position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError, InputError
from .config import DecoderConfig
from .ops import select_ops
from .quant import dequantize_w4


@dataclass
class Linear:
    """A linear layer's weight ``w`` (out, in): fp32 or fp16 (native ops only); int8 with a
    per-output-channel ``scale`` (w8); or packed int4 with per-group ``scale`` (w4, see ``quant.py``)."""

    w: np.ndarray
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None

    @property
    def is_w4(self) -> bool:
        return self.w.dtype == np.uint8

    @property
    def nbytes(self) -> int:
        return self.w.nbytes + (0 if self.scale is None else self.scale.nbytes)


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


def load_weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"cannot read decoder weights '{path}' ({e})", "re-export the bundle") from None


class LlamaDecoder:
    """Decoder state: weights, KV cache and per-sequence lengths of the current batch."""

    def __init__(
        self, config: DecoderConfig, weights: dict[str, np.ndarray], max_batch: int, max_seq: int, backend: str = "auto"
    ) -> None:
        self.config = config
        self.ops = select_ops(backend)
        self.max_batch = max_batch
        self.max_seq = max_seq

        def tensor(name: str) -> np.ndarray:
            if name not in weights:
                raise BundleError(f"decoder weights lack '{name}'", "re-export the bundle")
            return np.ascontiguousarray(weights[name], dtype=np.float32)

        def linear(name: str) -> Linear:
            w = weights.get(f"{name}.weight")
            if w is None:
                raise BundleError(f"decoder weights lack '{name}.weight'", "re-export the bundle")
            bias = weights.get(f"{name}.bias")
            bias = None if bias is None else bias.astype(np.float32)
            scale = weights.get(f"{name}.weight_scale")
            if scale is not None:
                return Linear(np.ascontiguousarray(w), np.ascontiguousarray(scale, dtype=np.float32), bias)
            keep = w.dtype == np.float16 and self.ops.half_weights
            return Linear(np.ascontiguousarray(w, dtype=None if keep else np.float32), None, bias)

        embed = weights.get("embed_tokens.weight")
        # An fp16 table stays fp16 (vocab x hidden: the largest tensor after the layers); lookups widen rows.
        self.embed = embed if embed is not None and embed.dtype == np.float16 else tensor("embed_tokens.weight")
        self.norm = tensor("norm.weight")
        self.lm_head = linear("lm_head")
        self.layers = [
            Layer(
                input_norm=tensor(f"layers.{i}.input_layernorm.weight"),
                post_norm=tensor(f"layers.{i}.post_attention_layernorm.weight"),
                q=linear(f"layers.{i}.q_proj"),
                k=linear(f"layers.{i}.k_proj"),
                v=linear(f"layers.{i}.v_proj"),
                o=linear(f"layers.{i}.o_proj"),
                gate=linear(f"layers.{i}.gate_proj"),
                up=linear(f"layers.{i}.up_proj"),
                down=linear(f"layers.{i}.down_proj"),
            )
            for i in range(config.num_layers)
        ]
        shape = (config.num_layers, max_batch, config.num_kv_heads, max_seq, config.head_dim)
        # np.zeros maps pages lazily: resident memory grows with the positions actually used.
        self.k_cache = np.zeros(shape, dtype=np.float32)
        self.v_cache = np.zeros(shape, dtype=np.float32)
        self.lengths = np.zeros(0, dtype=np.int64)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (every layer + lm_head; embeddings: one row)."""
        total = self.lm_head.nbytes + self.norm.nbytes
        for layer in self.layers:
            total += sum(lin.nbytes for lin in (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down))
            total += layer.input_norm.nbytes + layer.post_norm.nbytes
        return total

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return self.embed[ids].astype(np.float32, copy=False)

    def _linear(self, x: np.ndarray, lin: Linear) -> np.ndarray:
        if lin.is_w4:  # no int4 kernel yet: widen the packed weights per call
            return self.ops.linear(x, dequantize_w4(lin.w, lin.scale), lin.bias)
        return self.ops.linear(x, lin.w, lin.bias, w_scale=lin.scale)

    def _block(self, x: np.ndarray, positions: np.ndarray, layer_idx: int, q_lens: np.ndarray, kv_lens: np.ndarray) -> np.ndarray:
        """One transformer layer over x[B, T, C] at ``positions`` [B, T]; T == 1 is a decode step."""
        cfg, ops = self.config, self.ops
        layer = self.layers[layer_idx]
        batch, tokens, _ = x.shape
        h = ops.rms_norm(x, layer.input_norm, cfg.rms_norm_eps)
        q = self._linear(h, layer.q).reshape(batch, tokens, cfg.num_heads, cfg.head_dim)
        k = self._linear(h, layer.k).reshape(batch, tokens, cfg.num_kv_heads, cfg.head_dim)
        v = self._linear(h, layer.v).reshape(batch, tokens, cfg.num_kv_heads, cfg.head_dim)
        ops.rope(q, k, positions, cfg.rope_theta)
        k_cache, v_cache = self.k_cache[layer_idx], self.v_cache[layer_idx]
        ops.kv_append(k_cache, v_cache, k, v, positions[:, 0], new_lens=q_lens)
        if tokens == 1:
            attn = ops.attention_decode(q[:, 0], k_cache, v_cache, kv_lens)[:, None]
        else:
            attn = ops.attention_prefill(q, k_cache, v_cache, q_lens, kv_lens)
        x = x + self._linear(attn.reshape(batch, tokens, -1), layer.o)
        h = ops.rms_norm(x, layer.post_norm, cfg.rms_norm_eps)
        return x + self._linear(ops.swiglu(self._linear(h, layer.gate), self._linear(h, layer.up)), layer.down)

    def _logits(self, last_hidden: np.ndarray) -> np.ndarray:
        return self._linear(self.ops.rms_norm(last_hidden, self.norm, self.config.rms_norm_eps), self.lm_head)

    def prefill(self, embeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Run right-padded prompts ``embeds[B, T, C]`` (valid rows ``< lengths[b]``) into a fresh
        cache; returns logits ``[B, vocab]`` at each sequence's last prompt position."""
        batch, tokens, _ = embeds.shape
        lengths = np.asarray(lengths, dtype=np.int64)
        if batch > self.max_batch:
            raise InputError(f"batch of {batch} exceeds the runtime's max_batch {self.max_batch}", "split the batch or raise max_batch")
        if tokens > self.max_seq:
            raise InputError(
                f"prompt of {tokens} tokens exceeds the KV cache ({self.max_seq} positions)",
                "shorten the prompt or raise max_seq",
            )
        positions = np.ascontiguousarray(np.broadcast_to(np.arange(tokens, dtype=np.int64), (batch, tokens)))
        x = np.ascontiguousarray(embeds, dtype=np.float32)
        for i in range(self.config.num_layers):
            x = self._block(x, positions, i, lengths, lengths)
        self.lengths = lengths.copy()
        return self._logits(np.ascontiguousarray(x[np.arange(batch), lengths - 1]))

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Append one token per sequence (at its own position); returns logits ``[B, vocab]``."""
        positions = self.lengths[:, None].copy()
        if int(positions.max()) >= self.max_seq:
            raise InputError(
                f"generation reached the KV cache limit of {self.max_seq} positions",
                "lower max_new_tokens or raise max_seq",
            )
        self.lengths = self.lengths + 1
        ones = np.ones_like(self.lengths)
        x = self.embed_tokens(np.asarray(token_ids, dtype=np.int64))[:, None]
        for i in range(self.config.num_layers):
            x = self._block(x, positions, i, ones, self.lengths)
        return self._logits(x[:, 0])
