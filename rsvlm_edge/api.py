"""``rsvlm_edge.load``: open a bundle (verified) and return the runtime for its architecture."""

from __future__ import annotations

import os

from .bundle import open_bundle


def load(path: str | os.PathLike[str], backend: str = "auto", verify: bool = True, **kwargs):
    """``ClipRuntime`` for a CLIP bundle, ``VlmRuntime`` for a LLaVA-class bundle.

    ``backend``: ``auto``, a backend name or alias, or ``graph=NAME,decoder=NAME`` (see
    ``rsvlm-edge doctor``). ``verify`` checks every file's sha256 (set False to skip hashing large
    bundles you trust).
    """
    bundle = open_bundle(path, verify=verify)
    if bundle.architecture == "clip":
        from .models.clip.runtime import ClipRuntime

        return ClipRuntime(bundle, backend=backend, **kwargs)
    from .models.llava.runtime import VlmRuntime

    return VlmRuntime(bundle, backend=backend, **kwargs)
