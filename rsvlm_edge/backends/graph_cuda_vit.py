"""The ``cuda-vit`` graph backend: a CLIP image tower on our CUDA kernels (no TensorRT, no onnxruntime, no torch).

The GPU twin of ``native-vit`` (``graph_native.py``), which reads and checks the same ``native`` weights; here
they are uploaded once, as fp16 (fp32 weights rounded, ``w8`` ones widened to ``w * scale``), into
``rsvlm_edge._C.DeviceArray`` buffers (device memory owned by the extension), and every activation stays on the
device in fp16, with fp32 accumulation inside each kernel:

    patch_embed (normalise + conv1 + class token + positions + ln_pre, one kernel)
    per block:  LN1 (x += the previous MLP output), q / k / v linears, kv_append + attention_prefill(causal=False),
                o linear, LN2 (x += attention), fc linear, GELU in place, proj linear
    LN_post (x += the last MLP output) and the projection, over every row; the class rows are read back

Only the pixels go up and the (B, T, E) projected rows come down (the class rows are kept). The linears are
``linear`` on CUDA: its tensor-core (WMMA) GEMM from 16 rows on (K a multiple of 8). Attention head dims
64/80/96/128 (the CUDA attention kernel's; CLIP ViT-B and ViT-L use 64). Ops run in order on the legacy default
stream; buffers are sized for the largest batch seen and reused (smaller batches use their leading part).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendError
from .graph_native import LN_EPS, REQUIRED_OPS, NativeVisionTower, _Block, _Linear, _serves, _supports
from .registry import BackendSpec, Probe, probe_cuda_ext, register

NAME = "cuda-vit"
CUDA_HEAD_DIMS = (64, 80, 96, 128)  # kernels/kv_attention/kv_attention.cu


@dataclass(frozen=True)
class _DevLinear:
    """y = x W^T + b on the device: W (N, K) fp16, b (N,) fp16 or None (DeviceArray)."""

    w: Any
    b: Any

    def __call__(self, c: Any, x: Any, out: Any) -> Any:
        return c.linear(x, self.w, self.b, out=out)


class _Buffers:
    """The activations of one forward for up to ``batch`` images (DeviceArray, fp16 unless named)."""

    def __init__(self, c: Any, batch: int, t: int, w: int, heads: int, d: int, mlp: int, size: int, embed: int) -> None:
        rows = batch * t
        self.batch = batch
        self.pixels = c.DeviceArray((batch, size, size, 3), "uint8")
        self.x = c.DeviceArray((batch, t, w), "float16")
        self.hn, self.q, self.k, self.v, self.o, self.a, self.m = (c.DeviceArray((rows, w), "float16") for _ in range(7))
        self.f = c.DeviceArray((rows, mlp), "float16")
        self.k_cache = c.DeviceArray((batch, heads, t, d), "float16")
        self.v_cache = c.DeviceArray((batch, heads, t, d), "float16")
        self.lens = c.DeviceArray.from_numpy(np.full(batch, t, np.int32))
        self.start = c.DeviceArray((batch,), "int32")
        self.emb = c.DeviceArray((rows, embed), "float16")


class CudaVisionTower(NativeVisionTower):
    """A graph-backend session (``run(feeds)`` -> outputs in the manifest's order) for an image part with
    ``native`` weights, on the current CUDA device."""

    backend = NAME
    provider = "rsvlm_edge._C (CUDA)"

    def __init__(self, part: Any, path: str | os.PathLike[str], threads: int | None = None) -> None:
        super().__init__(part, path, threads)  # reads and checks every tensor (host), as native-vit does
        if self.head_dim not in CUDA_HEAD_DIMS:
            raise BackendError(f"the image tower's head dim {self.head_dim} is not one the CUDA attention kernel runs "
                               f"({'/'.join(map(str, CUDA_HEAD_DIMS))})", "use --backend graph=native-vit or ort-*")
        self._upload()
        self._buf: _Buffers | None = None

    # ---- loading: the checked host tensors, uploaded once as fp16 ----------------------------------------

    def _patch_conv(self, conv: np.ndarray) -> np.ndarray:
        return conv  # fp32 here, uploaded as fp16 (w8 towers too: their conv is fp32 in the file)

    def _linear(self, t: dict[str, np.ndarray], w: str, b: str | None, n: int, k: int,
                rows: slice | None = None) -> _Linear:
        weight, scale, bias = self._linear_tensors(t, w, b, n, k, rows)
        if scale is not None:  # w8: widened once to fp16 for the tensor-core GEMM
            weight = weight.astype(np.float32) * scale[:, None]
        return _Linear(np.ascontiguousarray(weight, dtype=np.float16), bias)

    def _upload(self) -> None:
        dev = self._c.DeviceArray.from_numpy

        def half(a: np.ndarray | None) -> Any:
            return None if a is None else dev(np.ascontiguousarray(a, dtype=np.float16))

        def lin(x: _Linear) -> _DevLinear:
            return _DevLinear(half(x.w), half(x.b))

        self.d_conv, self.d_cls, self.d_pos = half(self.conv), half(self.cls), half(self.pos)
        self.d_ln_pre = (half(self.ln_pre[0]), half(self.ln_pre[1]))
        self.d_ln_post = (half(self.ln_post[0]), half(self.ln_post[1]))
        self.d_head = lin(self.head)
        self.d_blocks = [_Block(ln1=(half(b.ln1[0]), half(b.ln1[1])), q=lin(b.q), k=lin(b.k), v=lin(b.v), o=lin(b.o),
                                ln2=(half(b.ln2[0]), half(b.ln2[1])), fc=lin(b.fc), proj=lin(b.proj))
                         for b in self.blocks]
        # the host copies are no longer needed (the mapped file's pages stay with the page cache)
        self.blocks = []

    # ---- running ----------------------------------------------------------------------------------------

    def _bf16_attention(self) -> bool:
        return False  # the CUDA attention computes in fp16 with fp32 accumulation whatever the tower's precision

    def _buffers(self, b: int) -> _Buffers:
        if self._buf is None or self._buf.batch < b:
            self._buf = None  # free the smaller set first
            self._buf = _Buffers(self._c, b, self.tokens, self.width, self.heads, self.head_dim, self.mlp, self.size,
                                 self.embed)
        return self._buf

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        c = self._c
        b, t, w, h, d = pixels.shape[0], self.tokens, self.width, self.heads, self.head_dim  # b >= 1 (run)
        rows = b * t
        buf = self._buffers(b)

        def view(arr: Any, *shape: int) -> Any:  # the leading part of a buffer sized for buf.batch
            return arr.reshape(tuple(shape))

        pix = view(buf.pixels, b, self.size, self.size, 3)
        pix.copy_from(pixels)
        x = view(buf.x, b, t, w)
        c.patch_embed(pix, self.d_conv, None, self.d_cls, self.d_pos, self.mean, self.std, self.d_ln_pre[0],
                      self.d_ln_pre[1], LN_EPS, out=x)
        x2 = view(buf.x, rows, w)
        act = (*(view(arr, rows, w) for arr in (buf.hn, buf.q, buf.k, buf.v, buf.o, buf.a, buf.m)),
               view(buf.f, rows, self.mlp))
        attn = (view(buf.k_cache, b, h, t, d), view(buf.v_cache, b, h, t, d), view(buf.lens, b), view(buf.start, b))
        self._run_blocks(self.d_blocks, b, x2, act, attn)
        hn, m = act[0], act[6]
        # the last residual add and LN_post over every row (cheap next to the blocks), then the projection
        c.layer_norm(x2, self.d_ln_post[0], self.d_ln_post[1], add=m, eps=LN_EPS, out=hn)
        emb = view(buf.emb, rows, self.embed)
        self.d_head(c, hn, emb)
        return emb.numpy().reshape(b, t, self.embed)[:, 0].astype(np.float32)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return super().run(feeds)
        except RuntimeError as e:  # a CUDA failure (out of memory, a lost device): one error line, not a traceback
            raise BackendError(f"the CUDA image tower failed: {e}", "check nvidia-smi, or run --backend graph=native-vit"
                               ) from None


def _probe() -> Probe:
    return probe_cuda_ext((*REQUIRED_OPS, "DeviceArray"))


def _auto_for(part: Any) -> bool:
    """``auto`` does not pick it yet: it has not run on a GPU (README: what has run where). A preference naming
    it (``--backend graph=cuda-vit``) runs it on any image tower with native weights."""
    return False


register(BackendSpec(
    name=NAME, kind="graph", rank=30, device="cuda",
    summary="CLIP image towers on our CUDA kernels (fp16 on the device), no TensorRT / onnxruntime / torch",
    probe=_probe, factory=CudaVisionTower, supports=_supports, serves=_serves, auto_for=_auto_for,
))
