"""rsvlm-edge: compiled inference runtime for remote-sensing vision-language models.

The runtime needs numpy, onnxruntime, tokenizers and our native extension; it never imports torch
(torch is an export-time dependency only).
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# OpenMP libraries in this process (FAISS in `index`; torch at export) wait passively (sleep) between
# regions unless the user chose a wait policy: libgomp's default spins ~300,000 iterations at every
# barrier, and on cores shared with other work those spinning threads take the time slices the
# computing thread needs. Our own kernels run on their own thread pool (RSVLM_EDGE_THREAD_WAIT, see
# include/rsvlm_edge/threads.h), not on OpenMP regions. Set before libgomp is loaded.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

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
