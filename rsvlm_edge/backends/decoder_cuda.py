"""The ``cuda`` decoder backend: the whole LLaMA decoder on one NVIDIA GPU (``rsvlm_edge._C.CudaDecoder``,
C++ in ``kernels/decoder/cuda_decoder.cu``).

Unlike the op-set backends (``numpy``, ``native``), which run ``decoder.py``'s step functions one op
at a time from Python, this backend runs whole prefill and decode steps on the device: weights are
uploaded once in their stored precision (fp16; w8 / w4 stay int8 / packed int4 and run as qlinear),
the KV cache lives on the GPU, each decode step is replayed from a CUDA graph, and only token ids go
up and logits (or greedy ids) come back. ``CudaLlamaDecoder`` has ``LlamaDecoder``'s interface, so the
generation loop and the runtime do not know which one they drive.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import BackendError
from ..models.llava.decoder import check_prompts, check_room
from .decoder_numpy import OP_NAMES
from .registry import BackendSpec, Probe, probe_cuda_ext, register

CUDA_HEAD_DIMS = (64, 80, 96, 128)  # head dims the CUDA attention kernel is compiled for


def _ext() -> Any:
    from ..native import _c  # checks the environment the library reads (RSVLM_EDGE_CUDA_PDL among it)

    return _c()


def canonical_names(config: Any, tensors: dict[str, np.ndarray]) -> list[str]:
    """The decoder.safetensors names the decoder of ``config`` reads, in upload order (scales and
    biases only where ``tensors`` has them)."""
    names = ["embed_tokens.weight", "norm.weight"]
    linears = ["lm_head"]
    for i in range(config.num_layers):
        p = f"layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        linears += [p + n for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")]
    for lin in linears:
        names += [f"{lin}.{part}" for part in ("weight", "weight_scale", "bias") if part == "weight" or f"{lin}.{part}" in tensors]
    return names


class CudaLlamaDecoder:
    """``LlamaDecoder``'s interface (prefill / decode / embed_tokens, max_batch, max_seq,
    weight_bytes, ops) over ``rsvlm_edge._C.CudaDecoder``."""

    def __init__(self, config: Any, tensors: dict[str, np.ndarray], max_batch: int, max_seq: int, ops: Any) -> None:
        from ..models.llava.decoder import DecoderWeights

        if config.head_dim not in CUDA_HEAD_DIMS:
            raise BackendError(f"the cuda decoder backend runs head_dim {'/'.join(map(str, CUDA_HEAD_DIMS))}, "
                               f"this decoder has {config.head_dim}", "use --backend native")
        # The CPU path's checks first (presence, dtypes, shapes, the w8 range), with its error messages;
        # its host arrays stay memory-mapped views: the embedding table serves embed_tokens.
        self.weights = DecoderWeights.from_tensors(config, tensors, half_weights=True)
        self.config = config
        self.ops = ops
        shape = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                     intermediate_size=config.intermediate_size, num_layers=config.num_layers,
                     num_heads=config.num_heads, num_kv_heads=config.num_kv_heads, head_dim=config.head_dim,
                     rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta)
        from ..native import kv_cache_int8, kv_pool_tokens

        kv_cache = "int8" if kv_cache_int8() else "fp16"
        pool = kv_pool_tokens()
        try:
            self.device = _ext().CudaDecoder(shape, int(max_batch), int(max_seq), kv_cache=kv_cache,
                                             kv_pool_tokens=pool)
            for name in canonical_names(config, tensors):
                self.device.set_tensor(name, tensors[name])
            self.device.check_complete()
        except RuntimeError as e:
            raise BackendError(f"the cuda decoder could not be set up: {e}",
                               "check `nvidia-smi` and free GPU memory, or use --backend native") from None

    @property
    def max_batch(self) -> int:
        return int(self.device.max_batch)

    @property
    def max_seq(self) -> int:
        return int(self.device.max_seq)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads on the device."""
        return int(self.device.step_weight_bytes)

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        return self.weights.embed_tokens(ids)

    def prefill(self, embeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        lengths = check_prompts(embeds, lengths, self.max_batch, self.max_seq)
        return self._on_device(self.device.prefill, np.ascontiguousarray(embeds, dtype=np.float32), lengths)

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        check_room(self.device.lengths, self.max_seq)
        logits, _ = self._on_device(self.device.decode, np.asarray(token_ids, dtype=np.int64))
        return logits

    def decode_greedy(self, token_ids: np.ndarray) -> np.ndarray:
        """One step returning only the greedy next ids (B,) int64: the logits stay on the device."""
        check_room(self.device.lengths, self.max_seq)
        return self._on_device(self.device.decode, np.asarray(token_ids, dtype=np.int64), logits=False)[1]

    def decode_sample(self, token_ids: np.ndarray, temperature: float, top_p: float,
                      uniforms: np.ndarray) -> np.ndarray:
        """One step, then nucleus sampling on the device with the draws ``uniforms`` (B,) in [0, 1)
        (``generation.sample_with_uniforms``' rule): the sampled ids (B,) int64; the logits stay on the device."""
        check_room(self.device.lengths, self.max_seq)
        return self._on_device(self.device.decode_sample, np.asarray(token_ids, dtype=np.int64), float(temperature),
                               float(top_p), np.asarray(uniforms, dtype=np.float32))

    def _on_device(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)``; a paged cache whose pool ran out (``_C.CapacityError``: check_room has
        already ruled out the contiguous cache's end) is the user's InputError (with its fix)."""
        from ..errors import InputError
        from ..native import KV_POOL_ENV

        try:
            return call(*args, **kwargs)
        except _ext().CapacityError as e:
            raise InputError(str(e), f"raise {KV_POOL_ENV} (now {self.device.kv_pool_tokens}), or lower the batch "
                                     "or max_new_tokens") from None


def cuda_ops() -> SimpleNamespace:
    """The backend object: no op set (``decoder.py``'s step functions do not run here) but
    ``llama_decoder``, which ``open_llama_decoder`` calls to get a whole-step decoder."""

    def unavailable(*_a: Any, **_k: Any) -> None:
        raise BackendError("the cuda decoder backend runs whole decoder steps, not single ops",
                           "use rsvlm_edge.models.llava.decoder.open_llama_decoder")

    ops = SimpleNamespace(name="cuda", half_weights=True, **{n: unavailable for n in OP_NAMES})
    ops.llama_decoder = lambda config, tensors, max_batch, max_seq: CudaLlamaDecoder(
        config, tensors, max_batch, max_seq, ops)
    return ops


def _probe() -> Probe:
    return probe_cuda_ext(("CudaDecoder",))


def _supports(config: Any) -> str | None:
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim not in CUDA_HEAD_DIMS:
        return f"head_dim {head_dim} (the CUDA attention kernel runs {'/'.join(map(str, CUDA_HEAD_DIMS))})"
    return None


register(BackendSpec(
    name="cuda", kind="decoder", rank=10, device="cuda",
    summary="the whole decoder on an NVIDIA GPU (our CUDA kernels, device KV cache, CUDA-graph decode steps)",
    probe=_probe,
    factory=cuda_ops,
    supports=_supports,
))
