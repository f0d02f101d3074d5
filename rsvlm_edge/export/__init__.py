"""Export: checkpoints -> bundles. Needs the ``export`` extra (torch, open_clip_torch, transformers, onnx).
Nothing under ``rsvlm_edge.export`` is imported by the runtime."""

from __future__ import annotations

from ..errors import RsvlmError


def require_export_deps() -> None:
    """Fail with one clear message when the export extra is not installed."""
    missing = []
    for mod in ("torch", "open_clip", "onnx"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise RsvlmError(
            f"export needs {', '.join(missing)}, which are not installed",
            "pip install torch==2.14.1 torchvision==0.29.1 && pip install 'rsvlm-edge[export]'",
        )
