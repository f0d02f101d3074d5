"""Activation-aware per-input-channel scales for the w4 format (AWQ: Lin et al., "AWQ: Activation-aware
Weight Quantization for LLM Compression and Acceleration", 2024; the search of AutoAWQ with its
``duo_scaling``). A linear's output is unchanged by ``W x = (W diag(s)) (x / s)``; quantising ``W diag(s)``
instead of ``W`` moves precision to the input channels that matter: channels with large activations
(large ``s``: their weights get finer steps) and channels with large weights (small ``s``: they no longer
set the scale of the int4 group of 128 inputs they share with the others, the outlier input channels of
LLaMA checkpoints). ``1 / s`` is folded into what produces the input (an RMSNorm gain, or the rows of the
linear before), so the runtime and its kernels do not change.

Per input, candidates ``s = mean|x|^a / mean_w^(1 - a)`` for ``a`` in 0, 1/20, ..., 19/20 (``mean_w``: the
channel's mean |weight| relative to its group's largest; ``s`` normalised to a geometric mean of max and
min of 1), plus ``s = 1``; the one kept has the smallest output error on sampled calibration rows, measured
as this runtime computes the product: int4 weights in groups (``quant.py``'s rounding) times int8
activations in blocks of 128 (``decoder_numpy.quantize_activations``), so a scale that makes activations
too uneven for their int8 blocks loses. ``s = 1`` among the candidates: the search never raises the
calibration error of round-to-nearest.
"""

from __future__ import annotations

import numpy as np

from ...backends.decoder_numpy import QACT_BLOCK, quantize_activations
from .quant import w4_group_size, w4_round, w4_scale

GRID = 20  # ratios a = 0, 1/GRID, ..., (GRID - 1)/GRID (AutoAWQ's n_grid)
SAMPLE_ROWS = 512  # calibration rows the output error is measured on, per input


def fake_w4(w: np.ndarray) -> np.ndarray:
    """``w`` (out, in) float32 as round-to-nearest w4 stores it, dequantised (out, in) float32."""
    out_f, in_f = w.shape
    group = w4_group_size(in_f)
    g = w.reshape(out_f, in_f // group, group)
    s = w4_scale(g)[:, :, None]
    return (w4_round(g, s) * s).astype(np.float32).reshape(out_f, in_f)


def fake_a8(x: np.ndarray) -> np.ndarray:
    """Rows ``x`` (n, in) float32 as the int8 activation blocks of the w4 / w8 kernels see them (n, in)."""
    q, sx = quantize_activations(x)
    blocks = np.repeat(sx, QACT_BLOCK, axis=1)[:, :x.shape[1]]
    return q.astype(np.float32) * blocks


def relative_mean_weight(w: np.ndarray) -> np.ndarray:
    """(in,) mean over outputs of |w| divided by the largest |w| of its int4 group (AutoAWQ's ``w_mean``)."""
    out_f, in_f = w.shape
    group = w4_group_size(in_f)
    g = np.abs(w).reshape(out_f, in_f // group, group)
    return (g / (g.max(axis=2, keepdims=True) + 1e-6)).reshape(out_f, in_f).mean(axis=0)


def search_scales(w: np.ndarray, x_abs_mean: np.ndarray, rows: np.ndarray,
                  channel: np.ndarray | None = None) -> tuple[np.ndarray, float | None]:
    """The per-input scales ``s`` (in,) float32 for ``w`` (out, in) (linears of one input stacked): quantise
    ``w * s``, feed ``x / s``. ``x_abs_mean`` (in,): mean |x| per input over the calibration tokens;
    ``rows`` (n, in): sampled calibration inputs. ``channel`` (in,) int: inputs that must share one scale
    (the o projection's inputs of query heads reading one KV head, whose scale is folded into one v row)
    carry the same index; None: every input its own. Returns (s, the ratio a kept; None where s = 1 won)."""
    in_f = w.shape[1]
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    reference = rows @ w.T
    x_mean = x_abs_mean.astype(np.float64)
    w_mean = relative_mean_weight(w).astype(np.float64)
    if channel is not None:  # tied inputs: one statistic per channel, spread back to its inputs
        count = np.bincount(channel)
        x_mean = (np.bincount(channel, x_mean) / count)[channel]
        w_mean = (np.bincount(channel, w_mean) / count)[channel]

    def error(s: np.ndarray) -> float:
        out = fake_a8(rows / s) @ fake_w4(w * s).T
        return float(np.mean((out - reference) ** 2))

    best, best_ratio, best_error = np.ones(in_f, np.float32), None, error(np.ones(in_f, np.float32))
    for step in range(GRID):
        a = step / GRID
        s = np.maximum(x_mean ** a / (w_mean ** (1 - a) + 1e-4), 1e-4)
        s = s / np.sqrt(s.max() * s.min())
        s = np.where(np.isfinite(s), s, 1.0).astype(np.float32)
        e = error(s)
        if e < best_error:
            best, best_ratio, best_error = s, a, e
    return best, best_ratio
