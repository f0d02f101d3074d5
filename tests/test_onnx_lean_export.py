"""The memory-lean export paths. ``export_onnx`` exports the graph without weights and folds the
constant subgraphs itself (``fold_constants``): the folded values must be what ONNX's own reference
evaluator computes for the same node, the weights must end up as initializers the quantiser sees
(MatMul reading the transposed weight directly), and the exported graph must give torch's outputs.
``prepare_for_quantization`` must write the graph onnxruntime's ``quant_pre_process`` writes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from rsvlm_edge.export.onnx_utils import (  # noqa: E402
    _fold_node,
    export_onnx,
    external_data_file,
    fold_constants,
    prepare_for_quantization,
)


def _reference(op: str, attrs: dict, xs: list[np.ndarray]) -> np.ndarray:
    """One node evaluated by onnx.reference (opset 17)."""
    names = [f"x{i}" for i in range(len(xs))]
    node = helper.make_node(op, names, ["y"], **attrs)
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
              for n, x in zip(names, xs)]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, dict(zip(names, xs)))[0]


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, data=st.data())
def test_folded_values_equal_onnx_reference(shape, data):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    ndim = len(shape)
    perm = data.draw(st.permutations(range(ndim)))
    cases = [("Transpose", {"perm": list(perm)}, [x]),
             ("Cast", {"to": TensorProto.FLOAT16}, [x]),
             ("Unsqueeze", {}, [x, np.array(sorted(data.draw(st.sets(st.integers(-ndim - 1, ndim), min_size=1,
                                                                    max_size=1))), dtype=np.int64)]),
             ("Reshape", {}, [x, np.array([0, -1] if ndim > 1 else [-1], dtype=np.int64)]),
             ("Concat", {"axis": data.draw(st.integers(-ndim, ndim - 1))}, [x, x]),
             ("Squeeze", {}, [x.reshape(1, *shape), np.array([0], dtype=np.int64)])]
    ints = [np.array(data.draw(st.lists(st.integers(-50, 50), min_size=3, max_size=3)), dtype=np.int64),
            np.array(data.draw(st.lists(st.integers(1, 7), min_size=3, max_size=3)), dtype=np.int64)]
    cases += [(op, {}, ints) for op in ("Add", "Sub", "Mul", "Mod")]
    for op, attrs, xs in cases:
        got = _fold_node(op, attrs, xs)
        want = _reference(op, attrs, xs)
        assert got is not None, op
        assert got.dtype == want.dtype and got.shape == want.shape, op
        np.testing.assert_array_equal(got, want, err_msg=op)


def test_not_folded_where_semantics_differ():
    a = np.array([5, 7], dtype=np.int64)
    assert _fold_node("Mod", {}, [a, np.array([0, 3], dtype=np.int64)]) is None  # division by zero
    assert _fold_node("Mod", {"fmod": 1}, [a, a]) is None
    assert _fold_node("Reshape", {"allowzero": 1}, [a, np.array([2], dtype=np.int64)]) is None
    assert _fold_node("Div", {}, [a, a]) is None  # not folded here: left to onnxruntime
    assert _fold_node("Add", {}, [a, a.astype(np.int32)]) is None  # mixed dtypes


def test_fold_constants_weights_become_initializers_and_shape_math_stays_constant():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["y0"]),
        helper.make_node("Constant", [], ["c1"], value=numpy_helper.from_array(np.array([3], dtype=np.int64))),
        helper.make_node("Constant", [], ["c2"], value=numpy_helper.from_array(np.array([7], dtype=np.int64))),
        helper.make_node("Add", ["c1", "c2"], ["s"]),
        helper.make_node("Concat", ["c1", "s"], ["shape"], axis=0),
        helper.make_node("Reshape", ["y0", "shape"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [15, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 10])])
    consts = {"w": w}
    assert fold_constants(graph, consts) == 3
    assert set(consts) == {"wt"}  # w had no other reader: dropped
    np.testing.assert_array_equal(consts["wt"], w.T)
    ops = [(n.op_type, list(n.input), list(n.output)) for n in graph.node]
    # the shape arithmetic folded into one Constant node in place; c1, c2 and s went with their readers
    assert ops == [("MatMul", ["x", "wt"], ["y0"]), ("Constant", [], ["shape"]), ("Reshape", ["y0", "shape"], ["y"])]
    shape = numpy_helper.to_array(graph.node[1].attribute[0].t)
    np.testing.assert_array_equal(shape, [3, 10])
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).standard_normal((15, 3)).astype(np.float32)
    np.testing.assert_allclose(ReferenceEvaluator(model).run(None, {"x": x})[0], (x @ w.T).reshape(3, 10), rtol=1e-6)


class _Block(torch.nn.Module):
    """Linear layers (their weights are transposed in the graph), a buffer and a parameter used
    through a reshape: the patterns of a CLIP tower."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc1 = torch.nn.Linear(12, 40)
        self.fc2 = torch.nn.Linear(40, 7, bias=False)
        self.token = torch.nn.Parameter(torch.randn(7))
        self.register_buffer("scale", torch.tensor([[0.5]]))

    def forward(self, x):
        h = torch.nn.functional.gelu(self.fc1(x))
        return self.fc2(h) * self.scale + self.token.reshape(1, 1, 7)


def test_export_onnx_writes_weights_from_the_state_dict_and_matches_torch(tmp_path):
    import onnxruntime as ort

    module = _Block().eval()
    path = tmp_path / "block.onnx"
    export_onnx(module, (torch.randn(2, 5, 12),), path, ["x"], ["y"])
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert [i.name for i in model.graph.input] == ["x"]
    readers = {i for n in model.graph.node for i in n.input}
    assert set(inits) <= readers  # nothing unused was written
    for node in model.graph.node:
        assert not (node.op_type == "Transpose" and node.input[0] in inits), "weight transposes are folded"
    weights = [n.input[1] for n in model.graph.node if n.op_type == "MatMul"]
    assert len(weights) == 2 and all(w in inits for w in weights)
    np.testing.assert_array_equal(inits[weights[0]], module.fc1.weight.detach().numpy().T)
    x = np.random.default_rng(1).standard_normal((3, 5, 12)).astype(np.float32)  # another batch
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_prepare_for_quantization_writes_what_quant_pre_process_writes(tmp_path):
    from clip_models import save_bare, tiny_open_clip
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from rsvlm_edge.export.clip import export_clip

    bundle = export_clip(save_bare(tiny_open_clip(seed=2), tmp_path / "m.pt"), tmp_path / "m.rsvlm").path
    theirs, ours = tmp_path / "theirs.onnx", tmp_path / "ours.onnx"
    quant_pre_process(str(bundle / "image.onnx"), str(theirs), skip_symbolic_shape=True)
    prepare_for_quantization(bundle / "image.onnx", ours)
    assert external_data_file(ours).exists()  # the weights went to the side file, not through Python
    a, b = onnx.load(str(theirs)), onnx.load(str(ours))
    assert list(a.graph.node) == list(b.graph.node)
    assert sorted(v.SerializeToString() for v in a.graph.value_info) == \
        sorted(v.SerializeToString() for v in b.graph.value_info)
    assert list(a.graph.input) == list(b.graph.input) and list(a.graph.output) == list(b.graph.output)
    ia = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ia.keys() == ib.keys() and all(np.array_equal(ia[k], ib[k]) for k in ia)
    assert {p.key: p.value for p in b.metadata_props}["onnx.quant.pre_process"] == "onnxruntime.quant"


def test_export_onnx_keeps_weights_external_above_the_limit(tmp_path, monkeypatch):
    import onnxruntime as ort

    from rsvlm_edge.export import onnx_utils

    module = _Block().eval()
    single, split = tmp_path / "single.onnx", tmp_path / "split.onnx"
    export_onnx(module, (torch.randn(2, 5, 12),), single, ["x"], ["y"])
    monkeypatch.setattr(onnx_utils, "EXTERNAL_DATA_ABOVE_BYTES", 1000)
    export_onnx(module, (torch.randn(2, 5, 12),), split, ["x"], ["y"])
    assert not external_data_file(single).exists() and external_data_file(split).exists()
    # the two weights over 1 KiB (fc1 1,920 B, fc2 1,120 B) live in the side file
    assert split.stat().st_size + 2500 < single.stat().st_size
    assert external_data_file(split).stat().st_size >= 1920 + 1120
    x = np.random.default_rng(2).standard_normal((4, 5, 12)).astype(np.float32)
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            for p in (single, split)]
    np.testing.assert_array_equal(outs[0], outs[1])
    a, b = onnx.load(str(single)), onnx.load(str(split))
    ia = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ia.keys() == ib.keys() and all(np.array_equal(ia[k], ib[k]) for k in ia)


def test_clip_bundle_with_external_weights_runs_and_matches(tmp_path, monkeypatch):
    """A CLIP tower over protobuf's limit (ViT-H/14 image tower in fp32) lands in the bundle with its
    weights file listed, and gives the same embeddings."""
    from clip_models import save_bare, tiny_open_clip

    import rsvlm_edge
    from rsvlm_edge.export import onnx_utils
    from rsvlm_edge.export.clip import export_clip, synthetic_rs_images

    ckpt = save_bare(tiny_open_clip(seed=4), tmp_path / "m.pt")
    plain = export_clip(ckpt, tmp_path / "plain.rsvlm").path
    monkeypatch.setattr(onnx_utils, "EXTERNAL_DATA_ABOVE_BYTES", 1000)
    split = export_clip(ckpt, tmp_path / "split.rsvlm").path
    listed = set(rsvlm_edge.bundle.open_bundle(split).manifest.files)
    assert {"image.fp32.onnx.data", "text.fp32.onnx.data"} <= listed
    pixels = synthetic_rs_images(2, 64, seed=3)
    want = rsvlm_edge.load(plain, backend="ort-cpu").encode_images(pixels)
    got = rsvlm_edge.load(split, backend="ort-cpu").encode_images(pixels)
    np.testing.assert_array_equal(got, want)
