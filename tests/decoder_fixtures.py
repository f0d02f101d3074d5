"""Seeded LLaMA decoder tensors in decoder.safetensors' layout, for tests of the decoder backends."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rsvlm_edge.export.llava import decoder_tensors
from rsvlm_edge.models.llava.config import DecoderConfig


def decoder_layout(cfg: DecoderConfig, embed: Callable[[], np.ndarray], lm_head: Callable[[], np.ndarray],
                   linear: Callable[[int, int], np.ndarray], norm: Callable[[], np.ndarray],
                   bias: Callable[[int], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """decoder.safetensors' names and shapes, the tensors made by the callables in the file's order (seeded
    generators draw in it): embed, final norm, lm_head, then per layer its two norms and the linears
    q, k, v, o, gate, up, down as ``linear(out, in)``, each q/k/v bias (``bias(out)``, when
    ``cfg.attention_bias``) right after its weight."""
    c, i, qd, kvd = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    t = {"embed_tokens.weight": embed(), "norm.weight": norm(), "lm_head.weight": lm_head()}
    for layer in range(cfg.num_layers):
        p = f"layers.{layer}."
        t[p + "input_layernorm.weight"] = norm()
        t[p + "post_attention_layernorm.weight"] = norm()
        for name, (n, k) in {"q_proj": (qd, c), "k_proj": (kvd, c), "v_proj": (kvd, c), "o_proj": (c, qd),
                             "gate_proj": (i, c), "up_proj": (i, c), "down_proj": (c, i)}.items():
            t[p + name + ".weight"] = linear(n, k)
            if cfg.attention_bias and bias is not None and name in ("q_proj", "k_proj", "v_proj"):
                t[p + name + ".bias"] = bias(n)
    return t


def small_tensors(cfg: DecoderConfig, fmt: str = "fp16", seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded weights in decoder.safetensors' layout: fp16 (fp32 norms), or w8 / w4 quantised linears (lm_head w8)."""
    rng = np.random.default_rng(seed)
    c = cfg.hidden_size

    def w(n, k, scale=None):
        return (rng.standard_normal((n, k)) * (scale or k ** -0.5)).astype(np.float16)

    t = decoder_layout(cfg, embed=lambda: w(cfg.vocab_size, c, 1.0), lm_head=lambda: w(cfg.vocab_size, c, 2.0 * c ** -0.5),
                       linear=w, norm=lambda: (1 + 0.1 * rng.standard_normal(c)).astype(np.float32),
                       bias=lambda n: (0.1 * rng.standard_normal(n)).astype(np.float32))
    if fmt != "fp16":  # the linears (and lm_head) converted by export itself: layers in fmt, lm_head w8
        t.update(decoder_tensors({n: v for n, v in t.items() if n.endswith("_proj.weight") or n == "lm_head.weight"},
                                 fmt))
    return t
