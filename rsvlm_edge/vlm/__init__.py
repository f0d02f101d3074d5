"""LLaVA-class VLM path: CLIP ViT vision tower + projector (ONNX) and a LLaMA-family decoder
over a preallocated KV cache. ``VlmRuntime`` is the entry point (``rsvlm_edge.load`` returns it
for bundles with ``architecture == "llava"``)."""

from __future__ import annotations

__all__ = ["VlmRuntime"]


def __getattr__(name: str):
    if name == "VlmRuntime":
        from .runtime import VlmRuntime

        return VlmRuntime
    raise AttributeError(name)
