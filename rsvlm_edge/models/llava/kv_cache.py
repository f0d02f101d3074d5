"""The decoder's KV cache: allocated once (max batch x max sequence), updated in place.

Layout ``k``/``v``: ``(layers, max_batch, kv_heads, max_seq, head_dim)`` float32, so layer ``i`` is
the ``[B_cache, K, S, D]`` cache the attention kernels take; or int8 (``RSVLM_EDGE_KV_CACHE=int8``) with
``k_scale``/``v_scale`` ``(layers, max_batch, kv_heads, max_seq)`` float32, one symmetric scale per row (a
quarter of the float32 bytes plus 4 per row; include/rsvlm_edge/kv_attention.h). ``lengths[b]`` is the number
of positions sequence ``b`` holds. ``np.zeros`` maps pages lazily: resident memory grows with the positions
actually used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from .config import DecoderConfig

# Refuse caches whose float32 K + V would exceed this (a typo in max_seq must not try to map 1 TB).
MAX_CACHE_BYTES = 64 << 30


@dataclass
class KVCache:
    k: np.ndarray  # (L, B_max, K, S_max, D) float32, or int8 with k_scale
    v: np.ndarray  # (L, B_max, K, S_max, D) float32, or int8 with v_scale
    lengths: np.ndarray  # (B,) int64: positions held by each sequence of the current batch
    k_scale: np.ndarray | None = None  # (L, B_max, K, S_max) float32 for an int8 cache
    v_scale: np.ndarray | None = None

    @classmethod
    def allocate(cls, config: DecoderConfig, max_batch: int, max_seq: int, int8: bool = False) -> "KVCache":
        for name, value in (("max_batch", max_batch), ("max_seq", max_seq)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer (got {value!r})", f"pass e.g. {name}=8")
        shape = (config.num_layers, max_batch, config.num_kv_heads, max_seq, config.head_dim)
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        nbytes = 2 * (rows * config.head_dim + 4 * rows) if int8 else 2 * 4 * rows * config.head_dim
        if nbytes > MAX_CACHE_BYTES:
            raise InputError(
                f"a KV cache of max_batch {max_batch} x max_seq {max_seq} needs {nbytes / 2**30:.1f} GiB "
                f"(limit {MAX_CACHE_BYTES >> 30} GiB)",
                "lower max_batch or max_seq",
            )
        lengths = np.zeros(0, dtype=np.int64)
        if int8:
            return cls(np.zeros(shape, dtype=np.int8), np.zeros(shape, dtype=np.int8), lengths,
                       np.zeros(shape[:-1], dtype=np.float32), np.zeros(shape[:-1], dtype=np.float32))
        return cls(np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32), lengths)

    def scales(self, i: int) -> dict:
        """Layer ``i``'s int8 scales as the op sets' keyword arguments (k_scale, v_scale), or {} for float32."""
        return {} if self.k_scale is None else dict(k_scale=self.k_scale[i], v_scale=self.v_scale[i])

    @property
    def max_batch(self) -> int:
        return int(self.k.shape[1])

    @property
    def max_seq(self) -> int:
        return int(self.k.shape[3])

    @property
    def nbytes(self) -> int:
        scales = 0 if self.k_scale is None else self.k_scale.nbytes + self.v_scale.nbytes
        return self.k.nbytes + self.v.nbytes + scales
