"""Where model parts run: one registry (``registry``) of graph backends (ONNX graphs:
``graph_ort``, ``graph_trt``; CLIP image towers on our kernels: ``graph_native`` on the CPU, ``graph_cuda_vit`` on a GPU) and decoder backends (one prefill/decode step over a KV cache: ``decoder_numpy``,
``decoder_native``; ``decoder_cuda`` runs whole decoder steps on a GPU). Importing this package registers every built-in backend."""

from . import decoder_cuda, decoder_native, decoder_numpy, graph_cuda_vit, graph_native, graph_ort, graph_trt  # noqa: F401  (registration)
from .registry import BackendSpec, Probe, all_backends, choose, doctor_rows, names, open_decoder, open_graph, register

__all__ = ["BackendSpec", "Probe", "all_backends", "choose", "doctor_rows", "names", "open_decoder", "open_graph",
           "register"]
