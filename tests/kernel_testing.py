"""Helpers shared by the native-kernel and decoder tests (imported as a sibling module): seeded
inputs, the CUDA-vs-reference test setup, and a tiny LLaMA decoder."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

# Tolerance of a CUDA kernel against the naive (fp64) reference, per activation dtype.
CUDA_TOL = {"float16": 2e-3, "bfloat16": 1.6e-2}


def cpu_kernel_sets() -> list[str]:
    """The CPU micro-kernel sets this machine can run (amx / avx512vnni / avx2 on x86-64 CPUs that have
    them, portable everywhere); leaves the default ('auto') active."""
    import rsvlm_edge._C as C

    names = []
    for name in ("amx", "avx512vnni", "avx2", "portable"):
        try:
            C.set_cpu_kernels(name)
            names.append(name)
        except ValueError:
            pass
    C.set_cpu_kernels("auto")
    return names


CPU_KERNELS = cpu_kernel_sets()
# Sets that change only some ops: a `cpu_kernels` test runs them only when its cpu_kernel_sets marker names
# them (amx differs from avx512vnni in qgemm, qlinear's GEMM, patch_embed's int8 conv and bf16 attention alone).
NARROW_CPU_KERNELS = ("amx",)


def randn(rng, *shape, scale=1.0):
    """float32 normal samples of `shape` times `scale`."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def cuda_dtype_test(test):
    """Marks `test` as a CUDA test (marker `cuda`) run once per CUDA activation dtype (argument
    `dtype_name`); apply it above the test's other parametrize marks."""
    return pytest.mark.cuda(pytest.mark.parametrize("dtype_name", list(CUDA_TOL))(test))


def cuda_torch():
    """torch, for a test of the CUDA kernels; skips when rsvlm_edge._C was built without them (the
    GPU itself is checked by the `cuda_device` fixture of conftest.py)."""
    import rsvlm_edge._C as C

    if not C.built_with_cuda():
        pytest.skip("rsvlm_edge was built without CUDA kernels")
    import torch

    return torch


def cuda_dtype(dtype_name: str):
    """(torch, the torch dtype named `dtype_name`, its CUDA_TOL) for a CUDA-vs-reference test."""
    torch = cuda_torch()
    return torch, getattr(torch, dtype_name), CUDA_TOL[dtype_name]


# ---- a tiny LLaMA decoder: vocab 50, hidden 32, MLP 48, 2 layers, 4 heads / 2 KV heads of 8 -------

TINY_LINEARS = (("q_proj", (32, 32)), ("k_proj", (16, 32)), ("v_proj", (16, 32)), ("o_proj", (32, 32)),
                ("gate_proj", (48, 32)), ("up_proj", (48, 32)), ("down_proj", (32, 48)))


def tiny_decoder_config(attention_bias: bool = False):
    from rsvlm_edge.models.llava.config import DecoderConfig

    return DecoderConfig(model_type="llama", vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=10000.0,
                         max_position_embeddings=64, attention_bias=attention_bias, bos_token_id=1, eos_token_id=2)


def tiny_decoder_tensors(weight: Callable[[str, tuple[int, ...]], np.ndarray],
                         bias: Callable[[int], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Canonical tensors of the tiny decoder, norms all ones. `weight(name, shape)` makes the
    embedding ("embed_tokens"), "lm_head" and, layer by layer, the linear weights of TINY_LINEARS, in
    that order; `bias(n)`, when given, then the Qwen2-style q/k/v biases of each layer."""
    t = {"embed_tokens.weight": weight("embed_tokens", (50, 32)), "norm.weight": np.ones(32, np.float32),
         "lm_head.weight": weight("lm_head", (50, 32))}
    for i in range(2):
        p = f"layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(32, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(32, np.float32)
        for name, shape in TINY_LINEARS:
            t[p + name + ".weight"] = weight(name, shape)
        if bias is not None:
            for name, n in (("q_proj", 32), ("k_proj", 16), ("v_proj", 16)):
                t[p + name + ".bias"] = bias(n)
    return t
