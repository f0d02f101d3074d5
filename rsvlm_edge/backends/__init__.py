"""Inference backends. ``ort`` (onnxruntime) is available everywhere; ``native`` and ``trt`` plug in
through the same ``ImageTextBackend`` protocol in ``base.py``."""

from .base import BACKENDS, resolve_backend

__all__ = ["BACKENDS", "resolve_backend"]
