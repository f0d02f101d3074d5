"""ONNX external data at run time: a bundle's graph may keep its weights in external-data files, but
only in files that are inside the bundle and listed (size + sha256) in its manifest. Everything
else is refused with a BundleError naming the location before onnxruntime opens the graph, so
nothing outside the bundle is read.

Graphs are built with ``onnx`` from a tiny CLIP export: ``image.onnx`` re-saved with
``save_as_external_data=True``, then (for the hostile cases) its ``location`` entries rewritten and
the data file moved where they point, so that onnxruntime *would* succeed if it were allowed to open
the graph: a refusal proves the check, not a missing file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from clip_models import save_bare, tiny_open_clip  # noqa: E402
from util import package_env, run_cli  # noqa: E402

import rsvlm_edge  # noqa: E402
from rsvlm_edge.backends import graph_ort  # noqa: E402
from rsvlm_edge.backends.graph_ort import OrtGraph, external_data_refs  # noqa: E402
from rsvlm_edge.bundle import open_bundle, sha256_of  # noqa: E402
from rsvlm_edge.errors import BundleError  # noqa: E402
from rsvlm_edge.export.clip import export_clip, synthetic_rs_images  # noqa: E402

pytestmark = pytest.mark.campaign("security")

PIXELS = synthetic_rs_images(3, 64, seed=11)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    d = tmp_path_factory.mktemp("ext")
    return export_clip(save_bare(tiny_open_clip(seed=5), d / "m.pt"), d / "m.rsvlm").path


@pytest.fixture(scope="module")
def reference(plain):
    return rsvlm_edge.load(plain, backend="ort-cpu").encode_images(PIXELS)


def _relist(bundle: Path, add: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> None:
    """Rewrite manifest.json's ``files``: every listed file re-hashed, ``add`` listed, ``drop`` unlisted."""
    mpath = bundle / "manifest.json"
    m = json.loads(mpath.read_text())
    names = (set(m["files"]) | set(add)) - set(drop)
    m["files"] = {n: {"size": (bundle / n).stat().st_size, "sha256": sha256_of(bundle / n)} for n in sorted(names)}
    mpath.write_text(json.dumps(m, indent=2))


def _externalize(plain: Path, dest: Path, location: str = "image.onnx.data") -> Path:
    """A copy of ``plain`` whose image.onnx keeps every initializer in ``location`` (listed)."""
    shutil.copytree(plain, dest)
    model = onnx.load(str(dest / "image.onnx"))
    (dest / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(dest / "image.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    _relist(dest, add=(location,))
    return dest


def _point_at(bundle: Path, location: str, move_to: Path | None) -> None:
    """Rewrite every external-data location of image.onnx to ``location`` and move the data file to
    ``move_to`` (where onnxruntime would find it), then re-hash image.onnx and unlist the old file."""
    graph = bundle / "image.onnx"
    model = onnx.load(str(graph), load_external_data=False)
    n = 0
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
                n += 1
    assert n > 0
    onnx.save_model(model, str(graph))
    if move_to is not None:
        move_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(bundle / "image.onnx.data"), str(move_to))
    _relist(bundle, drop=("image.onnx.data",))


@pytest.fixture()
def spy(monkeypatch):
    """Records every onnxruntime.InferenceSession opened, and every Python-level open of a file
    named like the secrets below (audit hook: catches any Python code reading them)."""
    import onnxruntime as ort

    opened: list[str] = []
    real = ort.InferenceSession

    def session(path, *a, **k):
        opened.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(ort, "InferenceSession", session)
    _AUDIT.clear()
    _AUDIT.append([])
    yield opened
    _AUDIT.clear()


_AUDIT: list[list[str]] = []


def _hook(event: str, args: tuple) -> None:
    if _AUDIT and event == "open" and args and "secret" in str(args[0]):
        mode = args[1] if len(args) > 1 else None
        if not (isinstance(mode, str) and any(c in mode for c in "wax")):  # the tests' own writes
            _AUDIT[0].append(str(args[0]))


sys.addaudithook(_hook)


def _secret_reads() -> list[str]:
    return list(_AUDIT[0]) if _AUDIT else []


# --- (a) listed external data: loads and gives the same outputs --------------------------------

def test_listed_external_data_loads_with_the_same_outputs(plain, reference, tmp_path):
    b = _externalize(plain, tmp_path / "ok.rsvlm")
    assert (b / "image.onnx").stat().st_size < (plain / "image.onnx").stat().st_size / 10  # weights moved out
    assert {r.location for r in external_data_refs((b / "image.onnx").read_bytes())} == {"image.onnx.data"}
    rt = rsvlm_edge.load(b, backend="ort-cpu")
    assert rt._image.external_files == ["image.onnx.data"]
    np.testing.assert_allclose(rt.encode_images(PIXELS), reference, rtol=1e-6, atol=1e-6)


def test_listed_external_data_in_a_subdirectory_loads(plain, reference, tmp_path):
    b = _externalize(plain, tmp_path / "sub.rsvlm", location="weights/image.data")
    assert (b / "weights" / "image.data").is_file()
    rt = rsvlm_edge.load(b, backend="ort-cpu")
    assert rt._image.external_files == ["weights/image.data"]
    np.testing.assert_allclose(rt.encode_images(PIXELS), reference, rtol=1e-6, atol=1e-6)


def test_runtime_with_external_data_imports_neither_torch_nor_onnx(plain, tmp_path):
    b = _externalize(plain, tmp_path / "ok.rsvlm")
    code = (
        "import sys, numpy as np, rsvlm_edge\n"
        f"rt = rsvlm_edge.load({str(b)!r}, backend='ort-cpu')\n"
        "rt.encode_images(np.zeros((1, 64, 64, 3), np.uint8))\n"
        "bad = [m for m in ('torch', 'onnx', 'open_clip', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=package_env())
    assert r.returncode == 0, r.stderr


# --- (b) unlisted ------------------------------------------------------------------------------

def test_unlisted_external_data_is_refused(plain, tmp_path, spy):
    b = _externalize(plain, tmp_path / "unlisted.rsvlm")
    _relist(b, drop=("image.onnx.data",))
    open_bundle(b)  # the manifest itself is consistent: only the graph's reference is wrong
    with pytest.raises(BundleError, match=r"'image\.onnx\.data', which the manifest does not list"):
        rsvlm_edge.load(b, backend="ort-cpu")
    assert not any(p.endswith("image.onnx") for p in spy)


def test_extra_unlisted_data_file_next_to_a_listed_one_is_refused(plain, tmp_path, spy):
    """Two tensors, one file listed and one not: every reference is checked, not just the first."""
    b = _externalize(plain, tmp_path / "two.rsvlm")
    model = onnx.load(str(b / "image.onnx"), load_external_data=False)
    last = model.graph.initializer[-1]
    for e in last.external_data:
        if e.key == "location":
            e.value = "other.data"
    onnx.save_model(model, str(b / "image.onnx"))
    shutil.copy(b / "image.onnx.data", b / "other.data")
    _relist(b)
    with pytest.raises(BundleError, match=r"'other\.data', which the manifest does not list"):
        rsvlm_edge.load(b, backend="ort-cpu")
    assert not any(p.endswith("image.onnx") for p in spy)


# --- (c) '..' (leading or inside a path), (d) absolute ---------------------------------------------

@pytest.mark.parametrize("secret, location", [
    ("secret.bin", "../secret.bin"),
    ("secret.bin", "sub/../../secret.bin"),  # sub/ exists, so the path resolves to tmp_path/secret.bin
    ("elsewhere/secret.bin", None),  # None: the secret's absolute path
], ids=["dotdot", "dotdot-inside-a-path", "absolute"])
def test_location_leaving_the_bundle_is_refused_without_reading_it(plain, tmp_path, spy, secret, location):
    b = _externalize(plain, tmp_path / "away.rsvlm")
    (b / "sub").mkdir()
    secret_path = tmp_path / secret
    location = location or str(secret_path)
    _point_at(b, location, secret_path)
    assert secret_path.is_file()  # onnxruntime would find it: the refusal is ours
    with pytest.raises(BundleError, match=f"'{re.escape(location)}', which is not a relative path inside the bundle") as e:
        rsvlm_edge.load(b, backend="ort-cpu")
    assert str(secret_path.stat().st_size) not in str(e.value)  # nothing about the file is revealed
    assert spy == [] and _secret_reads() == []


# --- (e) symlink out -------------------------------------------------------------------------------

def test_symlink_out_of_the_bundle_is_refused(plain, tmp_path, spy):
    b = _externalize(plain, tmp_path / "link.rsvlm")
    secret = tmp_path / "outside" / "secret.bin"
    entry = {"size": (b / "image.onnx.data").stat().st_size, "sha256": sha256_of(b / "image.onnx.data")}
    _point_at(b, "weights.bin", secret)
    (b / "weights.bin").symlink_to(secret)
    # unlisted link: refused by the graph check
    with pytest.raises(BundleError, match="'weights.bin', which the manifest does not list"):
        rsvlm_edge.load(b, backend="ort-cpu")
    # listed link: refused when the bundle is opened, before any graph
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["weights.bin"] = entry  # the right size and hash: only the link is wrong
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="link that leaves the bundle"):
        rsvlm_edge.load(b, backend="ort-cpu")
    # the graph check on its own (OrtGraph given the manifest's files, no open_bundle): refused too
    from rsvlm_edge.bundle import read_manifest

    manifest = read_manifest(b)
    with pytest.raises(BundleError, match="'weights.bin', a link that leaves the bundle"):
        OrtGraph(manifest.parts["image"], b / "image.onnx", ["CPUExecutionProvider"], "ort-cpu", files=manifest.files)
    with pytest.raises(BundleError, match="a link that leaves the bundle"):  # files read from manifest.json
        OrtGraph(manifest.parts["image"], b / "image.onnx", ["CPUExecutionProvider"], "ort-cpu")
    assert spy == [] and _secret_reads() == []


def test_symlinked_directory_out_of_the_bundle_is_refused(plain, tmp_path, spy):
    b = _externalize(plain, tmp_path / "dirlink.rsvlm")
    outside = tmp_path / "outside_dir"
    _point_at(b, "w/secret.bin", outside / "secret.bin")
    (b / "w").symlink_to(outside, target_is_directory=True)
    from rsvlm_edge.bundle import read_manifest

    manifest = read_manifest(b)
    files = dict(manifest.files, **{"w/secret.bin": manifest.files["image.onnx"]})
    with pytest.raises(BundleError, match="a link that leaves the bundle"):
        OrtGraph(manifest.parts["image"], b / "image.onnx", ["CPUExecutionProvider"], "ort-cpu", files=files)
    assert spy == [] and _secret_reads() == []


# --- other hostile references ------------------------------------------------------------------------

def test_onnxruntime_memory_address_marker_is_refused(plain, tmp_path, spy):
    """onnxruntime reads location '*/_ORT_MEM_ADDR_/*' from the raw address in 'offset'."""
    b = _externalize(plain, tmp_path / "mem.rsvlm")
    _point_at(b, "*/_ORT_MEM_ADDR_/*", None)
    with pytest.raises(BundleError, match="memory-address marker"):
        rsvlm_edge.load(b, backend="ort-cpu")
    assert spy == []


def test_offset_past_the_end_of_a_listed_file_is_refused(plain, tmp_path, spy):
    b = _externalize(plain, tmp_path / "off.rsvlm")
    model = onnx.load(str(b / "image.onnx"), load_external_data=False)
    for e in model.graph.initializer[0].external_data:
        if e.key == "offset":
            e.value = str(10 ** 12)
    onnx.save_model(model, str(b / "image.onnx"))
    _relist(b)
    with pytest.raises(BundleError, match="past its end"):
        rsvlm_edge.load(b, backend="ort-cpu")
    assert spy == []


def test_external_data_in_a_constant_node_inside_a_subgraph_is_checked(tmp_path, spy):
    """References are found wherever a TensorProto can be: here a Constant node's ``value`` inside an
    If node's ``then_branch``, not an initializer."""
    from onnx import TensorProto, helper, numpy_helper

    b = tmp_path / "deep.rsvlm"
    b.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    value = numpy_helper.from_array(np.zeros(4, np.float32), "c")
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        value.external_data.add(key=k, value=v)
    then = helper.make_graph([helper.make_node("Constant", [], ["y"], value=value)], "then", [],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    other = helper.make_graph([helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones(4, np.float32)))],
                              "else", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    g = helper.make_graph([helper.make_node("If", ["cond"], ["out"], then_branch=then, else_branch=other)], "g",
                          [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])])
    onnx.save_model(helper.make_model(g), str(b / "g.onnx"))
    refs = external_data_refs((b / "g.onnx").read_bytes())
    assert [(r.tensor, r.location, r.offset, r.length) for r in refs] == [("c", "../secret.bin", "0", "16")]

    class Part:
        file = "g.onnx"

    with pytest.raises(BundleError, match=r"tensor 'c' reads external data from '\.\./secret\.bin'"):
        graph_ort.check_external_data(Part(), b / "g.onnx", files={"g.onnx": None})
    assert _secret_reads() == []


def test_walker_finds_the_same_references_as_onnx_everywhere(tmp_path):
    """Initializers, sparse initializers (values and indices), attribute tensors and tensor lists,
    subgraphs, functions: the protobuf walk and the onnx package agree on every reference."""
    from onnx import TensorProto, helper, numpy_helper

    def ext(name: str, loc: str) -> TensorProto:
        t = numpy_helper.from_array(np.zeros(2, np.float32), name)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=loc)
        return t

    sparse = helper.make_sparse_tensor(ext("sv", "sparse_values.bin"), ext("si", "sparse_idx.bin"), [4])
    sub = helper.make_graph([helper.make_node("Constant", [], ["z"], value=ext("sub_c", "sub.bin"))], "sub", [],
                            [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    node = helper.make_node("Foo", ["x"], ["y"], domain="custom", t=ext("attr_t", "attr.bin"), g=sub)
    node.attribute.append(helper.make_attribute("ts", [ext("list0", "list0.bin"), ext("list1", "list1.bin")]))
    func = helper.make_function("custom", "Fn", ["a"], ["b"],
                                [helper.make_node("Constant", [], ["b"], value=ext("fn_c", "fn.bin"))],
                                [helper.make_opsetid("", 17)])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                          initializer=[ext("init", "init.bin")], sparse_initializer=[sparse])
    model = helper.make_model(g, functions=[func], opset_imports=[helper.make_opsetid("", 17),
                                                                     helper.make_opsetid("custom", 1)])
    data = model.SerializeToString()
    got = sorted((r.tensor, r.location) for r in external_data_refs(data))
    expect = sorted([("init", "init.bin"), ("sv", "sparse_values.bin"), ("si", "sparse_idx.bin"),
                     ("attr_t", "attr.bin"), ("sub_c", "sub.bin"), ("list0", "list0.bin"),
                     ("list1", "list1.bin"), ("fn_c", "fn.bin")])
    assert got == expect
    from onnx.external_data_helper import _get_all_tensors  # initializers + attribute tensors, recursively

    assert {(t.name, t.external_data[0].value) for t in _get_all_tensors(onnx.load_from_string(data))} <= set(expect)


def test_walker_refuses_malformed_graphs_cleanly(plain, tmp_path):
    """Truncated or damaged graph files: OnnxParseError (BundleError in OrtGraph), never another
    exception; and a garbage image.onnx is refused with one clear error."""
    data = (plain / "image.onnx").read_bytes()
    rng = np.random.default_rng(0)
    for cut in sorted(set(rng.integers(1, len(data), 200).tolist())):
        try:
            external_data_refs(data[:cut])
        except graph_ort.OnnxParseError:
            pass
    for _ in range(200):
        buf = bytearray(data[:4096])
        for i in rng.integers(0, len(buf), 8):
            buf[i] = int(rng.integers(0, 256))
        try:
            external_data_refs(bytes(buf))
        except graph_ort.OnnxParseError:
            pass
    graph = b""
    for _ in range(40):  # graph > node > attribute > graph ... 120 levels: deeper than any real model
        attr = b"\x32" + _varint_bytes(len(graph)) + graph  # AttributeProto.g
        node = b"\x2a" + _varint_bytes(len(attr)) + attr  # NodeProto.attribute
        graph = b"\x0a" + _varint_bytes(len(node)) + node  # GraphProto.node
    with pytest.raises(graph_ort.OnnxParseError, match="nested deeper"):
        external_data_refs(b"\x3a" + _varint_bytes(len(graph)) + graph)  # ModelProto.graph

    b = tmp_path / "garbage.rsvlm"
    shutil.copytree(plain, b)
    (b / "image.onnx").write_bytes(b"\x0f\xff\xff" + data[3:4000])
    _relist(b)
    with pytest.raises(BundleError, match="image.onnx"):
        rsvlm_edge.load(b, backend="ort-cpu")


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_cli_refuses_an_escaping_graph_with_error_and_fix(plain, tmp_path):
    b = _externalize(plain, tmp_path / "cli.rsvlm")
    _point_at(b, "../secret.bin", tmp_path / "secret.bin")
    from PIL import Image

    Image.fromarray(PIXELS[0]).save(tmp_path / "x.png")
    r = run_cli("classify", str(b), str(tmp_path / "x.png"), "--labels", "forest,river")
    assert r.returncode == 2, r.stderr + r.stdout
    assert "Traceback" not in r.stderr + r.stdout
    assert "error:" in r.stderr and "fix:" in r.stderr
    assert "../secret.bin" in r.stderr
