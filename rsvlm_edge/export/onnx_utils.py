"""ONNX helpers shared by the CLIP and VLM exporters: export, check, fp16, INT8 QDQ, cosine report."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from ..errors import RsvlmError

OPSET = 17


def export_onnx(module, example: tuple, path: Path, input_names: list[str], output_names: list[str],
                dynamic_batch: bool = True) -> None:
    """Export ``module`` to ONNX (TorchScript exporter, opset 17, dynamic batch axis), checked by
    onnx.checker (full check), in bounded memory.

    Memory: torch's exporter, given the weights, holds them four times over at its peak (its folded
    copies, its ModelProto, the serialised string and Python's bytes of it; measured on ViT-L/14-336:
    +4.8 GB over a 1.7 GB model). So the graph is exported *without* weights and unfolded, under
    no_grad; the constant subgraphs torch would have folded (the transposed MatMul weights above all,
    which quantisation needs as initializers) are folded here, one tensor at a time
    (``fold_constants``), from the module's own tensors (the exporter names the graph's weight inputs
    by their state-dict names); and the file is written one tensor at a time (``write_graph``). The
    graph's nodes are the exporter's; only where constants are computed moves."""
    import onnx
    import torch

    axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no ONNX export.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # Without no_grad the trace records autograd state for every activation (ViT-L/14-336: +2.7 GB).
        with torch.no_grad():
            torch.onnx.export(module, example, str(path), input_names=input_names, output_names=output_names,
                              dynamic_axes=axes, opset_version=OPSET, do_constant_folding=False,
                              export_params=False, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model = onnx.load(str(path))
    state = module.state_dict(keep_vars=True)
    weights = [i.name for i in model.graph.input if i.name not in input_names]
    unknown = [n for n in weights if n not in state]
    if unknown:
        raise RsvlmError(f"torch's ONNX export left graph inputs that are not in the module's state dict: {unknown[:5]}",
                         "report this with your torch version (the exporter's weight naming changed)")
    keep = [i for i in model.graph.input if i.name in input_names]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    consts = {name: state[name].detach().cpu().numpy() for name in weights}  # views of the module's tensors
    del state
    fold_constants(model.graph, consts)
    write_graph(model, consts, path)


EXTERNAL_DATA_ABOVE_BYTES = 1_800_000_000
# Tensors smaller than this stay inside the graph even where weights go to external data: shape
# inference reads them (Reshape targets and the like), and onnxruntime cannot read those from a file.
INLINE_BELOW_BYTES = 1024


def external_data_file(graph: Path) -> Path:
    """Where ``export_onnx`` puts the weights of a graph over ``EXTERNAL_DATA_ABOVE_BYTES``."""
    return graph.with_name(graph.name + ".data")


def move_graph(src: Path, dst: Path) -> None:
    """Move an exported graph (and its external-data file, kept under its own name beside it, which the
    graph refers to) to ``dst``; the temp dir may be on another file system."""
    import shutil

    data = external_data_file(src)
    if data.exists():
        shutil.move(data, dst.with_name(data.name))
    shutil.move(src, dst)


def write_graph(model, consts: dict[str, np.ndarray], path: Path) -> None:
    """Write ``model`` (a graph without initializers) with ``consts`` as its initializers to ``path``,
    one tensor at a time, after onnx.checker (full check) has passed the same graph.

    Neither the file nor a proto with every weight is ever held in memory: a protobuf parser merges
    repeated occurrences of a message field, so the file is the serialised structure followed by one
    ``ModelProto{graph{initializer: t}}`` fragment per tensor (the same bytes ``onnx.save`` writes, up
    to field order). Graphs whose weights exceed ``EXTERNAL_DATA_ABOVE_BYTES`` (protobuf's 2 GB limit)
    keep them in ``external_data_file(path)`` instead, which the runtime accepts when the bundle
    lists it. The check runs on the structure with each weight as an external reference (dims and
    types; for a single-file graph the referenced file is a sparse stand-in, removed after), tensors
    under ``INLINE_BELOW_BYTES`` inline."""
    import onnx

    data = external_data_file(path)
    external = sum(a.nbytes for a in consts.values()) > EXTERNAL_DATA_ABOVE_BYTES
    refs = onnx.ModelProto()
    refs.CopyFrom(model)
    offsets: dict[str, int] = {}  # weights of INLINE_BELOW_BYTES and more -> offset in the external-data file
    end = 0
    for name, array in consts.items():
        if array.nbytes < INLINE_BELOW_BYTES:
            refs.graph.initializer.append(_tensor_proto(array, name))
            continue
        offsets[name] = -(-end // 4096) * 4096  # page-aligned, as onnx's own external-data writer
        end = offsets[name] + array.nbytes
        t = refs.graph.initializer.add()
        t.name, t.data_type = name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        t.dims.extend(array.shape)
        for key, value in (("location", data.name), ("offset", str(offsets[name])), ("length", str(array.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        t.data_location = onnx.TensorProto.EXTERNAL
    with open(data, "wb") as f:  # the real weights where they stay external, else a sparse stand-in
        if external:
            for name, offset in offsets.items():
                f.seek(offset)
                f.write(np.ascontiguousarray(consts[name]).data)
        f.truncate(end)
    path.write_bytes(refs.SerializeToString())
    onnx.checker.check_model(str(path), full_check=True)  # reads the structure, not the weights
    if external:
        return
    data.unlink()
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
        for name in offsets:
            fragment = onnx.ModelProto()
            fragment.graph.initializer.append(_tensor_proto(consts[name], name))
            f.write(fragment.SerializeToString())
            del fragment
        small = onnx.ModelProto()
        small.graph.initializer.extend(t for t in refs.graph.initializer if t.name not in offsets)
        f.write(small.SerializeToString())


def _tensor_proto(array: np.ndarray, name: str):
    import onnx

    return onnx.numpy_helper.from_array(np.ascontiguousarray(array), name)


def _fold_node(op: str, attrs: dict, xs: list[np.ndarray]) -> np.ndarray | None:
    """numpy value of one ONNX node (opset 17 semantics) whose inputs are all constants, or None
    where this op is not folded here (it is left to onnxruntime's own folding at load)."""
    import onnx

    if op == "Transpose":
        return np.transpose(xs[0], attrs.get("perm"))
    if op == "Cast":
        return xs[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Reshape" and not attrs.get("allowzero", 0):
        shape = [d if d != 0 else xs[0].shape[i] for i, d in enumerate(xs[1].tolist())]
        return xs[0].reshape(shape)
    if op == "Unsqueeze":
        out = xs[0]
        for axis in sorted(a % (out.ndim + len(xs[1].reshape(-1))) for a in xs[1].reshape(-1).tolist()):
            out = np.expand_dims(out, axis)
        return out
    if op == "Squeeze":
        return np.squeeze(xs[0], tuple(xs[1].reshape(-1).tolist())) if len(xs) > 1 else np.squeeze(xs[0])
    if op == "Concat":
        return np.concatenate(xs, axis=attrs["axis"])
    if op in ("Add", "Sub", "Mul") and all(x.dtype == xs[0].dtype for x in xs):
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](xs[0], xs[1]).astype(xs[0].dtype)
    if op == "Mod" and xs[0].dtype.kind in "iu" and xs[1].dtype == xs[0].dtype and not attrs.get("fmod", 0):
        if np.any(xs[1] == 0):
            return None
        return np.mod(xs[0], xs[1])
    return None


def fold_constants(graph, consts: dict[str, np.ndarray]) -> int:
    """Fold, in place, the nodes of ``graph`` whose inputs are all constants: ``consts`` (initializer
    name -> value, not yet in the graph) or ``Constant`` node outputs. Folded: Transpose, Cast,
    Reshape, (Un)Squeeze, Concat, integer Add/Sub/Mul/Mod (what torch's exporter folds with
    ``do_constant_folding``; the rest is left to onnxruntime's folding at load). A folded output
    computed from a weight joins ``consts`` under its name; one computed from Constant nodes only
    (shape arithmetic) becomes a Constant node in place. A constant is dropped from ``consts`` (or its
    Constant node from the graph) as soon as its last reader is folded, so one weight at a time exists
    twice. The caller writes ``consts`` as the initializers (protobuf arenas do not give memory back,
    so weights enter the proto only once, after folding). Returns the number of nodes folded."""
    import onnx

    constant_nodes = {o: n for n in graph.node if n.op_type == "Constant" for o in n.output}
    readers: dict[str, int] = {o.name: 1 for o in graph.output}  # graph outputs are never dropped
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1

    def value(name: str) -> np.ndarray | None:
        if name in consts:
            return consts[name]
        node = constant_nodes[name]
        if len(node.attribute) != 1 or node.attribute[0].name != "value":
            return None
        return onnx.numpy_helper.to_array(node.attribute[0].t)

    def release(name: str) -> None:
        readers[name] -= 1
        if readers[name] > 0:
            return
        if name in consts:
            del consts[name]
        elif name in constant_nodes:
            graph.node.remove(constant_nodes.pop(name))

    folded = 0
    for node in list(graph.node):
        if node.op_type == "Constant" or not node.input or len(node.output) != 1:
            continue
        if not all(i in consts or i in constant_nodes for i in node.input):
            continue
        xs = [value(i) for i in node.input]
        if any(x is None for x in xs):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        out = _fold_node(node.op_type, attrs, xs)
        del xs
        if out is None:
            continue
        inputs = list(node.input)
        if any(i in consts for i in inputs):  # computed from weights: a new initializer
            consts[node.output[0]] = np.ascontiguousarray(out)
            graph.node.remove(node)
        else:  # computed from Constant nodes only (shape arithmetic): stays a Constant node, in place,
            # as torch leaves it (onnxruntime's shape inference cannot read such values from external data)
            del node.input[:]
            del node.attribute[:]
            node.op_type, node.domain = "Constant", ""
            node.attribute.append(onnx.helper.make_attribute("value", _tensor_proto(out, node.output[0])))
            constant_nodes[node.output[0]] = node
        for name in inputs:
            release(name)
        folded += 1
    return folded


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


def prepare_for_quantization(src: Path, dst: Path) -> None:
    """What onnxruntime's ``quant_pre_process(src, dst, skip_symbolic_shape=True)`` does, in a quarter of
    its memory: onnxruntime's basic graph optimisation (written with the weights in one external-data
    file beside ``dst``, ``external_data_file``), then ONNX shape inference on the graph's structure
    alone, and the same ``onnx.quant.pre_process`` mark. ``quant_pre_process`` holds a loaded copy of
    the model while onnxruntime optimises another, and shape-infers a third (ViT-L/14-336: 5.5 GB peak;
    here 1.2 GB, with the same nodes, value_info and initializers, checked on that graph)."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                  external_data_file(dst).name)
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                  str(INLINE_BELOW_BYTES))
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    model = onnx.shape_inference.infer_shapes(onnx.load(str(dst), load_external_data=False))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        "onnx.quant.pre_process": "onnxruntime.quant"})
    onnx.save(model, str(dst))


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
    prepare_for_quantization(src, pre)
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
        external_data_file(pre).unlink(missing_ok=True)
        cache.unlink(missing_ok=True)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (N, E) arrays."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if np.any(den == 0):
        raise RsvlmError("an embedding is all zeros; the exported graph is broken")
    return (a * b).sum(1) / den
