"""ONNX helpers shared by the CLIP and VLM exporters: export, check, fp16, INT8 QDQ, cosine report."""

from __future__ import annotations

from collections.abc import Iterator
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


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def weightless_matmuls(path: Path) -> list[str]:
    """Names of MatMul nodes whose inputs are both activations (attention QK^T and PV): no weight to
    quantise, and quantising their inputs costs accuracy and Q/DQ overhead."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def quantize_int8_qdq(src: Path, dst: Path, calib_feeds: list[dict[str, np.ndarray]], tmp_dir: Path) -> None:
    """Static INT8 QDQ quantisation of the weight MatMul/Gemm/Conv nodes, calibrated on ``calib_feeds``:
    uint8 asymmetric activations x int8 symmetric per-channel weights (U8S8: onnxruntime's fast x86 path,
    measured 2.7x faster than S8S8 at batch 1 on ViT-B/32 with the same cosine). Attention's activation x
    activation MatMuls, LayerNorm, Softmax and GELU stay in float: they carry the accuracy of a ViT.
    (TensorRT wants symmetric int8 activations: its engine build will need an S8S8 variant.)"""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp_dir / (src.stem + ".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(pre), str(dst), _Reader(calib_feeds),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            nodes_to_exclude=weightless_matmuls(pre),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    finally:
        pre.unlink(missing_ok=True)
        for p in tmp_dir.glob("augmented_model*.onnx"):
            p.unlink()
    import onnx

    onnx.checker.check_model(str(dst))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (N, E) arrays."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if np.any(den == 0):
        raise RsvlmError("an embedding is all zeros; the exported graph is broken")
    return (a * b).sum(1) / den
