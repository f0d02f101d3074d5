"""GPTQ for the w4 format: int4 weights that compensate each column's rounding error on the columns not
yet quantised, weighted by the layer's input statistics (Frantar et al., "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", 2023; the reference implementation's blocked
algorithm). The output is the plain w4 format of ``quant.py`` (symmetric int4 in groups of 128, fp32
scales): the runtime and its kernels do not change, only which integers are stored.

With AWQ first (``awq-gptq``; ``awq.py``), each layer input's activation-aware scales are searched and
folded (``W diag(s)``, ``1 / s`` into the RMSNorm gain or the rows of the linear before) and GPTQ runs on
the scaled weights under the rescaled statistics ``diag(1/s) H diag(1/s)``; ``awq`` alone rounds the scaled
weights to nearest.

Calibration runs the decoder layer by layer in fp32 on calibration token sequences, as GPTQ does: the
inputs of layer ``l`` come from layers ``0..l-1`` already quantised, so each layer corrects for the error
of the ones before it. Per layer, H = 2 X^T X of the input of each group of linears that share one (q/k/v,
o, gate/up, down) is accumulated once; then each group's weights, stacked, are quantised column by column
in blocks of one group (128 inputs): a group's scale is fixed from its columns as updated by the error
feedback so far (the format's rule, ``quant.w4_scale``), each column is rounded, and its error divided by the
Cholesky factor's diagonal is propagated to the rest of the block, then to the later blocks at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...backends import decoder_numpy
from ...errors import CheckpointError
from . import awq
from .config import DecoderConfig
from .decoder import DecoderWeights, Layer, Linear, _prefill_block
from .quant import dequantize_w4, pack_w4, quantize_w4, w4_group_size, w4_round, w4_scale

DAMP = 0.01  # fraction of mean(diag(H)) added to the diagonal (the reference implementation's percdamp)
CALIBRATED = ("gptq", "awq", "awq-gptq")  # the w4 methods that run the decoder on calibration text
SUB_BATCH = 8  # calibration windows run through a layer at once

Progress = Callable[[str], None]


def gptq_w4(w: np.ndarray, hessian: np.ndarray, damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """``w`` (out, in) quantised to the w4 format with GPTQ under ``hessian`` (in, in) = sum of 2 x x^T
    over calibration inputs x: (packed uint8 (out, in / 2), scale fp32 (out, in / group)).
    Inputs that never fired (zero diagonal) are quantised as zero weights."""
    out_f, in_f = w.shape
    if hessian.shape != (in_f, in_f):
        raise ValueError(f"hessian of shape {hessian.shape} for a weight of {in_f} inputs")
    group = w4_group_size(in_f)
    W = w.astype(np.float32, copy=True)  # fp32 updates, as the reference implementation
    H = hessian.astype(np.float64, copy=True)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(in_f)] += damp * float(np.mean(np.diag(H)))
    # Upper Cholesky factor of H^-1 (factored in fp64): the rows of the error propagation (reference: Hinv).
    U = np.linalg.cholesky(np.linalg.inv(H)).T.astype(np.float32)
    q_all = np.zeros((out_f, in_f), dtype=np.int16)
    scale = np.zeros((out_f, in_f // group), dtype=np.float32)
    for g0 in range(0, in_f, group):
        g1 = g0 + group
        block = W[:, g0:g1].copy()
        err = np.zeros_like(block)
        s = w4_scale(block)
        scale[:, g0 // group] = s
        u = U[g0:g1, g0:g1]
        for i in range(group):
            col = block[:, i]
            q = w4_round(col, s)
            q_all[:, g0 + i] = q
            e = (col - q * s) / u[i, i]
            block[:, i:] -= np.outer(e, u[i, i:])
            err[:, i] = e
        W[:, g1:] -= err @ U[g0:g1, g1:]
    return pack_w4(q_all + 8), scale


class _InputStatistics:
    """An op set that runs ``ops`` and records, for the input of every linear whose weight array is in
    ``names`` (id -> key), an input shared by several linears once: 2 X^T X (float64; GPTQ's H) when
    ``hessians``, the sum of |x| per input and a random sample of its rows (each row kept with probability
    ``sample``; AWQ's statistics) when ``sample`` > 0. One instance per layer call (inputs are told apart by
    their array's id while that call holds them)."""

    def __init__(self, ops: Any, names: dict[int, str], stats: dict[str, "_Input"], hessians: bool,
                 sample: float, rng: np.random.Generator) -> None:
        self.ops, self.names, self.stats, self.hessians, self.sample, self.rng = ops, names, stats, hessians, sample, rng
        self._seen: set[tuple[str, int]] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ops, name)

    def linear(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, out: np.ndarray | None = None):
        key = self.names.get(id(w))
        if key is not None and (key, id(x)) not in self._seen:
            self._seen.add((key, id(x)))
            rows = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
            st = self.stats.setdefault(key, _Input())
            if self.hessians:
                h = 2.0 * (rows.T @ rows).astype(np.float64)
                st.hessian = h if st.hessian is None else st.hessian + h
            if self.sample > 0:
                st.abs_sum = np.abs(rows).sum(axis=0, dtype=np.float64) + st.abs_sum
                st.count += len(rows)
                st.rows.append(rows[self.rng.random(len(rows)) < self.sample])
        return self.ops.linear(x, w, bias, out=out)


class _Input:
    """Calibration statistics of one layer input (see ``_InputStatistics``)."""

    def __init__(self) -> None:
        self.hessian: np.ndarray | None = None
        self.abs_sum: np.ndarray | float = 0.0
        self.count = 0
        self.rows: list[np.ndarray] = []

    def finite(self) -> bool:
        return ((self.hessian is None or bool(np.isfinite(self.hessian).all()))
                and bool(np.isfinite(self.abs_sum).all()) and all(np.isfinite(r).all() for r in self.rows))


# Built-in calibration text (remote-sensing captions and questions in the style of the RS VLM datasets),
# used when export is given no --calib-text; windows beyond what the text fills are random token ids.
BUILTIN_CALIBRATION_TEXT = """\
An aerial view of a dense residential area with rows of houses, small gardens and a few tall trees along the streets.
A satellite image showing a large airport with two parallel runways, several taxiways and airplanes parked at the terminal.
Farmland divided into rectangular fields of different colours, some green with crops and some brown after the harvest.
A river winds through a forest; a bridge crosses it near a small town on the northern bank.
Many ships are docked in a harbour next to container stacks, cranes and warehouses.
A baseball diamond and a soccer field lie next to a school building with a parking lot full of cars.
An industrial area with storage tanks, factory roofs and railway tracks leading to a loading yard.
A highway interchange with curved ramps, overpasses and light traffic in the afternoon.
The image shows a desert with sand dunes, a dry riverbed and a road crossing from east to west.
Several circular irrigation fields appear as green disks on a brown background.
A coastline with a sandy beach, breaking waves, a pier and hotels along the shore.
A mountain area covered with snow, a glacier in the valley and a lake at its foot.
Question: How many airplanes are parked at the terminal? Answer: There are seven airplanes at the terminal.
Question: Is there a swimming pool in the image? Answer: Yes, there is a swimming pool behind the large house.
Question: What is the main land use in this scene? Answer: The scene is mostly agricultural land with scattered farms.
Question: Where is the storage tank located? Answer: The storage tank is in the lower left part of the image.
Describe the image in detail. The image is a high resolution aerial photograph of a city centre with office towers,
a central square, a church, narrow streets and a park with a pond in its middle.
Classify the scene: dense residential, commercial, industrial, farmland, forest, river, lake, beach, airport, port,
stadium, bridge, parking lot, railway station, storage tanks, tennis court, golf course, meadow, desert, mountain.
Identify the objects in the region [12, 40, 58, 77]: a white truck and two cars on a road next to a warehouse.
The flood covered the fields south of the village; the water reached the first houses but the main road stays dry.
After the wildfire, the burned area appears dark grey and the boundary with the intact forest is clearly visible.
A solar power plant with long rows of panels, an access road and a substation in the corner.
A wind farm on a ridge: twelve turbines, their shadows pointing north-west, and gravel roads connecting them.
A roundabout with five exits surrounded by shops, a petrol station and a bus stop.
"""


def calibration_windows(text_ids: list[int], vocab_size: int, windows: int, length: int, bos_id: int | None,
                        seed: int = 0) -> tuple[list[np.ndarray], int]:
    """``windows`` token sequences of ``length`` for GPTQ: consecutive windows of ``text_ids`` (each
    starting with ``bos_id`` when given), then, where the text runs out, uniformly random ids (seeded).
    Returns the sequences and how many of them are text."""
    if windows < 1 or length < 2:
        raise ValueError("GPTQ calibration needs >= 1 window of >= 2 tokens")
    body = length - (bos_id is not None)
    ids = np.asarray(text_ids, dtype=np.int64)
    n_text = min(windows, len(ids) // body)
    rng = np.random.default_rng(seed)
    pieces = [ids[w * body:(w + 1) * body] for w in range(n_text)]
    pieces += [rng.integers(0, vocab_size, body) for _ in range(windows - n_text)]
    return [np.concatenate([[bos_id], p]) if bos_id is not None else p for p in pieces], n_text


# The linears of a layer by the input they share.
_SHARED_INPUT = {"q": "attn_in", "k": "attn_in", "v": "attn_in", "o": "o_in", "gate": "mlp_in", "up": "mlp_in",
                 "down": "down_in"}
_CANONICAL = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
              "down": "down_proj"}


@dataclass
class CalibratedW4:
    """A decoder's w4 layers chosen on calibration text: ``layers`` name -> (packed, scale) for every
    ``layers.N.*_proj.weight``; ``tensors``: float tensors that AWQ rewrote (the RMSNorm gains that took
    ``1 / s``; empty without AWQ), fp32; ``ratios``: per layer input (``layers.N.attn_in`` ...), AWQ's ratio
    kept (None: scales of 1 won)."""

    layers: dict[str, tuple[np.ndarray, np.ndarray]]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)


def _kv_channel(config: DecoderConfig) -> np.ndarray | None:
    """The v row (KV channel) each o-projection input reads, (num_heads * head_dim,); None without GQA."""
    if config.num_heads == config.num_kv_heads:
        return None
    d, rep = config.head_dim, config.num_heads // config.num_kv_heads
    j = np.arange(config.num_heads * d)
    return (j // d // rep) * d + j % d


def _apply_awq(config: DecoderConfig, layer: Layer, stats: dict[str, _Input]) -> tuple[Layer, dict[str, np.ndarray],
                                                                                       dict[str, float | None]]:
    """AWQ scales searched for each of ``layer``'s inputs and folded: the layer (fp32 copies) computing the
    same function with ``W diag(s)`` weights, the scales per input (to rescale the Hessians) and the ratios."""
    w = {part: getattr(layer, part).w.copy() for part in _SHARED_INPUT}
    bias = {part: None if getattr(layer, part).bias is None else getattr(layer, part).bias.astype(np.float32)
            for part in _SHARED_INPUT}
    norms = {"attn_in": layer.input_norm.astype(np.float32), "mlp_in": layer.post_norm.astype(np.float32)}
    # Where each input's 1 / s goes: a norm gain, or the rows of the linear before (o <- v, down <- up).
    rows_before = {"o_in": "v", "down_in": "up"}
    scales, ratios = {}, {}
    for shared in dict.fromkeys(_SHARED_INPUT.values()):
        parts = [part for part, key in _SHARED_INPUT.items() if key == shared]
        st = stats[shared]
        channel = _kv_channel(config) if shared == "o_in" else None
        s, ratios[shared] = awq.search_scales(np.concatenate([w[part] for part in parts]), st.abs_sum / st.count,
                                              np.concatenate(st.rows), channel)
        scales[shared] = s
        for part in parts:
            w[part] *= s
        if shared in norms:
            norms[shared] = norms[shared] / s
        else:  # the producing linear's row r takes the scale of the inputs reading it
            before = rows_before[shared]
            folded = np.ones(w[before].shape[0], np.float32)
            folded[np.arange(len(s)) if channel is None else channel] = s
            w[before] /= folded[:, None]
            if bias[before] is not None:
                bias[before] = bias[before] / folded
    scaled = Layer(norms["attn_in"], norms["mlp_in"], **{part: Linear(w[part], bias=bias[part]) for part in w})
    return scaled, scales, ratios


def calibrated_decoder_w4(config: DecoderConfig, tensors: dict[str, np.ndarray], calibration: Iterable[np.ndarray],
                          method: str = "gptq", progress: Progress | None = None) -> CalibratedW4:
    """w4 of every ``layers.N.*_proj.weight`` of fp32/fp16 decoder ``tensors`` by ``method`` (``CALIBRATED``):
    ``gptq``, ``awq`` (AWQ scales, then round to nearest) or ``awq-gptq`` (AWQ scales, then GPTQ under the
    rescaled statistics). ``calibration``: token id sequences (each 1-D, the same length). CheckpointError
    when the checkpoint's activations on them are not finite or their statistics cannot be factored."""
    if method not in CALIBRATED:
        raise ValueError(f"unknown calibrated w4 method '{method}' (one of {', '.join(CALIBRATED)})")
    use_awq, use_gptq = method.startswith("awq"), method.endswith("gptq")
    seqs = [np.asarray(s, dtype=np.int64) for s in calibration]
    if not seqs or len({len(s) for s in seqs}) != 1 or len(seqs[0]) < 2:
        raise ValueError("GPTQ calibration needs token sequences of one length >= 2")
    ids = np.stack(seqs)
    # fp16 weights stay fp16 (a 7B decoder is 13.5 GB so); one layer at a time is widened to fp32.
    weights = DecoderWeights.from_tensors(config, tensors, half_weights=True)
    batch, tokens = ids.shape
    x = weights.embed_tokens(ids).astype(np.float32)  # (windows, tokens, C): every layer's input, kept
    # The layer runs over SUB_BATCH windows at a time: its activations (MLP, attention scores) stay bounded.
    sub = min(batch, SUB_BATCH)
    positions = np.ascontiguousarray(np.broadcast_to(np.arange(tokens, dtype=np.int64), (sub, tokens)))
    shape = (sub, config.num_kv_heads, tokens, config.head_dim)

    def run_layer(ops: Any, layer: Layer, xs: np.ndarray) -> np.ndarray:
        lengths = np.full(len(xs), tokens, dtype=np.int64)
        return _prefill_block(config, ops, layer, np.zeros(shape, np.float32), np.zeros(shape, np.float32), xs,
                              positions[:len(xs)], lengths)

    result = CalibratedW4({})
    sample = min(1.0, awq.SAMPLE_ROWS / (batch * tokens)) if use_awq else 0.0
    for i, stored in enumerate(weights.layers):
        if progress:
            progress(f"calibrating w4 ({method}): layer {i + 1}/{len(weights.layers)}")
        layer = Layer(stored.input_norm, stored.post_norm, **{
            part: Linear(getattr(stored, part).w.astype(np.float32), bias=getattr(stored, part).bias)
            for part in _SHARED_INPUT})
        names = {id(getattr(layer, part).w): shared for part, shared in _SHARED_INPUT.items()}
        stats: dict[str, _Input] = {}
        rng = np.random.default_rng(i)
        for b0 in range(0, batch, sub):
            run_layer(_InputStatistics(decoder_numpy.NUMPY, names, stats, use_gptq, sample, rng), layer,
                      x[b0:b0 + sub])
        bad = [key for key, st in stats.items() if not st.finite()]
        if bad:
            raise CheckpointError(f"{method}: the inputs of layer {i}'s {bad[0]} overflow float32 on the calibration "
                                  "text (the checkpoint's activations are not finite)",
                                  "export with --w4-method rtn, or check the checkpoint with --weights fp16")
        if use_awq:
            layer, scales, ratios = _apply_awq(config, layer, stats)
            result.tensors[f"layers.{i}.input_layernorm.weight"] = layer.input_norm
            result.tensors[f"layers.{i}.post_attention_layernorm.weight"] = layer.post_norm
            result.ratios.update({f"layers.{i}.{shared}": r for shared, r in ratios.items()})
            if use_gptq:  # the inputs x / s: H -> diag(1/s) H diag(1/s)
                for shared, s in scales.items():
                    inv = 1.0 / s.astype(np.float64)
                    stats[shared].hessian = stats[shared].hessian * np.outer(inv, inv)
        quantised = {}
        for shared in dict.fromkeys(_SHARED_INPUT.values()):
            # The linears of one input as one matrix: GPTQ treats rows independently, so this is the
            # same result as one call each, with one factorisation of H and one column loop.
            parts = [part for part, key in _SHARED_INPUT.items() if key == shared]
            rows = np.cumsum([0] + [getattr(layer, part).w.shape[0] for part in parts])
            stacked = np.concatenate([getattr(layer, part).w for part in parts])
            if use_gptq:
                try:
                    packed, scale = gptq_w4(stacked, stats[shared].hessian)
                except np.linalg.LinAlgError as e:
                    raise CheckpointError(f"GPTQ: layer {i}'s {shared} statistics cannot be factored ({e})",
                                          "export with --w4-method rtn") from None
            else:
                packed, scale = quantize_w4(stacked)
            for part, r0, r1 in zip(parts, rows[:-1], rows[1:]):
                result.layers[f"layers.{i}.{_CANONICAL[part]}.weight"] = (packed[r0:r1], scale[r0:r1])
                quantised[part] = Linear(dequantize_w4(packed[r0:r1], scale[r0:r1]), bias=getattr(layer, part).bias)
        # The next layer's inputs come from this layer as quantised (GPTQ's sequential order).
        done = Layer(layer.input_norm, layer.post_norm, **quantised)
        x = np.concatenate([run_layer(decoder_numpy.NUMPY, done, x[b0:b0 + sub]) for b0 in range(0, batch, sub)])
    return result
