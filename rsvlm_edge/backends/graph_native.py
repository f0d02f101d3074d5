"""The ``native-vit`` graph backend: a CLIP image tower on our own C++ kernels (no graph, no onnxruntime).

It runs an image part that carries ``native`` weights (``bundle.schema.NativeTower``: open_clip's
``VisionTransformer``, written by ``rsvlm-edge export clip``), with the same input and output as the
part's ONNX graph (uint8 ``(B, S, S, 3)`` RGB pixels -> ``(B, E)`` unnormalised image embeddings):

    patch_embed (normalise + conv1 + class token + positions + ln_pre, one kernel)
    per block:  h = LN1(x); q, k, v = h Wq, h Wk, h Wv; o = attention(q, k, v) (bidirectional)
                x += o Wo; h = LN2(x); x += GELU(h Wfc) Wproj       (residual adds fused into LayerNorm)
    LN_post(x[:, 0]) @ proj

Linear layers run ``linear`` (fp32 weights, or fp16 widened in registers) or, for ``w8`` towers,
``qgemm`` (int8 weights per output channel packed once at load for its AMX-INT8 or AVX512-VNNI body,
activations quantised per row: W8A8); a ``w8`` tower's patch conv too (conv1 quantised to int8 per output
channel at load, the patch rows per row: ``patch_embed`` with a packed weight) and its attention, which
may take bf16 products (``attention_prefill(bf16_products=True)``: AMX-BF16 tiles where the CPU has them,
else fp32). fp32/fp16 weights are
read-only views of the bundle's
memory-mapped safetensors file (no copy); int8 ones are read once to pack them. Threads:
the kernels' one pool for the process (``OMP_NUM_THREADS``, default every CPU); the ``threads``
option of the graph-backend interface (onnxruntime's per-session pool) is accepted and not used.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from ..images import OPENAI_MEAN, OPENAI_STD
from .registry import BackendSpec, Probe, probe_native_ops, register

NAME = "native-vit"
_BLOCK_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.")
LN_EPS = 1e-5  # open_clip's LayerNorm
REQUIRED_OPS = ("patch_embed", "layer_norm", "gelu", "linear", "qgemm", "qgemm_pack", "kv_append", "attention_prefill")


def _ext() -> Any:
    from ..native import _c

    return _c()


@dataclass(frozen=True)
class _Linear:
    """y = x W^T + b: W (N, K) fp32/fp16 dense (``linear``), or int8 with per-row scales packed once
    for ``qgemm`` (W8A8, activations quantised per row)."""

    w: np.ndarray | None  # (N, K) dense weights; None for packed int8
    b: np.ndarray | None  # (N,)
    packed: np.ndarray | None = None  # qgemm_pack(w8, scale): uint8

    def __call__(self, c: Any, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.packed is not None:
            return c.qgemm(x, self.packed, self.b, out=out)
        return c.linear(x, self.w, self.b, out=out)


@dataclass(frozen=True)
class _Block:
    ln1: tuple[np.ndarray, np.ndarray]
    q: _Linear
    k: _Linear
    v: _Linear
    o: _Linear
    ln2: tuple[np.ndarray, np.ndarray]
    fc: _Linear
    proj: _Linear


class NativeVisionTower:
    """A graph-backend session (``run(feeds)`` -> outputs in the manifest's order) for an image part
    with ``native`` weights; every tensor is checked against the tower's shape on load."""

    backend = NAME
    provider = "rsvlm_edge._C (CPU)"

    def __init__(self, part: Any, path: str | os.PathLike[str], threads: int | None = None) -> None:
        from ..bundle.safetensors_mmap import map_tensors
        from ..bundle.store import _inside
        from .graph_ort import _bundle_root

        spec = part.native
        if spec is None:  # supports() refuses such parts first; this guards direct use
            raise BundleError("this image part has no native weights", "re-export the bundle with `rsvlm-edge export clip`")
        self._c = _ext()
        self.part = part
        self.input_names = [t.name for t in part.inputs]
        self.output_names = [t.name for t in part.outputs]
        self.path = _inside(_bundle_root(part, Path(path))[0], spec.file)
        self.precision = spec.precision
        self.heads = spec.heads
        self.gelu_kind = "quick" if spec.activation == "quick_gelu" else "erf"
        self._lock = threading.Lock()  # one forward at a time: the kernels' pool runs one parallel loop at a time
        tensors = map_tensors(self.path)
        self._load(tensors, part)

    # ---- loading --------------------------------------------------------------------------------

    def _tensor(self, t: dict[str, np.ndarray], name: str, shape: tuple[int, ...], dtypes: tuple[type, ...]
                ) -> np.ndarray:
        arr = t.get(name)
        if arr is None:
            raise BundleError(f"'{self.path}' has no tensor '{name}'", "re-export the bundle")
        if tuple(arr.shape) != shape or arr.dtype.type not in dtypes:
            raise BundleError(f"'{self.path}': tensor '{name}' is {arr.dtype} {tuple(arr.shape)}, the tower needs "
                              f"{'/'.join(np.dtype(d).name for d in dtypes)} {shape}", "re-export the bundle")
        return arr

    def _linear_tensors(self, t: dict[str, np.ndarray], w: str, b: str | None, n: int, k: int, rows: slice | None
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(weight (N, K): int8 / fp16 / fp32 as stored, its per-row scales (N,) for ``w8`` else None, bias (N,)
        or None) of the linear layer of weight ``w`` (N_total, K): rows ``rows`` of it (in_proj's q/k/v), checked (w8: finite,
        non-negative scales and no -128, for every tower before it packs or uploads anything)."""
        n_total = n if rows is None else 3 * n
        rows = rows or slice(0, n)
        bias = None if b is None else self._tensor(t, b, (n_total,), (np.float32,))[rows]
        if self.precision == "w8":
            weight = self._tensor(t, w, (n_total, k), (np.int8,))[rows]
            scale = self._tensor(t, f"{w}.scale", (n_total,), (np.float32,))[rows]
            if not np.isfinite(scale).all() or (scale < 0).any():
                raise BundleError(f"'{self.path}': '{w}.scale' has negative or non-finite scales", "re-export the bundle")
            if weight.size and int(weight.min()) < -127:  # every tower, before packing or upload
                raise BundleError(f"'{self.path}': tensor '{w}' holds -128, outside the w8 range [-127, 127]",
                                  "re-export the bundle")
            return weight, scale, bias
        weight = self._tensor(t, w, (n_total, k), (np.float16,) if self.precision == "fp16" else (np.float32,))
        return weight[rows], None, bias

    def _linear(self, t: dict[str, np.ndarray], w: str, b: str | None, n: int, k: int,
                rows: slice | None = None) -> _Linear:
        """The linear layer of weight ``w`` (N_total, K) (rows ``rows`` of it: in_proj's q/k/v)."""
        weight, scale, bias = self._linear_tensors(t, w, b, n, k, rows)
        if scale is None:
            return _Linear(weight, bias)
        try:  # qgemm_pack checks the values again itself
            packed = self._c.qgemm_pack(weight, scale)
        except ValueError as e:
            raise BundleError(f"'{self.path}': tensor '{w}' cannot be packed ({e})", "re-export the bundle") from None
        return _Linear(None, bias, packed=packed)

    def _patch_conv(self, conv: np.ndarray) -> np.ndarray:
        """conv1's weight (W, 3, P, P) fp32 as ``patch_embed`` takes it here: as it is, or for a ``w8`` tower in
        W8A8 too (int8 per output channel, packed for qgemm)."""
        if self.precision != "w8":
            return conv
        if not np.isfinite(conv).all():
            raise BundleError(f"'{self.path}': 'conv1.weight' has non-finite values", "re-export the bundle")
        q, scale = self._c.quantize_weight_int8(np.ascontiguousarray(conv.reshape(conv.shape[0], -1)))
        return self._c.qgemm_pack(q, scale)

    def _load(self, t: dict[str, np.ndarray], part: Any) -> None:
        f32 = (np.float32,)
        conv = t.get("conv1.weight")
        if conv is None or conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3] or conv.shape[2] < 1:
            raise BundleError(f"'{self.path}': 'conv1.weight' is missing or not (width, 3, P, P)", "re-export the bundle")
        width, patch = int(conv.shape[0]), int(conv.shape[2])
        size = int(part.inputs[0].shape[1])
        if size % patch or width % self.heads:
            raise BundleError(f"'{self.path}': a {size}px input is not a whole number of {patch}px patches, or "
                              f"width {width} is not a multiple of {self.heads} heads", "re-export the bundle")
        grid = size // patch
        tokens = 1 + grid * grid
        embed = int(part.outputs[0].shape[1])
        self.width, self.patch, self.size, self.tokens, self.head_dim = width, patch, size, tokens, width // self.heads
        self.conv = self._patch_conv(self._tensor(t, "conv1.weight", (width, 3, patch, patch), f32))
        self.cls = self._tensor(t, "class_embedding", (width,), f32)
        self.pos = self._tensor(t, "positional_embedding", (tokens, width), f32)
        self.ln_pre = (self._tensor(t, "ln_pre.weight", (width,), f32), self._tensor(t, "ln_pre.bias", (width,), f32))
        self.ln_post = (self._tensor(t, "ln_post.weight", (width,), f32),
                        self._tensor(t, "ln_post.bias", (width,), f32))
        proj = self._tensor(t, "proj", (width, embed), f32)
        self.embed = embed
        self.head = _Linear(np.ascontiguousarray(proj.T), None)  # (E, W): 0.1-0.8 MB copied once
        numbered = {int(m.group(1)) for name in t if (m := _BLOCK_KEY.match(name))}
        n_layers = len(numbered)
        if n_layers == 0 or numbered != set(range(n_layers)):  # a gap would silently drop blocks
            raise BundleError(f"'{self.path}': residual blocks {sorted(numbered)[:8]} are not numbered 0..L-1",
                              "re-export the bundle")
        fc = t.get("transformer.resblocks.0.mlp.c_fc.weight")
        if fc is None or fc.ndim != 2:
            raise BundleError(f"'{self.path}' has no 'transformer.resblocks.0.mlp.c_fc.weight'", "re-export the bundle")
        self.mlp = mlp = int(fc.shape[0])
        blocks = []
        for i in range(n_layers):
            p = f"transformer.resblocks.{i}."
            ln = lambda n: (self._tensor(t, p + n + ".weight", (width,), f32),  # noqa: E731
                            self._tensor(t, p + n + ".bias", (width,), f32))
            qkv = (p + "attn.in_proj_weight", p + "attn.in_proj_bias")
            blocks.append(_Block(
                ln1=ln("ln_1"),
                q=self._linear(t, *qkv, width, width, slice(0, width)),
                k=self._linear(t, *qkv, width, width, slice(width, 2 * width)),
                v=self._linear(t, *qkv, width, width, slice(2 * width, 3 * width)),
                o=self._linear(t, p + "attn.out_proj.weight", p + "attn.out_proj.bias", width, width),
                ln2=ln("ln_2"),
                fc=self._linear(t, p + "mlp.c_fc.weight", p + "mlp.c_fc.bias", mlp, width),
                proj=self._linear(t, p + "mlp.c_proj.weight", p + "mlp.c_proj.bias", width, mlp)))
        self.blocks = blocks
        self.mean = np.asarray(OPENAI_MEAN, np.float32)
        self.std = np.asarray(OPENAI_STD, np.float32)

    # ---- running --------------------------------------------------------------------------------

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the manifest's order for ``feeds`` keyed by the manifest's input names."""
        pixels = feeds.get(self.input_names[0])
        s = self.size
        if (not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 4
                or pixels.shape[1:] != (s, s, 3)):
            got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
            raise InputError(f"native image tower: input '{self.input_names[0]}' must be uint8 (batch, {s}, {s}, 3), "
                             f"got {got}", "pass images at the bundle's resolution (ClipRuntime.pixels)")
        if pixels.shape[0] == 0:
            return [np.zeros((0, self.embed), np.float32)]
        with self._lock:
            return [self._forward(np.ascontiguousarray(pixels))]

    # bf16 products in the attention (AMX-BF16 where the CPU has it): for W8A8 towers
    def _bf16_attention(self) -> bool:
        return self.precision == "w8"

    def _run_blocks(self, blocks: list[_Block], b: int, x2: Any, act: tuple, attn: tuple) -> None:
        """The residual blocks over the tokens x2 (B*T, W), updated in place, with the caller's buffers (numpy
        arrays here, device arrays for cuda-vit): act = (hn, q, k, v, o, a (B*T, W), m (B*T, W): the MLP output,
        f (B*T, mlp)), attn = (k_cache, v_cache (B, H, T, D), lens (B,) = T, start (B,) = 0). The last block's MLP
        output is left in m (not yet added to x2)."""
        c = self._c
        hn, q, k, v, o, a, m, f = act
        k_cache, v_cache, lens, start = attn
        heads = (b, self.tokens, self.heads, self.head_dim)
        for i, blk in enumerate(blocks):
            if i == 0:
                c.layer_norm(x2, blk.ln1[0], blk.ln1[1], eps=LN_EPS, out=hn)
            else:  # x += the previous block's MLP output, then LN1
                c.layer_norm(x2, blk.ln1[0], blk.ln1[1], add=m, eps=LN_EPS, out=hn)
            blk.q(c, hn, q)
            blk.k(c, hn, k)
            blk.v(c, hn, v)
            c.kv_append(k_cache, v_cache, k.reshape(heads), v.reshape(heads), start)
            c.attention_prefill(q.reshape(heads), k_cache, v_cache, lens, lens, out=o.reshape(heads), causal=False,
                                bf16_products=self._bf16_attention())
            blk.o(c, o, a)
            c.layer_norm(x2, blk.ln2[0], blk.ln2[1], add=a, eps=LN_EPS, out=hn)  # x += attention, then LN2
            blk.fc(c, hn, f)
            c.gelu(f, kind=self.gelu_kind)
            blk.proj(c, f, m)

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        c = self._c
        b, t, w, h, d = pixels.shape[0], self.tokens, self.width, self.heads, self.head_dim  # b >= 1 (run)
        rows = b * t
        x = np.empty((b, t, w), np.float32)
        c.patch_embed(pixels, self.conv, None, self.cls, self.pos, self.mean, self.std, self.ln_pre[0],
                      self.ln_pre[1], LN_EPS, out=x)
        x2 = x.reshape(rows, w)
        hn = np.empty((rows, w), np.float32)  # the LayerNorm output each linear reads
        q, k, v, o, a, m = (np.empty((rows, w), np.float32) for _ in range(6))
        f = np.empty((rows, self.mlp), np.float32)
        k_cache = np.empty((b, h, t, d), np.float32)
        v_cache = np.empty((b, h, t, d), np.float32)
        lens = np.full(b, t, np.int32)
        start = np.zeros(b, np.int32)
        self._run_blocks(self.blocks, b, x2, (hn, q, k, v, o, a, m, f), (k_cache, v_cache, lens, start))
        cls = np.ascontiguousarray(x[:, 0]) + m.reshape(b, t, w)[:, 0]  # the last residual add, class rows only
        pooled = np.empty((b, w), np.float32)
        c.layer_norm(cls, self.ln_post[0], self.ln_post[1], eps=LN_EPS, out=pooled)
        out = np.empty((b, self.embed), np.float32)
        return self.head(c, pooled, out)


def _probe() -> Probe:
    return probe_native_ops(REQUIRED_OPS)


def _serves(part: Any) -> bool:
    """Image towers (a uint8 pixel input): the parts ``--backend native-vit`` is about."""
    inputs = getattr(part, "inputs", None) or []
    return bool(inputs) and inputs[0].dtype == "uint8"


def _auto_for(part: Any) -> bool:
    """``auto`` picks it for W8A8 towers on CPUs whose integer kernels it was measured faster with:
    kernel sets amx (AMX tiles) and avx512vnni. Against onnxruntime ``quantize_dynamic`` on the same
    graph (bench/RESULTS.md, 2 threads): AMX Xeon ViT-L/14-336 1.56x / 1.91x at batch 1 / 8, ViT-B/32
    1.76x / 2.20x; Zen 4 (avx512vnni) ViT-L 1.39x / 1.40x, ViT-B/32 0.89x / 1.29x (before the int8 patch
    conv). With avx2 or portable kernels (older x86, aarch64) the W8A8 GEMM is plain C++, so those
    towers stay on onnxruntime, as fp32/fp16 towers do everywhere (its fp32 GEMM is faster than ours)."""
    native = getattr(part, "native", None)
    if native is None or native.precision != "w8":
        return False
    try:
        return _ext().cpu_kernels() in ("amx", "avx512vnni")
    except Exception:  # noqa: BLE001  (no extension: the probe has already refused the backend)
        return False


def _supports(part: Any) -> str | None:
    if getattr(part, "native", None) is None:
        return ("this part has no native weights (only CLIP image towers exported by this version of "
                "`rsvlm-edge export clip` carry them)")
    return None


register(BackendSpec(
    name=NAME, kind="graph", rank=80, device="cpu",
    summary="CLIP image towers on our C++ kernels (fp32, fp16 weights, or W8A8 int8), no onnxruntime",
    probe=_probe, factory=NativeVisionTower, supports=_supports, serves=_serves,
    auto_for=_auto_for,
))
