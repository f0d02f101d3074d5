"""decoder.safetensors' canonical tensor names and shapes for a ``DecoderConfig``, filled by callables (seeded
synthetic decoders for the tests and the accuracy bench)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .config import DecoderConfig


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
