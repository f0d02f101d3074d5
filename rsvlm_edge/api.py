"""``rsvlm_edge.load``: open a bundle (verified) and return the runtime for its architecture."""

from __future__ import annotations

import os

from .bundle import open_bundle


def load(path: str | os.PathLike[str], backend: str = "auto", verify: bool = True, **kwargs):
    """``ClipRuntime`` for a CLIP bundle, ``VlmRuntime`` for a LLaVA-class bundle.

    ``verify`` checks every file's sha256 (set False to skip hashing large bundles you trust).
    """
    bundle = open_bundle(path, verify=verify)
    if bundle.architecture == "clip":
        from .clip_runtime import ClipRuntime

        return ClipRuntime(bundle, backend=backend, **kwargs)
    from .vlm.runtime import VlmRuntime

    return VlmRuntime(bundle, backend=backend, **kwargs)
