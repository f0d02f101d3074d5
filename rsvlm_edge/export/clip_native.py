"""The CLIP image tower's weights for the ``native`` graph backend (``bundle.schema.NativeTower``).

open_clip's ``VisionTransformer`` state dict, written as safetensors one tensor at a time (no second
copy of the weights in memory), with the four linear weights of every residual block in the bundle's
precision: fp32, fp16, or ``w8`` (int8 per output channel + an fp32 ``<name>.scale``, the rule of
``models.llava.quant.quantize_w8`` that ``qlinear`` runs). Everything else (patch embedding, class and
position embeddings, LayerNorms, biases, the projection) stays fp32.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..models.llava.quant import quantize_w8

NATIVE_FILE = "image.native.safetensors"
NATIVE_ARCHITECTURE = "open_clip-vit"
NATIVE_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8": "w8"}  # bundle precision -> NativeTower.precision
LINEAR_WEIGHTS = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_TOP = {"conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias", "ln_post.weight",
        "ln_post.bias", "proj"}
_BLOCK = {"ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
          "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
          "mlp.c_proj.bias"}
_BLOCK_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_SAFETENSORS_DTYPE = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                      np.dtype(np.int32): "I32", np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8"}

Entry = tuple[str, np.dtype, tuple[int, ...], Callable[[], np.ndarray]]


def unsupported_reason(visual_keys: Iterable[str]) -> str | None:
    """Why the native backend cannot run a tower with these state-dict keys (None: it can): only the
    plain open_clip ViT (class-token pooling, no attention pooling, no LayerScale, conv1 without bias)."""
    keys = set(visual_keys)
    missing = sorted(_TOP - keys)
    layers = {int(m.group(1)) for k in keys if (m := _BLOCK_KEY.fullmatch(k))}
    if missing:
        return f"the tower has no {', '.join(missing)}"
    if not layers or layers != set(range(len(layers))):
        return "the tower's residual blocks are not numbered 0..L-1"
    expected = _TOP | {f"transformer.resblocks.{i}.{k}" for i in layers for k in _BLOCK}
    extra = sorted(keys - expected)
    if extra:
        return f"the tower has tensors the native kernels do not run ({', '.join(extra[:3])}{', ...' * (len(extra) > 3)})"
    missing = sorted(expected - keys)
    if missing:
        return f"the tower has no {', '.join(missing[:3])}{', ...' * (len(missing) > 3)}"
    return None


def native_entries(visual: dict[str, Any], precision: str) -> list[Entry]:
    """(name, dtype, shape, produce) for every tensor of the file, in state-dict order; ``visual``
    holds numpy arrays or torch tensors (converted one at a time when produced)."""
    if precision not in NATIVE_PRECISION.values():
        raise ValueError(f"unknown native precision {precision!r}")
    entries: list[Entry] = []
    for name, value in visual.items():
        shape = tuple(int(d) for d in value.shape)
        fetch = _fp32_of(value)
        if not name.endswith(LINEAR_WEIGHTS) or precision == "fp32":
            entries.append((name, np.dtype(np.float32), shape, fetch))
        elif precision == "fp16":
            entries.append((name, np.dtype(np.float16), shape, lambda fetch=fetch: fetch().astype(np.float16)))
        else:
            pair: dict[str, np.ndarray] = {}

            def weight(fetch=fetch, pair=pair) -> np.ndarray:
                pair["q"], pair["scale"] = quantize_w8(fetch())
                return pair["q"]

            entries.append((name, np.dtype(np.int8), shape, weight))
            entries.append((f"{name}.scale", np.dtype(np.float32), shape[:1], lambda pair=pair: pair.pop("scale")))
    return entries


def _fp32_of(value: Any) -> Callable[[], np.ndarray]:
    def fetch() -> np.ndarray:
        arr = value.detach().cpu().float().numpy() if hasattr(value, "detach") else np.asarray(value, np.float32)
        return np.ascontiguousarray(arr, dtype=np.float32)
    return fetch


def write_safetensors(path: str | Path, entries: list[Entry]) -> int:
    """Write ``entries`` as one safetensors file, producing and writing one tensor at a time; returns
    the file's size. The header is laid out from the declared dtypes and shapes, and every produced
    array is checked against its declaration (a mismatch would corrupt the offsets)."""
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape, _ in entries:
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, dtype, shape, produce in entries:
            arr = np.ascontiguousarray(produce())
            if arr.dtype != dtype or arr.shape != shape:
                raise ValueError(f"{name}: produced {arr.dtype} {arr.shape}, declared {dtype} {shape}")
            f.write(memoryview(arr).cast("B"))
        return f.tell()


__all__ = ["LINEAR_WEIGHTS", "NATIVE_ARCHITECTURE", "NATIVE_FILE", "NATIVE_PRECISION", "native_entries",
           "unsupported_reason", "write_safetensors"]
