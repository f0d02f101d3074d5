"""Seeded LLaMA decoder tensors in decoder.safetensors' layout, for tests of the decoder backends."""

from __future__ import annotations

import numpy as np

from rsvlm_edge.export.llava import decoder_tensors
from rsvlm_edge.models.llava.config import DecoderConfig
from rsvlm_edge.models.llava.tensor_layout import decoder_layout


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
