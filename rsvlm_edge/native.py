"""Thin Python wrappers over the native kernels in ``rsvlm_edge._C`` (numpy in, numpy out).

Every function also accepts torch / cupy / jax tensors without copying (DLPack or
``__cuda_array_interface__``): CPU tensors run the CPU kernels, CUDA tensors the CUDA kernels.
Wrong shapes or dtypes raise ``ValueError`` naming the argument and the expected shape.
This module never imports torch.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Sequence

from .errors import BackendError
from .images import OPENAI_MEAN as CLIP_MEAN
from .images import OPENAI_STD as CLIP_STD


def env_choice(var: str, choices: tuple[str, ...], default: str | None, fix: str) -> str | None:
    """The value of environment variable ``var`` (``default`` when unset); BackendError naming the variable
    and its choices, with ``fix``, when it is set to anything else."""
    import os

    value = os.environ.get(var, default)
    if value is not None and value not in choices:
        raise BackendError(f"{var}='{value}' is not one of {', '.join(choices)}", fix)
    return value


THREAD_WAIT_ENV = "RSVLM_EDGE_THREAD_WAIT"
THREAD_WAITS = ("auto", "spin", "passive")


def check_thread_wait_env() -> None:
    """BackendError when ``RSVLM_EDGE_THREAD_WAIT`` (the CPU thread pool's wait policy between
    parallel loops, read once by the native library) is set to something it does not know."""
    env_choice(THREAD_WAIT_ENV, THREAD_WAITS, None,
               f"unset {THREAD_WAIT_ENV} (auto) or set it to spin (dedicated cores) or passive")


CUDA_PDL_ENV = "RSVLM_EDGE_CUDA_PDL"
CUDA_PDLS = ("on", "off")


def check_cuda_pdl_env() -> None:
    """BackendError when ``RSVLM_EDGE_CUDA_PDL`` is set to something else than on / off. It is read once by
    the native library: ``on`` (default) lets the CUDA linears start on their weights while the kernel ahead
    of them still runs (programmatic dependent launch, compute capability 9.0 and up); ``off`` launches
    every kernel after the one before it has finished (to compare, or to rule it out)."""
    env_choice(CUDA_PDL_ENV, CUDA_PDLS, None, f"unset {CUDA_PDL_ENV} (on) or set it to off")


KV_CACHE_ENV = "RSVLM_EDGE_KV_CACHE"
KV_CACHES = ("auto", "int8")


def kv_cache_int8() -> bool:
    """Whether the decoder's KV cache is int8 (``RSVLM_EDGE_KV_CACHE=int8``: one fp32 scale per cached K / V
    row; a quarter of the fp32 cache's bytes on the CPU, about half of fp16's on a GPU) rather than the
    activation dtype (``auto``, the default: fp32 on the CPU, fp16 on a GPU); BackendError for anything else."""
    return env_choice(KV_CACHE_ENV, KV_CACHES, "auto",
                      f"unset {KV_CACHE_ENV} (the activation dtype) or set it to int8 (a smaller cache)") == "int8"


KV_POOL_ENV = "RSVLM_EDGE_KV_POOL_TOKENS"


def kv_pool_tokens() -> int:
    """Tokens of a paged KV cache shared by the batch (``RSVLM_EDGE_KV_POOL_TOKENS``: a whole number >= 16,
    rounded up to pages of 16; the cuda decoder backend), or 0 when unset: a contiguous cache of max_batch x
    max_seq positions. BackendError for anything else."""
    import os

    raw = os.environ.get(KV_POOL_ENV, "").strip()
    if not raw:
        return 0
    fix = f"unset {KV_POOL_ENV} (a contiguous cache) or set it to a number of tokens, e.g. 8192"
    try:
        tokens = int(raw)
    except ValueError:
        raise BackendError(f"{KV_POOL_ENV}='{raw}' is not a whole number of tokens", fix) from None
    if not 16 <= tokens <= 2**31 - 16:
        raise BackendError(f"{KV_POOL_ENV}={tokens} is outside [16, 2^31 - 16] tokens", fix)
    return tokens


FP16_GEMM_ENV = "RSVLM_EDGE_FP16_GEMM"
FP16_GEMMS = ("bf16x3", "fp32")


def fp16_gemm_bf16x3() -> bool:
    """Whether the native decoder's fp16 linears may run prefill as three bf16 products on AMX tiles
    (``_C.linear(..., bf16x3=True)``: CPUs with AMX-BF16, 32 rows of x and more). ``RSVLM_EDGE_FP16_GEMM``:
    ``bf16x3`` (default) or ``fp32`` (every product exact in fp32, as on CPUs without AMX); BackendError
    for anything else."""
    return env_choice(FP16_GEMM_ENV, FP16_GEMMS, "bf16x3",
                      f"unset {FP16_GEMM_ENV} (bf16x3 on AMX CPUs) or set it to fp32 (exact fp32 products)") == "bf16x3"


DECODE_STEP_ENV = "RSVLM_EDGE_DECODE_STEP"
DECODE_STEPS = ("whole", "ops")


def decode_step_whole() -> bool:
    """Whether the native decoder runs each decode step as one C++ call (``_C.CpuDecodeStep``: the same kernels
    and results as decoder.py's op-by-op ``decode_step``, without ~300 calls from Python per token).
    ``RSVLM_EDGE_DECODE_STEP``: ``whole`` (default) or ``ops`` (one Python call per op, e.g. to profile them);
    BackendError for anything else."""
    return env_choice(DECODE_STEP_ENV, DECODE_STEPS, "whole",
                      f"unset {DECODE_STEP_ENV} (whole) or set it to ops (one Python call per op)") == "whole"


WEIGHT_MEMORY_ENV = "RSVLM_EDGE_WEIGHT_MEMORY"
WEIGHT_MEMORIES = ("copy", "mapped")


def weight_memory_copy() -> bool:
    """Whether the native decoder copies its weights out of the bundle's file map into anonymous memory on
    huge pages (``backends/host_memory.py``; batch-1 decode reads them about 25 % faster).
    ``RSVLM_EDGE_WEIGHT_MEMORY``: ``copy`` (default) or ``mapped`` (the weights stay views of the file: no copy
    at load, pages shared with the page cache and with other processes mapping the same bundle);
    BackendError for anything else."""
    return env_choice(WEIGHT_MEMORY_ENV, WEIGHT_MEMORIES, "copy",
                      f"unset {WEIGHT_MEMORY_ENV} (copy) or set it to mapped (weights read from the file map)") == "copy"


@functools.cache
def _c() -> ModuleType:
    """``rsvlm_edge._C``, after checking the environment it reads (BackendError if unusable); once per
    process: the library reads that environment once (the thread pool's when it starts, the CUDA
    launch mode at the first CUDA linear)."""
    check_thread_wait_env()
    check_cuda_pdl_env()
    try:
        from . import _C
    except ImportError as e:  # pragma: no cover - depends on the build
        raise BackendError(
            f"the native extension rsvlm_edge._C is not available ({e})",
            "build it with `scripts/dev-build.sh` (developer checkout) or `pip install .`",
        ) from e
    return _C


def thread_pool_state() -> dict:
    """The CPU kernels' thread pool: ``policy`` (auto / spin / passive), ``spinning`` (whether idle
    workers spin now) and ``workers`` (threads started beside the caller)."""
    return dict(_c().thread_pool_state())


def built_with_cuda() -> bool:
    """True when the native extension contains the CUDA kernels."""
    return bool(_c().built_with_cuda())


def patch_embed(
    images: Any,
    weight: Any,
    class_emb: Any,
    pos_emb: Any,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    bias: Any = None,
    ln_gamma: Any = None,
    ln_beta: Any = None,
    eps: float = 1e-5,
    out: Any = None,
    stream: int = 0,
) -> Any:
    """Fused ViT patch embedding from uint8 images (open_clip ``conv1 -> cat class -> + pos -> ln_pre``).

    Args:
        images: (B, H, W, 3) uint8 RGB, C-contiguous, already at model resolution (H, W multiples of P).
        weight: (D, 3, P, P) conv1 weight. float32 on CPU; float32/float16/bfloat16 on CUDA. On the CPU also
            the weight reshaped to (D, 3*P*P), quantised to int8 per output channel and packed by
            ``_C.qgemm_pack``: the conv then runs as ``qgemm`` (W8A8, each patch row quantised to int8).
        class_emb: (D) class embedding, same dtype as ``weight``.
        pos_emb: (N + 1, D) position embedding, N = (H / P) * (W / P); see ``interpolate_pos_embed``.
        mean, std: 3 floats each, in 0..1 units: x = (u8 / 255 - mean) / std.
        bias: (D) conv1 bias or None (CLIP has none).
        ln_gamma, ln_beta: (D) ln_pre weight and bias, or None to skip ln_pre.
        eps: LayerNorm epsilon.
        out: (B, N + 1, D) output of ``weight``'s dtype, or None to allocate one (numpy for CPU inputs;
            for CUDA tensors with ``new_empty`` (torch) it is allocated like ``weight``).
        stream: cudaStream_t as an int for CUDA inputs (0 = legacy default stream).

    Returns:
        (B, N + 1, D) tokens: a new numpy array for CPU inputs, else ``out``.
    """
    if out is None and hasattr(images, "__dlpack_device__") and not _is_numpy(images):
        device_type, _ = images.__dlpack_device__()
        # kDLCUDA = 2 (torch returns an enum member, not always an int subclass)
        if int(getattr(device_type, "value", device_type)) == 2 and hasattr(weight, "new_empty"):
            b, h, w = images.shape[0], images.shape[1], images.shape[2]
            p = weight.shape[-1]
            out = weight.new_empty((b, (h // p) * (w // p) + 1, weight.shape[0]))
    return _c().patch_embed(
        images, weight, bias, class_emb, pos_emb, mean, std,
        ln_gamma=ln_gamma, ln_beta=ln_beta, eps=eps, out=out, stream=stream,
    )


def interpolate_pos_embed(pos: Any, new_grid: int, out: Any = None) -> Any:
    """Resize a ViT position embedding to a new square grid, as GeoChat does for 336 -> 504 px.

    Args:
        pos: (1 + G*G, D) float32 on the CPU: row 0 the class token, row 1 + y*G + x grid cell (y, x).
        new_grid: G2, the new grid side (e.g. 36 for CLIP-L/14 at 504 px).
        out: optional (1 + G2*G2, D) float32 destination.

    Returns:
        (1 + G2*G2, D) float32: bicubic, align_corners=True, identical to
        ``torch.nn.functional.interpolate(mode="bicubic", align_corners=True)`` on the grid part; the
        class token row is copied unchanged.
    """
    return _c().interpolate_pos_embed(pos, int(new_grid), out=out)


def tensor_arg_info(tensor: Any) -> dict[str, Any]:
    """How the native bindings see an array (data pointer, dtype, shape, strides, device); no copy."""
    return dict(_c().tensor_arg_info(tensor))


def _is_numpy(x: Any) -> bool:
    return type(x).__module__ == "numpy"
