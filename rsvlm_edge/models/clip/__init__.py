"""open_clip ViT CLIPs (RemoteCLIP, GeoRSCLIP, SkyCLIP): ``ClipRuntime`` (image/text embedding,
zero-shot classification, retrieval), the CLIP tokenizer, prompt templates and image preparation."""

from __future__ import annotations

__all__ = ["ClipRuntime", "Classification"]


def __getattr__(name: str):
    if name in __all__:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(name)
