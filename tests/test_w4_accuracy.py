"""w4 / w8 against fp32 on decoders with realistic weight statistics (rsvlm_edge/bench/w4_accuracy.py:
heavy-tailed weights, outlier input channels, anisotropic or isotropic embeddings; worst logits cosine of
32 teacher-forced decode steps). bench/bench_w4_accuracy.py measures every method over many seeded models
(bench/RESULTS.md); these tests hold the levels measured on a few of them.

Issue 12's goal, w4 >= 0.98 at every step, is met by ``export --weights w4 --rotate --w4-method gptq`` on
the realistic models (anisotropic embeddings, with and without outlier input channels); round-to-nearest
int4 in groups of 128 misses it everywhere, and no method reaches it when activations are isotropic (the
stress case: GPTQ's statistics are then a multiple of the identity, AWQ's a constant)."""

from __future__ import annotations

import pytest
from util import cpu_decoder_ops

from rsvlm_edge.bench.w4_accuracy import teacher_forced_cosines


def worst(method: str, outliers: bool, seed: int = 0, rotate: bool = False, spectrum: float = 1.0,
          backend: str = "native") -> float:
    return float(teacher_forced_cosines(method, cpu_decoder_ops(backend), outliers, seed=seed, rotate=rotate,
                                        embedding_spectrum=spectrum).min())


@pytest.mark.parametrize("rotate", [False, True], ids=["plain", "rotated"])
@pytest.mark.parametrize("outliers", [False, True], ids=["heavy-tailed", "outlier-inputs"])
def test_w8_stays_close_to_fp32(outliers, rotate):
    assert worst("w8", outliers, rotate=rotate, spectrum=0.0) >= 0.995  # measured 0.997-0.9997 (seed 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("outliers", [False, True], ids=["heavy-tailed", "outlier-inputs"])
def test_w4_rotated_gptq_meets_the_goal_on_realistic_models(outliers, seed):
    assert worst("gptq", outliers, seed=seed, rotate=True) >= 0.98  # measured 0.984-0.994 on these six


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_w4_round_to_nearest_holds_todays_level(backend):
    assert worst("rtn", False, backend=backend) >= 0.83  # measured 0.855 (native)


def test_awq_takes_the_outlier_channels_out_of_the_int4_groups():
    """Without rotation, the outlier input channels set the scale of every int4 group holding one; AWQ's
    scales shrink them first (GPTQ alone cannot: its statistics know nothing of the weights' magnitudes)."""
    gptq, awq_gptq = worst("gptq", True), worst("awq-gptq", True)
    assert awq_gptq >= 0.985 and awq_gptq >= gptq + 0.03, (awq_gptq, gptq)  # measured 0.9915 vs 0.945


def test_rotation_spreads_the_outlier_channels():
    plain, rotated = worst("rtn", True), worst("rtn", True, rotate=True)
    assert rotated >= plain + 0.1, (rotated, plain)  # measured 0.970 vs 0.821
