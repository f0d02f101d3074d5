"""Seeded LLaMA decoder tensors in decoder.safetensors' layout, for tests of the decoder backends."""

from __future__ import annotations

import numpy as np

from rsvlm_edge.export.llava import decoder_tensors
from rsvlm_edge.models.llava.config import DecoderConfig


def small_tensors(cfg: DecoderConfig, fmt: str = "fp16", seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded weights in decoder.safetensors' layout: fp16 (fp32 norms), or w8 / w4 quantised linears (lm_head w8)."""
    rng = np.random.default_rng(seed)
    c, i, qd, kvd = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim

    def w(n, k, scale=None):
        return (rng.standard_normal((n, k)) * (scale or k ** -0.5)).astype(np.float16)

    t = {"embed_tokens.weight": w(cfg.vocab_size, c, 1.0), "norm.weight": (1 + 0.1 * rng.standard_normal(c)).astype(np.float32),
         "lm_head.weight": w(cfg.vocab_size, c, 2.0 * c ** -0.5)}
    for layer in range(cfg.num_layers):
        p = f"layers.{layer}."
        t[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        t[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        for name, (n, k) in {"q_proj": (qd, c), "k_proj": (kvd, c), "v_proj": (kvd, c), "o_proj": (c, qd),
                             "gate_proj": (i, c), "up_proj": (i, c), "down_proj": (c, i)}.items():
            t[p + name + ".weight"] = w(n, k)
            if cfg.attention_bias and name in ("q_proj", "k_proj", "v_proj"):
                t[p + name + ".bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
    if fmt != "fp16":  # the linears (and lm_head) converted by export itself: layers in fmt, lm_head w8
        t.update(decoder_tensors({n: v for n, v in t.items() if n.endswith("_proj.weight") or n == "lm_head.weight"},
                                 fmt))
    return t
