"""w4 / w8 decoders against fp32 on a decoder with realistic weight statistics (issue 12's accuracy goal;
used by ``bench/bench_w4_accuracy.py`` and ``tests/test_w4_accuracy.py``).

The model (TinyLlama's proportions, scaled down: 4 layers, C 256, GQA 4/2 heads): heavy-tailed weights
(Student-t with 5 degrees of freedom, std 0.02), RMSNorm gains around 1; optionally ``outlier_inputs``: 4
input channels with 8x larger weights in every linear reading C inputs (LLaMA checkpoints' outlier
channels), and ``embedding_spectrum`` p > 0: token embeddings whose covariance eigenvalues decay as k^-2p in
a random basis (a trained model's embeddings and activations are far from isotropic; p = 1 is the
"realistic" setting, p = 0 a stress case of isotropic activations, where no calibration can help).
The measure: teacher-forced on the fp32 model's greedy tokens, the logits cosine of each of 32 decode
steps after a 16-token prompt, both decoders with the exporter's fp16 embeddings and lm_head, so that only
the linear layers differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends import decoder_numpy
from ..export.llava import decoder_tensors
from ..models.llava.config import DecoderConfig
from ..models.llava.decoder import LlamaDecoder
from ..models.llava.gptq import calibrated_decoder_w4
from ..models.llava.rotate import DecoderRotation, rotate_decoder
from ..models.llava.tensor_layout import decoder_layout

CONFIG = DecoderConfig(model_type="llama", vocab_size=1000, hidden_size=256, intermediate_size=768, num_layers=4,
                       num_heads=4, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                       max_position_embeddings=256, attention_bias=False, bos_token_id=1, eos_token_id=2)
METHODS = ("w8", "rtn", "gptq", "awq", "awq-gptq")  # w8, then the w4 methods of export's --w4-method


def realistic_tensors(seed: int, outlier_inputs: bool, embedding_spectrum: float = 0.0) -> dict[str, np.ndarray]:
    """fp32 decoder tensors of ``CONFIG`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    c = CONFIG.hidden_size
    outliers = rng.choice(c, size=4, replace=False)  # input channels with large weights in every layer

    def weight(out_f: int, in_f: int) -> np.ndarray:
        w = rng.standard_t(df=5, size=(out_f, in_f)) * (0.02 / np.sqrt(5 / 3))  # std 0.02
        if outlier_inputs and in_f == c:
            w[:, outliers] *= 8.0
        return w.astype(np.float32)

    embed = rng.standard_normal((CONFIG.vocab_size, c)) * 0.02
    if embedding_spectrum > 0:
        basis, _ = np.linalg.qr(np.random.default_rng(seed + 7).standard_normal((c, c)))
        spectrum = np.arange(1, c + 1) ** -embedding_spectrum
        embed = (embed * (spectrum * np.sqrt(c) / np.linalg.norm(spectrum))) @ basis.T
    return decoder_layout(CONFIG, embed=lambda: embed.astype(np.float32), lm_head=lambda: weight(CONFIG.vocab_size, c),
                          linear=weight, norm=lambda: (1 + 0.1 * rng.standard_normal(c)).astype(np.float32))


def exported(tensors: dict[str, np.ndarray], method: str, rotate: bool, seed: int) -> dict[str, np.ndarray]:
    """``tensors`` as export writes them with ``--weights w8`` (``method`` "w8") or ``--weights w4
    --w4-method method`` [``--rotate``]: every *_proj weight quantised by export's own code, the rest fp16,
    lm_head included (export would make it w8: kept fp16 so that only the layers' format differs). Calibrated
    methods run on 32 random-token sequences of 128 (other tokens than the evaluated prompt's)."""
    if rotate:
        tensors = rotate_decoder(CONFIG, tensors, DecoderRotation.seeded(CONFIG, 0), dtype=np.float32)
    layers = {name: w for name, w in tensors.items() if name.endswith("_proj.weight")}
    fmt = "w8" if method == "w8" else "w4"
    stored = {**{name: w.astype(np.float16) for name, w in tensors.items() if name not in layers},
              **decoder_tensors(layers, fmt)}
    if method not in ("w8", "rtn"):
        calibration = np.random.default_rng(seed + 100).integers(3, CONFIG.vocab_size, (32, 128))
        calibrated = calibrated_decoder_w4(CONFIG, tensors, calibration, method)
        for name, (packed, scale) in calibrated.layers.items():
            stored[name], stored[name + "_scale"] = packed, scale
        stored.update({name: t.astype(np.float16) for name, t in calibrated.tensors.items()})
    return stored


def teacher_forced_cosines(method: str, ops: Any, outlier_inputs: bool, seed: int = 0, rotate: bool = False,
                           embedding_spectrum: float = 0.0, prompt: int = 16, steps: int = 32) -> np.ndarray:
    """Per-step logits cosine (``steps``,) of the ``method`` decoder (run by op set ``ops``) against fp32."""
    tensors = realistic_tensors(seed, outlier_inputs, embedding_spectrum)
    reference = {k: v if k.endswith("_proj.weight") else v.astype(np.float16) for k, v in tensors.items()}
    ref = LlamaDecoder(CONFIG, reference, max_batch=1, max_seq=prompt + steps + 1, ops=decoder_numpy.NUMPY)
    low = LlamaDecoder(CONFIG, exported(tensors, method, rotate, seed), max_batch=1, max_seq=prompt + steps + 1,
                       ops=ops)
    ids = np.random.default_rng(seed + 1).integers(3, CONFIG.vocab_size, size=(1, prompt))
    a = ref.prefill(ref.embed_tokens(ids), np.array([prompt]))
    b = low.prefill(low.embed_tokens(ids), np.array([prompt]))
    cos = []
    for _ in range(steps):
        cos.append(float((a[0] @ b[0]) / (np.linalg.norm(a[0]) * np.linalg.norm(b[0]))))
        nxt = a.argmax(-1)  # the fp32 model's greedy token, fed to both
        a, b = ref.decode(nxt), low.decode(nxt)
    return np.array(cos)
