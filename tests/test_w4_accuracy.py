"""w4 / w8 against fp32 on a decoder with realistic weight statistics: heavy-tailed weights (Student-t
with 5 degrees of freedom, std 0.02), RMSNorm gains around 1, and optionally a few input channels with 8x
larger weights in every layer (the outlier channels of LLaMA checkpoints) and token embeddings with a
decaying spectrum (the anisotropic activations of trained models). Teacher-forced on the fp32 model's
greedy tokens for 32 decode steps, the minimum per-step logits cosine is measured.

Measured (2026-11-26, native kernels; worst step of 32):
    isotropic embeddings, heavy-tailed:          w8 0.9992, w4 RTN 0.933, w4 GPTQ 0.929
    isotropic embeddings, + outlier inputs:      w8 0.9972, w4 RTN 0.742, w4 GPTQ 0.765
    anisotropic embeddings, heavy-tailed:        w4 RTN 0.897, w4 GPTQ 0.985
    anisotropic embeddings, + outlier inputs:    w4 RTN 0.747, w4 GPTQ 0.902
Issue 12's w4 goal (>= 0.98) is reached only by GPTQ (export --w4-method gptq) and only where activations
are anisotropic, as a trained model's are; round-to-nearest int4 in groups of 128 misses it everywhere, and
GPTQ cannot help where inputs are isotropic (its Hessian is then a multiple of the identity). The tests
guard w8 at the goal (>= 0.995), RTN w4 at today's level, and GPTQ's gain."""

from __future__ import annotations

import numpy as np
import pytest
from decoder_fixtures import decoder_layout
from util import cpu_decoder_ops

from rsvlm_edge.backends import decoder_numpy
from rsvlm_edge.export.llava import decoder_tensors
from rsvlm_edge.models.llava.config import DecoderConfig
from rsvlm_edge.models.llava.decoder import LlamaDecoder
from rsvlm_edge.models.llava.gptq import calibrated_decoder_w4

CFG = DecoderConfig(model_type="llama", vocab_size=1000, hidden_size=256, intermediate_size=768, num_layers=4,
                    num_heads=4, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                    max_position_embeddings=256, attention_bias=False, bos_token_id=1, eos_token_id=2)


def realistic_tensors(seed: int, outlier_inputs: bool, embedding_spectrum: float = 0.0) -> dict[str, np.ndarray]:
    """``embedding_spectrum`` > 0: token embeddings with covariance eigenvalues decaying as k^-2p in a random
    basis (a trained model's embeddings and activations are far from isotropic; GPTQ exploits that)."""
    rng = np.random.default_rng(seed)
    c = CFG.hidden_size
    outliers = rng.choice(c, size=4, replace=False)  # input channels with large weights in every layer

    def weight(out_f: int, in_f: int) -> np.ndarray:
        w = rng.standard_t(df=5, size=(out_f, in_f)) * (0.02 / np.sqrt(5 / 3))  # std 0.02
        if outlier_inputs and in_f == c:
            w[:, outliers] *= 8.0
        return w.astype(np.float32)

    embed = rng.standard_normal((CFG.vocab_size, c)) * 0.02
    if embedding_spectrum > 0:
        basis, _ = np.linalg.qr(np.random.default_rng(seed + 7).standard_normal((c, c)))
        spectrum = np.arange(1, c + 1) ** -embedding_spectrum
        embed = (embed * (spectrum * np.sqrt(c) / np.linalg.norm(spectrum))) @ basis.T
    return decoder_layout(CFG, embed=lambda: embed.astype(np.float32), lm_head=lambda: weight(CFG.vocab_size, c),
                          linear=weight, norm=lambda: (1 + 0.1 * rng.standard_normal(c)).astype(np.float32))


def quantised(tensors: dict[str, np.ndarray], fmt: str) -> dict[str, np.ndarray]:
    """Every *_proj weight quantised by the exporter's own rule (export's ``decoder_tensors``); the rest fp16,
    lm_head included (the exporter would make it w8: kept fp16 so that only the layers' format differs)."""
    layers = {name: w for name, w in tensors.items() if name.endswith("_proj.weight")}
    return {**{name: w.astype(np.float16) for name, w in tensors.items() if name not in layers},
            **decoder_tensors(layers, fmt)}


def teacher_forced_cosines(fmt: str, backend: str, outlier_inputs: bool, seed: int = 0, prompt: int = 16,
                           steps: int = 32, embedding_spectrum: float = 0.0, method: str = "rtn") -> np.ndarray:
    """Per-step logits cosine of the `fmt` decoder against the fp32 one (both with the exporter's fp16
    embeddings and lm_head, so that only the linear layers' format differs). ``gptq``: w4 layers by GPTQ
    calibrated on 32 random-token sequences of 128 (other tokens than the evaluated prompt's)."""
    tensors = realistic_tensors(seed, outlier_inputs, embedding_spectrum)
    reference = {k: v if k.endswith("_proj.weight") else v.astype(np.float16) for k, v in tensors.items()}
    ref = LlamaDecoder(CFG, reference, max_batch=1, max_seq=prompt + steps + 1, ops=decoder_numpy.NUMPY)
    stored = quantised(tensors, fmt)
    if method != "rtn":
        calibration = np.random.default_rng(seed + 100).integers(3, CFG.vocab_size, (32, 128))
        calibrated = calibrated_decoder_w4(CFG, tensors, calibration, method)
        for name, (packed, scale) in calibrated.layers.items():
            stored[name], stored[name + "_scale"] = packed, scale
        stored.update({name: t.astype(np.float16) for name, t in calibrated.tensors.items()})
    low = LlamaDecoder(CFG, stored, max_batch=1, max_seq=prompt + steps + 1, ops=cpu_decoder_ops(backend))
    ids = np.random.default_rng(seed + 1).integers(3, CFG.vocab_size, size=(1, prompt))
    a = ref.prefill(ref.embed_tokens(ids), np.array([prompt]))
    b = low.prefill(low.embed_tokens(ids), np.array([prompt]))
    cos = []
    for _ in range(steps):
        cos.append(float((a[0] @ b[0]) / (np.linalg.norm(a[0]) * np.linalg.norm(b[0]))))
        nxt = a.argmax(-1)  # the fp32 model's greedy token, fed to both
        a, b = ref.decode(nxt), low.decode(nxt)
    return np.array(cos)


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_w4_logits_over_32_steps_hold_todays_level(backend):
    cos = teacher_forced_cosines("w4", backend, outlier_inputs=False)
    assert cos.min() >= 0.90, cos.round(4).tolist()  # measured 0.913; the goal 0.98 needs AWQ/GPTQ


@pytest.mark.parametrize("outlier_inputs", [False, True], ids=["heavy-tailed", "outlier-inputs"])
def test_w8_logits_stay_close_to_fp32_over_32_steps(outlier_inputs):
    cos = teacher_forced_cosines("w8", "native", outlier_inputs)
    assert cos.min() >= 0.995, cos.round(4).tolist()


@pytest.mark.parametrize("outlier_inputs, floor, gain", [(False, 0.975, 0.05), (True, 0.88, 0.1)],
                         ids=["heavy-tailed", "outlier-inputs"])
def test_w4_gptq_beats_round_to_nearest_when_activations_are_anisotropic(outlier_inputs, floor, gain):
    """Embeddings with a decaying spectrum (power 1), worst of 32 steps: GPTQ 0.985 vs RTN 0.897
    (heavy-tailed), 0.902 vs 0.747 (outlier inputs); the floors leave room for BLAS rounding only."""
    rtn = teacher_forced_cosines("w4", "native", outlier_inputs, embedding_spectrum=1.0)
    gptq = teacher_forced_cosines("w4", "native", outlier_inputs, embedding_spectrum=1.0, method="gptq")
    assert gptq.min() >= floor and gptq.min() >= rtn.min() + gain, (gptq.min(), rtn.min())
