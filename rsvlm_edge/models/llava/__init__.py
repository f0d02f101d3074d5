"""LLaVA-class VLMs: CLIP ViT vision tower + projector (a graph part) and a LLaMA-family decoder
over a preallocated KV cache (a decoder part). ``VlmRuntime`` is the entry point
(``rsvlm_edge.load`` returns it for bundles with ``architecture == "llava"``)."""

from __future__ import annotations

__all__ = ["VlmRuntime"]


def __getattr__(name: str):
    if name == "VlmRuntime":
        from .runtime import VlmRuntime

        return VlmRuntime
    raise AttributeError(name)
