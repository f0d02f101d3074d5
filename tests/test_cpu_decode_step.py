"""The native decode step in one C++ call (``_C.CpuDecodeStep``, include/rsvlm_edge/cpu_decoder.h): the same logits,
bit for bit, as decoder.py's op-by-op ``decode_step`` over the native op set (its reference) for every weight
format, KV cache, batch and fusion of the projections; ``RSVLM_EDGE_DECODE_STEP`` chooses; every argument the
binding takes is checked (ValueError naming it, nothing written, the step usable afterwards)."""

from __future__ import annotations

import numpy as np
import pytest
from decoder_fixtures import small_tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from util import cpu_decoder_ops

from rsvlm_edge.errors import BackendError
from rsvlm_edge.models.llava.config import DecoderConfig
from rsvlm_edge.models.llava.decoder import LlamaDecoder


def config(hidden: int = 64, inter: int = 96, heads: int = 4, kv_heads: int = 2, head_dim: int = 16,
           layers: int = 2, bias: bool = False) -> DecoderConfig:
    return DecoderConfig(model_type="llama", vocab_size=101, hidden_size=hidden, intermediate_size=inter,
                         num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                         rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128, attention_bias=bias,
                         bos_token_id=1, eos_token_id=2)


def tensors(cfg: DecoderConfig, fmt: str, seed: int = 0) -> dict[str, np.ndarray]:
    t = small_tensors(cfg, "fp16" if fmt == "fp32" else fmt, seed=seed)
    if fmt == "fp32":
        t = {n: v.astype(np.float32) if v.dtype == np.float16 else v for n, v in t.items()}
    return t


def both_ways(dec: LlamaDecoder, lengths: list[int], steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits (steps, B, V) of greedy steps after one prefill: through the whole C++ step, then op by op."""
    assert dec.whole_step is not None
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, dec.config.vocab_size, size=(len(lengths), max(lengths)))
    whole_step, runs = dec.whole_step, []
    for step in (whole_step, None):
        dec.whole_step = step
        nxt = dec.prefill(dec.embed_tokens(ids), np.array(lengths)).argmax(-1)
        seq = []
        for _ in range(steps):
            logits = dec.decode(nxt)
            seq.append(logits.copy())
            nxt = logits.argmax(-1)
        runs.append(np.stack(seq))
    dec.whole_step = whole_step
    return runs[0], runs[1]


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "w8", "w4"])
@pytest.mark.parametrize("kv", ["auto", "int8"])
@pytest.mark.parametrize("memory", ["copy", "mapped"])  # copy: q/k/v and gate/up fused; mapped: apart
def test_whole_step_equals_op_by_op(monkeypatch, fmt, kv, memory):
    monkeypatch.setenv("RSVLM_EDGE_KV_CACHE", kv)
    monkeypatch.setenv("RSVLM_EDGE_WEIGHT_MEMORY", memory)
    # inter 3200: the fp16 / fp32 down projection runs as column blocks (K > MAX_BLOCK_INPUTS); w4 needs K % 128 == 0
    cfg = config(hidden=128, inter=3200 if fmt in ("fp16", "fp32") else 256, bias=fmt == "fp16")
    dec = LlamaDecoder(cfg, tensors(cfg, fmt), max_batch=3, max_seq=40, ops=cpu_decoder_ops("native"))
    fused = dec.layers[0].qkv is not None
    assert fused == (memory == "copy")
    for lengths in ([7], [9, 3, 14]):
        whole, ops = both_ways(dec, lengths, steps=4)
        assert np.isfinite(whole).all()
        np.testing.assert_array_equal(whole, ops)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(heads_per_kv=st.sampled_from([1, 2, 4]), kv_heads=st.integers(1, 3), head_dim=st.sampled_from([8, 16, 64]),
       lengths=st.lists(st.integers(1, 20), min_size=1, max_size=4), fmt=st.sampled_from(["fp16", "w8"]))
def test_any_shape_and_ragged_batch(monkeypatch, heads_per_kv, kv_heads, head_dim, lengths, fmt):
    monkeypatch.setenv("RSVLM_EDGE_KV_CACHE", "auto")
    cfg = config(hidden=128, inter=128, heads=heads_per_kv * kv_heads, kv_heads=kv_heads, head_dim=head_dim, layers=1)
    dec = LlamaDecoder(cfg, tensors(cfg, fmt), max_batch=4, max_seq=32, ops=cpu_decoder_ops("native"))
    whole, ops = both_ways(dec, lengths, steps=3)
    np.testing.assert_array_equal(whole, ops)


def test_the_environment_chooses(monkeypatch):
    cfg = config()
    ops = cpu_decoder_ops("native")
    monkeypatch.setenv("RSVLM_EDGE_DECODE_STEP", "ops")
    assert LlamaDecoder(cfg, tensors(cfg, "w8"), 1, 16, ops=ops).whole_step is None
    monkeypatch.setenv("RSVLM_EDGE_DECODE_STEP", "whole")
    assert LlamaDecoder(cfg, tensors(cfg, "w8"), 1, 16, ops=ops).whole_step is not None
    monkeypatch.setenv("RSVLM_EDGE_DECODE_STEP", "fast")
    with pytest.raises(BackendError, match="RSVLM_EDGE_DECODE_STEP") as e:
        LlamaDecoder(cfg, tensors(cfg, "w8"), 1, 16, ops=ops)
    assert "whole" in e.value.fix


def test_the_numpy_op_set_has_no_whole_step():
    cfg = config()
    assert LlamaDecoder(cfg, tensors(cfg, "w8"), 1, 16, ops=cpu_decoder_ops("numpy")).whole_step is None


# ---- the binding's arguments: each bad one is a ValueError naming it; nothing is written ----

@pytest.fixture()
def parts(monkeypatch):
    """(cfg, the arguments of a valid CpuDecodeStep as whole_decode_step builds them, the decoder)."""
    monkeypatch.setenv("RSVLM_EDGE_KV_CACHE", "auto")
    cfg = config()
    dec = LlamaDecoder(cfg, tensors(cfg, "w8"), max_batch=2, max_seq=16, ops=cpu_decoder_ops("native"))
    w = dec.weights

    def lin(layer):
        return None if layer is None else {"w": layer.w, "scale": layer.scale, "bias": layer.bias}

    layers = [dict(input_norm=lay.input_norm, post_norm=lay.post_norm, qkv=lin(lay.qkv), o=lin(lay.o),
                   gate_up=lin(lay.gate_up), down=lin(lay.down), k_cache=dec.cache.k[i], v_cache=dec.cache.v[i])
              for i, lay in enumerate(w.layers)]
    shape = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                 num_layers=cfg.num_layers, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                 head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta)
    return cfg, dict(shape=shape, max_batch=2, layers=layers, final_norm=w.norm, lm_head=lin(w.lm_head)), dec


def make(args):
    from rsvlm_edge import _C

    return _C.CpuDecodeStep(args["shape"], args["max_batch"], args["layers"], args["final_norm"], args["lm_head"])


def broken(args, path, value):
    """A copy of args (its dicts copied along ``path``) with the item at ``path`` set to ``value`` (removed when
    ``value`` is KeyError; ``value(old)`` when callable)."""
    out = dict(args, shape=dict(args["shape"]), layers=[dict(lay) for lay in args["layers"]],
               lm_head=dict(args["lm_head"]))
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return out


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


CASES = {
    "a missing shape entry": (("shape", "vocab_size"), KeyError, "vocab_size"),
    "zero layers in the shape": (("shape", "num_layers"), 0, "num_layers"),
    "more layers in the shape than given": (("shape", "num_layers"), 3, "3 layers expected, got 2"),
    "heads not a multiple of the KV heads": (("shape", "num_kv_heads"), 3, "num_kv_heads"),
    "a wrong hidden size": (("shape", "hidden_size"), 32, "input_norm"),
    "a norm of the wrong dtype": (("layers", 0, "input_norm"), np.ones(64, np.float64), "input_norm"),
    "no q/k/v at all": (("layers", 1, "qkv"), None, "layer 1 q: no weights"),
    "a projection that is not a dict": (("layers", 0, "o"), np.ones((64, 64), np.float32), "layer 0 o must be a dict"),
    "a projection of the wrong size": (("layers", 0, "o"), {"w": np.ones((64, 32), np.int8),
                                                           "scale": np.ones((64, 1), np.float32)}, "layer 0 o"),
    "quantised weights without scales": (("layers", 0, "o"), {"w": np.ones((64, 64), np.int8)}, "need their scales"),
    "float weights with scales": (("layers", 0, "o"), {"w": np.ones((64, 64), np.float32),
                                                      "scale": np.ones((64, 1), np.float32)}, "take no scales"),
    "int16 weights": (("layers", 0, "o"), {"w": np.ones((64, 64), np.int16)}, "layer 0 o weights"),
    "big-endian weights": (("layers", 0, "o"), {"w": np.ones((64, 64), ">f4")}, "layer 0 o weights.*>f4"),
    "a big-endian norm": (("layers", 0, "input_norm"), np.ones(64, ">f4"), "input_norm"),
    "transposed (non-contiguous) weights": (("layers", 0, "o"), {"w": np.ones((64, 64), np.float32).T},
                                            "C-contiguous"),
    "scales of the wrong row count": (("layers", 0, "o"), {"w": np.ones((64, 64), np.int8),
                                                          "scale": np.ones((63, 1), np.float32)}, "64 rows expected"),
    "scale groups that do not divide K": (("layers", 0, "o"), {"w": np.ones((64, 64), np.int8),
                                                              "scale": np.ones((64, 3), np.float32)}, "groups"),
    "scale groups of fewer than 128 inputs": (("layers", 0, "o"), {"w": np.ones((64, 64), np.int8),
                                                                  "scale": np.ones((64, 2), np.float32)}, "groups"),
    "a bias of the wrong length": (("layers", 0, "o"), {"w": np.ones((64, 64), np.float32),
                                                       "bias": np.ones(5, np.float32)}, "bias"),
    "a missing cache": (("layers", 0, "k_cache"), KeyError, "k_cache"),
    "a read-only cache": (("layers", 0, "v_cache"), read_only, "writable"),
    "a k_cache unlike its v_cache": (("layers", 1, "k_cache"), np.zeros((2, 2, 16, 8), np.float32), "k_cache's shape"),
    "an int8 k_cache beside a float32 v_cache": (("layers", 0, "k_cache"), np.zeros((2, 2, 16, 16), np.int8),
                                                 "v_cache must be a 4-D int8"),
    "a 3-D cache": (("layers", 0, "k_cache"), np.zeros((2, 16, 16), np.float32), "k_cache must be a 4-D"),
    "lm_head of the wrong vocabulary": (("lm_head", "w"), np.ones((100, 64), np.int8), "lm_head"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_construction_argument_is_a_value_error(parts, case):
    _, args, _ = parts
    path, value, match = CASES[case]
    with pytest.raises(ValueError, match=match):
        make(broken(args, path, value))


def test_mismatched_caches_and_a_wrong_size_cache_are_refused(parts):
    _, args, _ = parts
    good = args["layers"][0]
    for k, v, match in [(np.zeros((2, 2, 16, 8), np.float32), np.zeros((2, 2, 16, 8), np.float32), "H_kv 2 x D 16"),
                        (np.zeros((1, 2, 16, 16), np.float32), np.zeros((1, 2, 16, 16), np.float32), "max_batch 2"),
                        (np.zeros((2, 2, 16, 16), np.int8), np.zeros((2, 2, 16, 16), np.int8), "k_scale"),
                        (good["k_cache"], np.zeros((2, 2, 15, 16), np.float32), "k_cache's shape")]:
        with pytest.raises(ValueError, match=match):
            make(broken(broken(args, ("layers", 0, "k_cache"), k), ("layers", 0, "v_cache"), v))


def test_one_array_as_k_cache_and_v_cache_is_refused(parts):
    _, args, _ = parts
    with pytest.raises(ValueError, match="share memory"):
        make(broken(args, ("layers", 0, "v_cache"), args["layers"][0]["k_cache"]))


def test_bad_run_arguments_write_nothing_and_leave_the_step_usable(parts):
    cfg, args, dec = parts
    step = make(args)
    x = dec.embed_tokens(np.array([5, 6]))
    logits = np.full((2, cfg.vocab_size), np.nan, np.float32)
    before = [a.copy() for a in (dec.cache.k, dec.cache.v)]
    bad = {
        "batch beyond max_batch": (np.zeros((3, 64), np.float32), np.zeros(3, np.int64), np.zeros((3, 101), np.float32),
                                   "max_batch"),
        "x of the wrong width": (np.zeros((2, 63), np.float32), np.zeros(2, np.int64), logits, "x must be"),
        "float64 x": (x.astype(np.float64), np.zeros(2, np.int64), logits, "x must be"),
        "positions of the wrong length": (x.copy(), np.zeros(3, np.int64), logits, "positions"),
        "a position past the cache": (x.copy(), np.array([0, 16]), logits, "outside the KV cache"),
        "a negative position": (x.copy(), np.array([-1, 0]), logits, r"value -1 at \[0\], outside \[0, 2\^31-1\]"),
        "a position beyond int32": (x.copy(), np.array([0, 2**40]), logits, r"value 1099511627776 at \[1\], outside"),
        "float positions": (x.copy(), np.array([0.0, 1.5]), logits, "positions.*must be an integer array"),
        "logits of the wrong vocabulary": (x.copy(), np.zeros(2, np.int64), np.zeros((2, 100), np.float32), "logits"),
        "read-only logits": (x.copy(), np.zeros(2, np.int64), read_only(np.zeros((2, 101), np.float32)), "writable"),
    }
    for name, (xa, pos, out, match) in bad.items():
        x_before = xa.copy()
        with pytest.raises(ValueError, match=match):
            step.run(xa, pos, out)
        assert np.array_equal(xa, x_before), name
    from rsvlm_edge import _C

    with pytest.raises(_C.CapacityError, match="outside the KV cache"):  # a full cache: a ValueError of its own kind
        step.run(x.copy(), np.array([16, 0]), logits)
    assert np.isnan(logits).all()
    for a, b in zip(before, (dec.cache.k, dec.cache.v)):
        np.testing.assert_array_equal(a, b)
    step.run(x, np.array([0, 0]), logits)  # still usable
    assert np.isfinite(logits).all()


def test_x_and_logits_sharing_memory_is_refused(parts):
    cfg, args, _ = parts
    step = make(args)
    buf = np.zeros(2 * 101 + 64, np.float32)
    x = buf[:128].reshape(2, 64)
    logits = buf[64:64 + 202].reshape(2, 101)
    with pytest.raises(ValueError, match="share memory"):
        step.run(x, np.zeros(2, np.int64), logits)


def test_a_step_the_weights_do_not_fit_is_a_backend_error_with_its_fix(parts):
    from dataclasses import replace

    from rsvlm_edge.backends.decoder_native import whole_decode_step

    cfg, _, dec = parts
    with pytest.raises(BackendError, match="native decode step could not be set up.*lm_head") as e:
        whole_decode_step(replace(cfg, vocab_size=cfg.vocab_size + 1), dec.weights, dec.cache, False)
    assert "RSVLM_EDGE_DECODE_STEP=ops" in e.value.fix
