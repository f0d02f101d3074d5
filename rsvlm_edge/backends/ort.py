"""onnxruntime backend: one ``OrtModel`` per ONNX graph."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BackendError, BundleError


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OrtModel:
    """An onnxruntime InferenceSession with our defaults.

    ``providers``: onnxruntime execution providers in priority order; default prefers CUDA where the
    installed onnxruntime has it, else CPU. ``threads``: intra-op threads (default: onnxruntime's).
    ``fp16``: the graph computes in fp16. onnxruntime 1.32's CPU layout optimisations (ORT_ENABLE_ALL)
    crash on such graphs, so they get ORT_ENABLE_EXTENDED.
    """

    def __init__(self, path: str | os.PathLike[str], providers: list[str] | None = None,
                 threads: int | None = None, fp16: bool = False) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        level = ort.GraphOptimizationLevel
        opts.graph_optimization_level = level.ORT_ENABLE_EXTENDED if fp16 else level.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        have = available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]
        missing = [p for p in providers if p not in have]
        if missing:
            raise BackendError(f"onnxruntime has no {', '.join(missing)} in this install (has {', '.join(have)})",
                               "install onnxruntime-gpu for CUDA, or use the CPU provider")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"onnxruntime cannot load '{self.path}': {e}", "re-export the bundle") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)
