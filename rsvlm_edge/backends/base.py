"""The backend interface and backend selection."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import BackendError

BACKENDS = ("auto", "ort", "native", "trt")


class EncoderModel(Protocol):
    """One compiled graph (e.g. a CLIP image or text encoder) that maps named inputs to outputs."""

    input_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def resolve_backend(name: str, available: dict[str, bool]) -> str:
    """Pick a backend. ``auto`` takes the first available of trt, native, ort; an explicit name must
    be available, else a BackendError names what is missing."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}'", f"choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        for cand in ("trt", "native", "ort"):
            if available.get(cand):
                return cand
        raise BackendError("no backend is available for this bundle", "pip install onnxruntime")
    if not available.get(name):
        why = {
            "trt": "this bundle has no TensorRT engine for this GPU, or tensorrt is not installed",
            "native": "the native backend does not run this model part yet in this build",
            "ort": "onnxruntime is not installed",
        }[name]
        raise BackendError(f"backend '{name}' is not available: {why}", "use --backend ort or auto")
    return name
