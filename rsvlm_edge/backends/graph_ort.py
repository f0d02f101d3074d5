"""onnxruntime graph backends: ``ort-cuda`` (CUDAExecutionProvider, falling back to CPU) and
``ort-cpu``.

A session is checked against its manifest part when it opens: the graph's input and output names,
element types and ranks, and every fixed dimension must be what the manifest says, so a graph
that contradicts its manifest is refused before anything runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, BundleError, InputError
from .registry import BackendSpec, Probe, register

_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(float)": "float32", "tensor(float16)": "float16"}


def _providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _version() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}"


class OrtGraph:
    """An onnxruntime InferenceSession for one graph part.

    ``threads``: intra-op threads (default: onnxruntime's). fp16 graphs get ORT_ENABLE_EXTENDED
    because onnxruntime 1.32's CPU layout optimisations (ORT_ENABLE_ALL) crash on them.
    ``InferenceSession.run`` is thread-safe, so one ``OrtGraph`` may serve several threads.
    """

    def __init__(self, part: Any, path: str | os.PathLike[str], providers: list[str], backend: str,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.part = part
        self.path = Path(path)
        self.backend = backend
        opts = ort.SessionOptions()
        level = ort.GraphOptimizationLevel
        opts.graph_optimization_level = level.ORT_ENABLE_EXTENDED if part.precision == "fp16" else level.ORT_ENABLE_ALL
        if threads is not None:
            if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
                raise InputError(f"threads must be a positive integer (got {threads!r})", "e.g. --threads 2")
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise BundleError(f"onnxruntime cannot load '{self.path.name}' of bundle '{self.path.parent}' ({first[:300]})",
                              "re-export the bundle") from None
        self._check_io()
        self.input_names = [t.name for t in part.inputs]
        self.output_names = [t.name for t in part.outputs]
        self.providers = self.session.get_providers()

    @property
    def provider(self) -> str:
        return self.providers[0]

    def _check_io(self) -> None:
        for what, got, want in (("input", self.session.get_inputs(), self.part.inputs),
                                ("output", self.session.get_outputs(), self.part.outputs)):
            got_names = [g.name for g in got]
            if got_names != [w.name for w in want]:
                raise BundleError(f"'{self.path.name}' has {what}s {got_names}, the manifest says {[w.name for w in want]}",
                                  "re-export the bundle")
            for g, w in zip(got, want):
                dtype = _ORT_TYPES.get(g.type, g.type)
                shape = list(g.shape)
                fixed_ok = len(shape) == len(w.shape) and all(
                    not isinstance(d, int) or not isinstance(e, int) or d == e for d, e in zip(shape, w.shape))
                if dtype != w.dtype or not fixed_ok:
                    raise BundleError(
                        f"'{self.path.name}' {what} '{g.name}' is {dtype} {shape}, the manifest says {w.dtype} {list(w.shape)}",
                        "re-export the bundle; its graph and manifest do not belong together")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the manifest's order for ``feeds`` keyed by the manifest's input names."""
        return self.session.run(self.output_names, feeds)


def _probe_cpu() -> Probe:
    try:
        have = _providers()
    except ImportError as e:
        return Probe(False, f"onnxruntime is not installed ({e})")
    if "CPUExecutionProvider" not in have:
        return Probe(False, "this onnxruntime has no CPUExecutionProvider", _version())
    return Probe(True, versions=_version(), device="cpu")


def _probe_cuda() -> Probe:
    try:
        have = _providers()
    except ImportError as e:
        return Probe(False, f"onnxruntime is not installed ({e})")
    if "CUDAExecutionProvider" not in have:
        return Probe(False, "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)", _version())
    return Probe(True, versions=_version(), device="cuda (CUDAExecutionProvider)")


register(BackendSpec(
    name="ort-cuda", kind="graph", rank=20, device="cuda",
    summary="onnxruntime, CUDA execution provider (CPU fallback for unsupported nodes)",
    probe=_probe_cuda,
    factory=lambda part, path, threads=None: OrtGraph(part, path, ["CUDAExecutionProvider", "CPUExecutionProvider"],
                                                      "ort-cuda", threads),
))
register(BackendSpec(
    name="ort-cpu", kind="graph", rank=90, device="cpu",
    summary="onnxruntime, CPU execution provider",
    probe=_probe_cpu,
    factory=lambda part, path, threads=None: OrtGraph(part, path, ["CPUExecutionProvider"], "ort-cpu", threads),
))


def require_ort() -> None:
    """BackendError when onnxruntime is missing (used by export-side validation)."""
    probe = _probe_cpu()
    if not probe.available:
        raise BackendError(probe.why_not, "pip install onnxruntime")
