"""Read bundles written by rsvlm-edge 0.1 (manifest format version 1) as version 2.

Version 1 had a different manifest shape per architecture: CLIP kept ``graphs`` (one input and
output name each), ``precision`` per graph, a ``tokenizer`` dict, a ``source`` dict and a top-level
``logit_scale``; LLaVA kept ``tokenizer`` and ``source`` as strings, fixed file names
(``vision.onnx``, ``decoder.safetensors``) and fixed graph names (``images`` ->
``image_features``). The migration happens in memory when a bundle is opened; the files on disk are
never rewritten (their sha256s stay valid).
"""

from __future__ import annotations

from typing import Any

# 0.1's exporters: open_clip crops with torchvision's rounding; its LLaVA exporter rounded the
# pad colour (the bug is kept: the bundle's vision features were validated with it).
_V1_CLIP_CROP = "round"
_V1_LLAVA_CROP = "round"


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A version-2 manifest dict from any known version (unknown shapes are left for the schema to
    refuse)."""
    if data.get("format_version") != 1:
        return data
    arch = data.get("architecture")
    if arch == "clip":
        return _clip_v1(data)
    if arch == "llava":
        return _llava_v1(data)
    return data


def _clip_v1(d: dict[str, Any]) -> dict[str, Any]:
    model = dict(d.get("model") or {})
    model.setdefault("logit_scale", d.get("logit_scale", 100.0))
    size = model.get("image_size")
    embed = model.get("embed_dim")
    ctx = model.get("context_length")
    graphs = d.get("graphs") or {}
    precision = d.get("precision") or {}
    pp = dict(d.get("preprocess") or {})
    tok = d.get("tokenizer") or {}
    parts = {
        "image": {
            "kind": "graph",
            "file": (graphs.get("image") or {}).get("file"),
            "precision": precision.get("image"),
            "inputs": [{"name": (graphs.get("image") or {}).get("input"), "dtype": "uint8",
                        "shape": ["batch", size, size, 3]}],
            "outputs": [{"name": (graphs.get("image") or {}).get("output"), "dtype": "float32",
                         "shape": ["batch", embed]}],
        },
        "text": {
            "kind": "graph",
            "file": (graphs.get("text") or {}).get("file"),
            "precision": precision.get("text"),
            "inputs": [{"name": (graphs.get("text") or {}).get("input"), "dtype": "int64", "shape": ["batch", ctx]}],
            "outputs": [{"name": (graphs.get("text") or {}).get("output"), "dtype": "float32",
                         "shape": ["batch", embed]}],
        },
    }
    return {
        **_common(d),
        "source": d.get("source"),
        "model": model,
        "parts": parts,
        "tokenizer": {"file": tok.get("file"), "kind": "clip-bpe", "context_length": tok.get("context_length"),
                      "sot_id": tok.get("sot_id"), "eot_id": tok.get("eot_id")},
        "preprocess": {"image_size": pp.get("image_size"), "crop_rounding": _V1_CLIP_CROP,
                       "mean": pp.get("mean"), "std": pp.get("std")},
        "prompts": d.get("prompts") or {},
        "max_batch": d.get("max_batch"),
    }


def _llava_v1(d: dict[str, Any]) -> dict[str, Any]:
    model = dict(d.get("model") or {})
    vision = model.get("vision") or {}
    decoder = model.get("decoder") or {}
    size = vision.get("image_size")
    pp = dict(d.get("preprocess") or {})
    precision = d.get("precision") or {}
    parts = {
        "vision": {
            "kind": "graph",
            "file": "vision.onnx",
            "precision": precision.get("vision", "fp32"),
            "inputs": [{"name": "images", "dtype": "uint8", "shape": ["batch", size, size, 3]}],
            "outputs": [{"name": "image_features", "dtype": "float32",
                         "shape": ["batch", model.get("num_image_tokens"), decoder.get("hidden_size")]}],
        },
        "decoder": {"kind": "decoder", "file": "decoder.safetensors", "precision": precision.get("decoder")},
    }
    return {
        **_common(d),
        "source": {"checkpoint": str(d.get("source", "")), "layout": model.get("source_layout", "")},
        "model": model,
        "parts": parts,
        "tokenizer": {"file": d.get("tokenizer", "tokenizer.json"), "kind": "hf"},
        "preprocess": {"image_size": pp.get("image_size"), "crop_rounding": _V1_LLAVA_CROP,
                       "pad_to_square": bool(pp.get("pad_to_square", False)),
                       "fill_rgb": list(pp.get("fill_rgb", (0, 0, 0))), "mean": pp.get("mean"), "std": pp.get("std")},
        "prompts": d.get("prompts") or {},
        "max_batch": d.get("max_batch", 8),
    }


def _common(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": d.get("format"),
        "format_version": 2,
        "created": d.get("created", ""),
        "created_by": d.get("created_by", ""),
        "name": d.get("name", ""),
        "architecture": d.get("architecture"),
        "validation": d.get("validation") or {},
        "notes": list(d.get("notes") or []) + ["read from a format-1 bundle (rsvlm-edge 0.1)"],
        "files": d.get("files"),
    }
