"""top_p_sample (kernels/top_p_sample/, csrc/bind_top_p_sample.cpp): the fast CPU path and the naive reference against
the numpy definition (models/llava/generation.py: sample_with_uniforms, what the runtime samples with), on
peaked, flat, tied and overflowing logits; the CUDA kernel against the reference on a GPU (draws placed at the
middle of the chosen token's cdf step, so that fp32 sums cannot move it); bad arguments refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsvlm_edge.models.llava.generation import sample_next, sample_with_uniforms

C = pytest.importorskip("rsvlm_edge._C")


def logits_of(kind: str, batch: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "peaked":
        x = rng.standard_normal((batch, vocab)) * 4.0
    elif kind == "flat":
        x = rng.standard_normal((batch, vocab)) * 0.05
    elif kind == "ties":
        x = rng.integers(0, 3, (batch, vocab)).astype(np.float64)
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", ["peaked", "flat", "ties"])
@pytest.mark.parametrize("vocab", [1, 7, 1000, 32000])
@pytest.mark.parametrize("temperature, top_p", [(0.7, 0.9), (1.0, 1.0), (1.5, 0.3), (0.2, 0.999), (1.0, 1e-6)])
def test_native_sampling_matches_the_numpy_rule(kind, vocab, temperature, top_p):
    logits = logits_of(kind, 6, vocab, seed=vocab)
    u = np.random.default_rng(1).random(6).astype(np.float32)
    want = sample_with_uniforms(logits, temperature, top_p, u.astype(np.float64))
    for fn in (C.top_p_sample, C.top_p_sample_reference):
        out = np.full(6, -7, np.int64)
        assert fn(logits, u, temperature, top_p, out=out) is out
        np.testing.assert_array_equal(out, want, err_msg=fn.__name__)


def test_greedy_and_the_greedy_limit_are_numpys_argmax():
    logits = logits_of("peaked", 4, 50)
    logits[1, [3, 9]] = logits[1].max() + 1.0  # a tie at the maximum: the first
    logits[2, 17] = np.nan  # numpy's argmax: the first NaN
    logits[3, 5] = np.inf
    for fn in (C.top_p_sample, C.top_p_sample_reference):
        np.testing.assert_array_equal(fn(logits, None, 0.0), np.argmax(logits, axis=1))
        u = np.full(4, 0.5, np.float32)
        np.testing.assert_array_equal(fn(logits, u, 1e-30, 0.9), sample_with_uniforms(logits, 1e-30, 0.9, u))
        # a NaN or +inf logit: the softmax is not finite, the row takes numpy's argmax
        assert list(fn(logits, u, 0.8, 0.9)[2:]) == [17, 5]
    all_masked = np.full((1, 8), -np.inf, np.float32)
    assert C.top_p_sample(all_masked, np.array([0.3], np.float32), 1.0)[0] == 0 == sample_next(
        all_masked, 1.0, 1.0, np.random.default_rng(0))[0]


def test_the_draw_walks_the_nucleus_in_probability_order():
    logits = np.log(np.array([[0.1, 0.5, 0.15, 0.25]], np.float32))
    picks = {float(u): int(C.top_p_sample(logits, np.array([u], np.float32), 1.0, 0.7)[0])
             for u in (0.0, 0.6, 0.66, 0.7, 0.99)}
    # nucleus: 0.5 (token 1) + 0.25 (token 3) >= 0.7; cdf over it: 0.667, 1.0
    assert picks == {0.0: 1, 0.6: 1, 0.66: 1, 0.7: 3, 0.99: 3}


@settings(max_examples=60, deadline=None)
@given(vocab=st.integers(1, 300), temperature=st.floats(0.05, 5.0), top_p=st.floats(1e-3, 1.0),
       seed=st.integers(0, 2**31), scale=st.sampled_from([0.01, 1.0, 30.0]))
def test_property_fast_path_reference_and_numpy_agree(vocab, temperature, top_p, seed, scale):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((3, vocab)) * scale).astype(np.float32)
    u = rng.random(3).astype(np.float32)
    want = sample_with_uniforms(logits, temperature, top_p, u.astype(np.float64))
    np.testing.assert_array_equal(C.top_p_sample(logits, u, temperature, top_p), want)
    np.testing.assert_array_equal(C.top_p_sample_reference(logits, u, temperature, top_p), want)


def test_bad_arguments_are_refused():
    logits = logits_of("peaked", 2, 10)
    u = np.array([0.1, 0.2], np.float32)
    for fn in (C.top_p_sample, C.top_p_sample_reference):
        with pytest.raises(ValueError, match=r"argument 'uniforms' \(one draw in \[0, 1\) per row\) is required"):
            fn(logits, None, 1.0)
        with pytest.raises(ValueError, match=r"argument 'uniforms' must have shape \(B=2,\) float32"):
            fn(logits, np.array([0.1], np.float32), 1.0)
        with pytest.raises(ValueError, match=r"must hold draws in \[0, 1\), got 1\.0+ at row 1"):
            fn(logits, np.array([0.1, 1.0], np.float32), 1.0)
        with pytest.raises(ValueError, match=r"must hold draws in \[0, 1\), got nan"):
            fn(logits, np.array([np.nan, 0.1], np.float32), 1.0)
        with pytest.raises(ValueError, match=r"argument 'top_p' must be in \(0, 1\]"):
            fn(logits, u, 1.0, 0.0)
        with pytest.raises(ValueError, match=r"argument 'top_p' must be in \(0, 1\]"):
            fn(logits, u, 1.0, 1.5)
        with pytest.raises(ValueError, match=r"argument 'temperature' is NaN"):
            fn(logits, u, float("nan"))
        with pytest.raises(ValueError, match=r"argument 'logits' must have shape \(B, V\) float32"):
            fn(logits.astype(np.float16), u, 1.0)
        with pytest.raises(ValueError, match=r"argument 'out' must have shape \(B=2,\) int64"):
            fn(logits, u, 1.0, out=np.zeros(2, np.int32))
        assert fn(np.zeros((0, 5), np.float32), np.zeros(0, np.float32), 1.0).shape == (0,)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["peaked", "flat", "ties"])
@pytest.mark.parametrize("temperature, top_p", [(0.7, 0.9), (1.0, 1.0), (1.3, 0.4), (0.0, 1.0)])
def test_cuda_sampling_matches_the_reference(cuda_device, kind, temperature, top_p):
    from kernel_testing import cuda_torch

    torch = cuda_torch()
    batch, vocab = 5, 32000
    logits = logits_of(kind, batch, vocab, seed=3)
    logits[4, 11] = np.nan  # the greedy limit on this row
    # Draws in the middle of a cdf step of the reference's order: fp32 sums on the GPU cannot cross a step.
    # Rows whose nucleus boundary lies within 1e-5 of top_p could keep one token more or less in fp32: those are
    # left out of the comparison (flat rows have steps of ~3e-5).
    u = np.empty(batch, np.float32)
    decided = np.ones(batch, bool)
    rng = np.random.default_rng(5)
    for b in range(batch):
        if np.isnan(logits[b]).any():
            u[b] = 0.5  # the row takes the argmax whatever the draw
            continue
        z = logits[b].astype(np.float64) / max(temperature, 1e-9)
        p = np.exp(z - np.nanmax(z))
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = min(int(np.searchsorted(cum, top_p) + 1), vocab) if top_p < 1 else vocab
        if top_p < 1 and temperature > 0:
            decided[b] = abs(cum[keep - 1] - top_p) > 1e-5 and (keep < 2 or abs(top_p - cum[keep - 2]) > 1e-5)
        cdf = cum[:keep] / cum[keep - 1]
        j = int(rng.integers(0, keep))
        lo = cdf[j - 1] if j else 0.0
        u[b] = np.float32((lo + cdf[j]) / 2)
    want = C.top_p_sample_reference(logits, u, temperature, top_p)
    out = torch.full((batch,), -1, dtype=torch.int64, device="cuda")
    C.top_p_sample(torch.from_numpy(logits).cuda(), torch.from_numpy(u).cuda(), temperature, top_p, out=out)
    torch.cuda.synchronize()
    assert decided.sum() >= 3
    np.testing.assert_array_equal(out.cpu().numpy()[decided], want[decided])


def test_the_native_op_set_samples_by_the_numpy_rule_and_takes_float64_draws():
    from rsvlm_edge.backends import open_decoder
    from rsvlm_edge.backends.decoder_numpy import top_p_sample

    native = open_decoder("native")
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((4, 2000)) * 2).astype(np.float32)
    u = rng.random(4).astype(np.float32).astype(np.float64)  # representable in float32: no rounding at the kernel
    np.testing.assert_array_equal(native.top_p_sample(logits, u, 0.9, 0.8), top_p_sample(logits, u, 0.9, 0.8))
    just_below_one = np.full(4, np.nextafter(1.0, 0.0))  # float64: would round up to 1.0 in float32
    np.testing.assert_array_equal(native.top_p_sample(logits, just_below_one, 0.9, 0.8),
                                  top_p_sample(logits, just_below_one, 0.9, 0.8))
    np.testing.assert_array_equal(native.top_p_sample(logits, None, 0.0, 1.0), np.argmax(logits, axis=1))


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_cpu_decoder_samples_its_own_logits(backend):
    """LlamaDecoder.decode_sample: the step, then the op set's top_p_sample (what run_generation calls when
    sampling): the same ids as decode + the numpy rule on a decoder in lockstep."""
    from decoder_fixtures import small_tensors
    from test_cuda_decoder import prompts, small_config

    from rsvlm_edge.models.llava.decoder import LlamaDecoder

    cfg = small_config()
    tensors = small_tensors(cfg)
    ids, lens, _ = prompts(cfg, [9, 14])
    a, b = (LlamaDecoder(cfg, tensors, 2, 48, backend=backend) for _ in range(2))
    embeds = a.embed_tokens(ids)
    nxt = a.prefill(embeds, lens).argmax(axis=1)
    b.prefill(embeds, lens)
    rng = np.random.default_rng(3)
    for _ in range(6):
        u = rng.random(2).astype(np.float32).astype(np.float64)
        want = sample_with_uniforms(a.decode(nxt), 0.7, 0.95, u)
        np.testing.assert_array_equal(b.decode_sample(nxt, 0.7, 0.95, u), want)
        nxt = want
