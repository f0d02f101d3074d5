"""ONNX helpers shared by the CLIP and VLM exporters: export, check, fp16, INT8 QDQ, cosine report."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from ..errors import RsvlmError

OPSET = 17


def export_onnx(module, example: tuple, path: Path, input_names: list[str], output_names: list[str],
                dynamic_batch: bool = True) -> None:
    """torch.onnx.export (TorchScript exporter, opset 17), dynamic batch axis, then onnx.checker."""
    import onnx
    import torch

    axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no ONNX export.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        torch.onnx.export(module, example, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    onnx.checker.check_model(str(path), full_check=True)


def to_fp16(src: Path, dst: Path) -> None:
    """Weights and compute in fp16, inputs/outputs kept as in fp32 (uint8/int64 in, fp32 out)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))


class _OneBatch:
    """onnxruntime CalibrationDataReader that hands out one feed dict, then None."""

    def __init__(self, feeds: dict[str, np.ndarray]) -> None:
        self._feeds: dict[str, np.ndarray] | None = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        feeds, self._feeds = self._feeds, None
        return feeds


def weightless_matmuls(path: Path) -> list[str]:
    """Names of MatMul nodes whose inputs are both activations (attention QK^T and PV): no weight to
    quantise, and quantising their inputs costs accuracy and Q/DQ overhead."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]
# scheme -> (activation type name, extra_options). Weights are int8, symmetric, per channel in both.
#   u8s8: uint8 asymmetric activations (zero points): onnxruntime's fast x86 path, measured 2.7x faster
#         than S8S8 at batch 1 on ViT-B/32 with the same cosine;
#   s8s8: int8 symmetric activations (zero point 0): the only INT8 TensorRT runs (explicit quantisation).
QDQ_SCHEMES: dict[str, tuple[str, dict[str, bool]]] = {
    "u8s8": ("QUInt8", {"ActivationSymmetric": False, "WeightSymmetric": True}),
    "s8s8": ("QInt8", {"ActivationSymmetric": True, "WeightSymmetric": True}),
}


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc ``malloc_trim``; a no-op
    elsewhere): after a model copy is dropped, the process's resident size falls with it."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _lean_minmax_calibrator(model: Path, augmented: Path):
    """onnxruntime's ``MinMaxCalibrater`` over ``model`` (the inputs/outputs of ``QUANTIZED_OPS``
    nodes, as ``quantize_static`` calibrates them), lean on memory (measured with onnxruntime 1.32):

    * the Python copy of the model is dropped once the augmented graph is saved (only the session
      reads it after that);
    * the session runs nodes in priority order, so each added ReduceMin/ReduceMax runs as soon as its
      tensor exists; in the default order the tensors of the whole graph stayed alive until the end
      of the run (ViT-L/14-336 at batch 8 went past 10 GB; priority order: 8 GB, batch 1: 2.1 GB);
    * it plans no memory pattern and keeps no arena (with both, ViT-B/32's session grew by twice its
      weights during the first runs)."""
    import onnxruntime as ort
    from onnxruntime.quantization import MinMaxCalibrater

    class LeanMinMaxCalibrater(MinMaxCalibrater):
        def create_inference_session(self) -> None:
            self.model = None
            release_memory()
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opts.enable_mem_pattern = False
            opts.enable_cpu_mem_arena = False
            opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
            self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=opts,
                                                      providers=self.execution_providers)

    calibrator = LeanMinMaxCalibrater(model, QUANTIZED_OPS, augmented_model_path=str(augmented))
    calibrator.augment_graph()
    calibrator.create_inference_session()
    return calibrator


def calibrate_minmax(model: Path, batches: Iterable[dict[str, np.ndarray]], cache: Path, tmp_dir: Path,
                     on_batch: Callable[[], None] | None = None) -> None:
    """Run onnxruntime's MinMax calibrator over ``batches`` (feed dicts, consumed one at a time) and
    save the per-tensor ranges to ``cache`` (onnxruntime's calibration-cache JSON).

    Memory stays bounded by one batch: each batch is its own ``collect_data`` call, whose ranges are
    merged (min of mins, max of maxes: what one call over all batches computes) and dropped before the
    next batch is read. (onnxruntime's ``max_intermediate_outputs`` is not used: in onnxruntime 1.32
    ``MinMaxCalibrater.collect_data`` clears the collected outputs at that count without merging them.)"""
    from onnxruntime.quantization import save_tensors_data

    augmented = tmp_dir / "augmented_model.onnx"
    calibrator = _lean_minmax_calibrator(model, augmented)
    try:
        n = 0
        for feeds in batches:
            calibrator.collect_data(_OneBatch(feeds))
            n += 1
            if on_batch is not None:
                on_batch()
        if n == 0:
            raise RsvlmError("no calibration batches were given", "give calibration images (--calib DIR)")
        save_tensors_data(calibrator.compute_data(), cache)
    finally:
        del calibrator
        release_memory()
        augmented.unlink(missing_ok=True)
        for p in tmp_dir.glob("augmented_model*.onnx*"):
            p.unlink()


def quantize_int8_qdq(src: Path, outputs: Mapping[str, Path], calib_batches: Iterable[dict[str, np.ndarray]],
                      tmp_dir: Path, on_batch: Callable[[], None] | None = None) -> None:
    """Static INT8 QDQ quantisation of the weight MatMul/Gemm/Conv nodes of ``src``, one graph per
    scheme in ``outputs`` (``QDQ_SCHEMES`` key -> path), all from ONE calibration pass over
    ``calib_batches`` (the ranges are computed once, cached, and reused for every scheme).
    Attention's activation x activation MatMuls, LayerNorm, Softmax and GELU stay in float: they carry
    the accuracy of a ViT."""
    import inspect

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    unknown = set(outputs) - set(QDQ_SCHEMES)
    if unknown or not outputs:
        raise ValueError(f"unknown QDQ schemes {sorted(unknown)}; known: {sorted(QDQ_SCHEMES)}")
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise RsvlmError(f"onnxruntime {onnxruntime.__version__} cannot reuse one calibration for several "
                         "quantised graphs (quantize_static has no calibration_cache_path)",
                         "pip install -U onnxruntime (1.32 or newer)")
    pre = tmp_dir / (src.stem + ".pre.onnx")
    cache = tmp_dir / (src.stem + ".calibration.json")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    release_memory()
    try:
        calibrate_minmax(pre, calib_batches, cache, tmp_dir, on_batch)
        exclude = weightless_matmuls(pre)
        for scheme, dst in outputs.items():
            activation, extra = QDQ_SCHEMES[scheme]
            quantize_static(
                str(pre), str(dst), None,
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=getattr(QuantType, activation), weight_type=QuantType.QInt8,
                op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=exclude,
                calibrate_method=CalibrationMethod.MinMax, extra_options=dict(extra),
                calibration_cache_path=str(cache),
            )
            release_memory()
            onnx.checker.check_model(str(dst))
    finally:
        pre.unlink(missing_ok=True)
        cache.unlink(missing_ok=True)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (N, E) arrays."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if np.any(den == 0):
        raise RsvlmError("an embedding is all zeros; the exported graph is broken")
    return (a * b).sum(1) / den
