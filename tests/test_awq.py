"""AWQ's activation-aware scales for w4 (models/llava/awq.py, folded in models/llava/gptq.py): the folded
layer computes what the original does, the search never raises the calibration error of round-to-nearest,
it takes the large-weight input channels out of their int4 groups' scale, inputs read from one v row share
a scale, and the bundle records the method."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rsvlm_edge.backends import decoder_numpy
from rsvlm_edge.bundle.schema import W4Quantization
from rsvlm_edge.models.llava import awq
from rsvlm_edge.models.llava.config import DecoderConfig
from rsvlm_edge.models.llava.decoder import Layer, Linear, _prefill_block
from rsvlm_edge.models.llava.gptq import _SHARED_INPUT, _apply_awq, _Input, _kv_channel


def calibration_error(w: np.ndarray, rows: np.ndarray, s: np.ndarray) -> float:
    """The search's objective, written out: W4A8 output against the fp32 one."""
    out = awq.fake_a8(rows / s) @ awq.fake_w4(w * s).T
    return float(np.mean((out - rows @ w.T) ** 2))


@settings(max_examples=25, deadline=None)
@given(out_f=st.integers(1, 40), groups=st.sampled_from([(128, 1), (128, 2), (96, 1)]), outliers=st.integers(0, 4),
       seed=st.integers(0, 2**16))
def test_search_never_raises_the_calibration_error_of_round_to_nearest(out_f, groups, outliers, seed):
    rng = np.random.default_rng(seed)
    in_f = groups[0] * groups[1]
    w = rng.standard_t(5, (out_f, in_f)).astype(np.float32)
    w[:, rng.choice(in_f, outliers, replace=False)] *= 8
    rows = (rng.standard_normal((64, in_f)) * rng.lognormal(0, 1, in_f)).astype(np.float32)
    s, ratio = awq.search_scales(w, np.abs(rows).mean(axis=0), rows)
    assert s.shape == (in_f,) and s.dtype == np.float32 and np.isfinite(s).all() and (s > 0).all()
    assert calibration_error(w, rows, s) <= calibration_error(w, rows, np.ones(in_f, np.float32))
    if ratio is None:
        assert (s == 1).all()


def test_search_takes_large_weight_columns_out_of_their_groups_scale():
    """Four input columns with 8x weights (LLaMA's outlier channels): round to nearest gives every int4
    group holding one an 8x coarser step; the scales shrink those columns and cut the error."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    outliers = [3, 77, 130, 200]
    w[:, outliers] *= 8
    rows = rng.standard_normal((256, 256)).astype(np.float32)
    s, ratio = awq.search_scales(w, np.abs(rows).mean(axis=0), rows)
    assert ratio is not None
    others = np.delete(s, outliers)
    assert s[outliers].max() < 0.5 * np.median(others), (s[outliers], np.median(others))
    assert calibration_error(w, rows, s) < 0.5 * calibration_error(w, rows, np.ones(256, np.float32))


def test_tied_inputs_share_one_scale():
    cfg = small_config(num_heads=4, num_kv_heads=2)
    channel = _kv_channel(cfg)
    assert channel.shape == (256,) and channel.max() == 127
    assert (channel[:64] == channel[64:128]).all() and (channel[128:192] == np.arange(64, 128)).all()
    assert _kv_channel(small_config(num_heads=2, num_kv_heads=2)) is None
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 256)).astype(np.float32)
    rows = (rng.standard_normal((128, 256)) * rng.lognormal(0, 1, 256)).astype(np.float32)
    s, ratio = awq.search_scales(w, np.abs(rows).mean(axis=0), rows, channel)
    assert ratio is not None and len(np.unique(s)) > 1
    for c in range(128):
        assert len(set(s[channel == c].tolist())) == 1


def small_config(num_heads: int = 4, num_kv_heads: int = 2, bias: bool = True) -> DecoderConfig:
    return DecoderConfig(model_type="llama", vocab_size=100, hidden_size=256, intermediate_size=384, num_layers=1,
                         num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=64, rms_norm_eps=1e-5,
                         rope_theta=10000.0, max_position_embeddings=64, attention_bias=bias, bos_token_id=1,
                         eos_token_id=2)


@pytest.mark.parametrize("heads", [(4, 2), (4, 4)], ids=["gqa", "mha"])
def test_folded_scales_leave_the_layer_unchanged(heads):
    """``W diag(s)`` with ``1 / s`` in the norm gains and the v / up rows: the same layer output (fp32), with
    q/k/v biases, for grouped-query and plain multi-head attention."""
    cfg = small_config(*heads)
    rng = np.random.default_rng(2)
    c, kvd, qd, inter = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, cfg.num_heads * cfg.head_dim, \
        cfg.intermediate_size

    def linear(o: int, i: int, bias: bool = False) -> Linear:
        return Linear((rng.standard_normal((o, i)) * 0.05).astype(np.float32),
                      bias=(0.1 * rng.standard_normal(o)).astype(np.float32) if bias else None)

    layer = Layer((1 + 0.3 * rng.standard_normal(c)).astype(np.float32),
                  (1 + 0.3 * rng.standard_normal(c)).astype(np.float32),
                  q=linear(qd, c, True), k=linear(kvd, c, True), v=linear(kvd, c, True), o=linear(c, qd),
                  gate=linear(inter, c), up=linear(inter, c), down=linear(c, inter))
    widths = {"attn_in": c, "o_in": qd, "mlp_in": c, "down_in": inter}
    stats = {}
    for shared, width in widths.items():  # uneven inputs, so that the search keeps scales other than 1
        rows = (rng.standard_normal((96, width)) * rng.lognormal(0, 1.5, width)).astype(np.float32)
        st_ = _Input()
        st_.abs_sum, st_.count, st_.rows = np.abs(rows).sum(axis=0, dtype=np.float64), len(rows), [rows]
        stats[shared] = st_
    scaled, scales, ratios = _apply_awq(cfg, layer, stats)
    assert set(ratios) == set(widths) and any(r is not None for r in ratios.values())
    assert any(not np.allclose(s, 1) for s in scales.values())
    for part in _SHARED_INPUT:  # the original layer is left as it was
        assert getattr(scaled, part).w is not getattr(layer, part).w

    x = rng.standard_normal((2, 12, c)).astype(np.float32)
    shape = (2, cfg.num_kv_heads, 12, cfg.head_dim)
    positions = np.broadcast_to(np.arange(12), (2, 12)).copy()

    def run(lay: Layer) -> np.ndarray:
        return _prefill_block(cfg, decoder_numpy.NUMPY, lay, np.zeros(shape, np.float32), np.zeros(shape, np.float32),
                              x.copy(), positions, np.array([12, 9]))

    want, got = run(layer), run(scaled)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5 * np.abs(want).max())


CALIBRATION = {"source": "built-in remote-sensing text", "windows": 32, "tokens_per_window": 256, "text_windows": 3,
               "random_token_windows": 29}
SEARCH = {"grid": 20, "sample_rows": 512, "inputs": 8, "scaled_inputs": 5}


@pytest.mark.parametrize("record", [
    {"method": "rtn", "group": 128},
    {"method": "gptq", "group": 128, "damp": 0.01, "calibration": CALIBRATION},
    {"method": "awq", "group": 128, "calibration": CALIBRATION, "awq": SEARCH},
    {"method": "awq-gptq", "group": 128, "damp": 0.01, "calibration": CALIBRATION, "awq": SEARCH},
])
def test_quantization_record_accepts_each_method_with_its_own_fields(record):
    assert W4Quantization.model_validate(record).method == record["method"]


@pytest.mark.parametrize("record", [
    {"method": "rtn", "group": 128, "calibration": CALIBRATION},
    {"method": "awq", "group": 128, "calibration": CALIBRATION},  # no search record
    {"method": "awq", "group": 128, "damp": 0.01, "calibration": CALIBRATION, "awq": SEARCH},  # awq runs no GPTQ
    {"method": "gptq", "group": 128, "damp": 0.01, "calibration": CALIBRATION, "awq": SEARCH},
    {"method": "awq-gptq", "group": 128, "calibration": CALIBRATION, "awq": SEARCH},  # no damp
    {"method": "awq-gptq", "group": 128, "damp": 0.01, "awq": SEARCH},  # no calibration
    {"method": "awq", "group": 128, "calibration": CALIBRATION, "awq": {**SEARCH, "grid": 0}},
    {"method": "awq", "group": 128, "calibration": CALIBRATION, "awq": {**SEARCH, "scaled_inputs": -1}},
    {"method": "spqr", "group": 128},
])
def test_quantization_record_refuses_a_method_without_its_fields_or_with_anothers(record):
    with pytest.raises(ValidationError):
        W4Quantization.model_validate(record)
