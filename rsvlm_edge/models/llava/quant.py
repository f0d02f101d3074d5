"""Weight-only quantisation formats of ``decoder.safetensors`` (numpy; used by export and runtime).

* ``w8``: ``<name>.weight`` int8 (out, in), ``<name>.weight_scale`` fp32 (out,):
  symmetric per output channel, ``w ~= q * scale[:, None]``, q in [-127, 127].
* ``w4``: ``<name>.weight`` uint8 (out, in / 2), ``<name>.weight_scale`` fp32 (out, in / group):
  one scale per group of ``group`` consecutive inputs (128, or the whole row when the input width is
  not a multiple of 128), ``w ~= q * scale``, q in [-8, 7] stored as q + 8, two per byte (even input
  in the low nibble). The group size is implied by the scale's shape. Export's rule (``w4_scale``, as
  llama.cpp's Q4_0): the group's entry m of largest magnitude maps to q = -8, scale = m / -8 (negative
  where m is positive), so m is exact and all 16 levels are used (a step of max|w| / 8, not / 7).
  Bundles written before 2026-11-27 have q in [-7, 7] and positive scales: the same format to a reader.
"""

from __future__ import annotations

import numpy as np

W4_GROUP = 128


def quantize_w8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = w.astype(np.float32)
    absmax = np.abs(w).max(axis=1)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def w4_group_size(in_features: int) -> int:
    return W4_GROUP if in_features % W4_GROUP == 0 else in_features


def quantize_w4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8 (out, in/2), scale fp32 (out, in/group)); ``in`` must be even."""
    out_f, in_f = w.shape
    if in_f % 2:
        raise ValueError(f"w4 needs an even input width, got {in_f}")
    group = w4_group_size(in_f)
    g = w.astype(np.float32).reshape(out_f, in_f // group, group)
    scale = w4_scale(g)
    q = w4_round(g, scale[:, :, None]).astype(np.int16).reshape(out_f, in_f) + 8
    return pack_w4(q), scale


def w4_scale(groups: np.ndarray) -> np.ndarray:
    """fp32 scales (...) of w4 groups ``groups`` (..., group): ``m / -8`` of each group's entry ``m`` of
    largest magnitude (the first such entry), so that ``m`` is level -8 exactly; 1 for an all-zero group."""
    g = np.asarray(groups, dtype=np.float32)
    m = np.take_along_axis(g, np.abs(g).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    return np.where(m != 0, m / np.float32(-8.0), np.float32(1.0)).astype(np.float32)


def w4_round(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``w / scale`` rounded to the nearest w4 level q in [-8, 7] (float)."""
    return np.clip(np.rint(w / scale), -8, 7)


def pack_w4(nibbles: np.ndarray) -> np.ndarray:
    """(out, in) stored values q + 8 in [0, 15] -> packed uint8 (out, in / 2), even input in the low nibble."""
    n = nibbles.astype(np.uint8)
    return n[:, 0::2] | (n[:, 1::2] << 4)


def dequantize_w4(packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """fp32 (out, in) weights of a w4 tensor."""
    out_f, half = packed.shape
    q = np.empty((out_f, 2 * half), dtype=np.float32)
    q[:, 0::2] = (packed & 0x0F).astype(np.float32) - 8.0
    q[:, 1::2] = (packed >> 4).astype(np.float32) - 8.0
    groups = scale.shape[1]
    return (q.reshape(out_f, groups, -1) * scale[:, :, None]).reshape(out_f, 2 * half)
