"""rsvlm-edge: compiled inference runtime for remote-sensing vision-language models.

The runtime needs numpy, onnxruntime, tokenizers and our native extension; it never imports torch
(torch is an export-time dependency only).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import BackendError, BundleError, CheckpointError, InputError, RsvlmError  # noqa: E402

__all__ = [
    "__version__",
    "load",
    "RsvlmError",
    "CheckpointError",
    "BundleError",
    "InputError",
    "BackendError",
]


def load(path, backend: str = "auto", **kwargs):
    """Open a bundle and return its runtime (``ClipRuntime`` for CLIP, ``VlmRuntime`` for LLaVA)."""
    from .api import load as _load

    return _load(path, backend=backend, **kwargs)
