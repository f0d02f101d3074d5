"""The decoder's KV cache: allocated once (max batch x max sequence), updated in place.

Layout ``k``/``v``: ``(layers, max_batch, kv_heads, max_seq, head_dim)`` float32, so layer ``i`` is
the ``[B_cache, K, S, D]`` cache the attention kernels take. ``lengths[b]`` is the number of
positions sequence ``b`` holds. ``np.zeros`` maps pages lazily: resident memory grows with the
positions actually used.
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
    k: np.ndarray  # (L, B_max, K, S_max, D) float32
    v: np.ndarray  # (L, B_max, K, S_max, D) float32
    lengths: np.ndarray  # (B,) int64: positions held by each sequence of the current batch

    @classmethod
    def allocate(cls, config: DecoderConfig, max_batch: int, max_seq: int) -> "KVCache":
        for name, value in (("max_batch", max_batch), ("max_seq", max_seq)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer (got {value!r})", f"pass e.g. {name}=8")
        shape = (config.num_layers, max_batch, config.num_kv_heads, max_seq, config.head_dim)
        nbytes = 2 * 4 * int(np.prod(shape, dtype=np.int64))
        if nbytes > MAX_CACHE_BYTES:
            raise InputError(
                f"a KV cache of max_batch {max_batch} x max_seq {max_seq} needs {nbytes / 2**30:.1f} GiB "
                f"(limit {MAX_CACHE_BYTES >> 30} GiB)",
                "lower max_batch or max_seq",
            )
        return cls(np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32), np.zeros(0, dtype=np.int64))

    @property
    def max_batch(self) -> int:
        return int(self.k.shape[1])

    @property
    def max_seq(self) -> int:
        return int(self.k.shape[3])

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
