"""The TensorRT backend without a GPU: engine names, profiles, precisions, the engine cache (stale,
tampered, foreign and unwritable cases), the TensorRT 10 builder calls, selection, and the run path.

Only the boundary is faked: ``tensorrt`` and cuda-python's ``cuda.bindings.runtime`` are replaced in
``sys.modules`` by small fakes that record every call. The fake "device" memory is host memory (so
copies are real ``memmove``s, checked against the allocation sizes) and the fake engine computes with
onnxruntime on the ONNX file it was "built" from, so the run path's buffers, shapes and batch splitting
are checked against real embeddings. The real thing is ``test_trt_conformance.py`` (GPU only)."""

from __future__ import annotations

import ctypes
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from clip_models import save_bare, tiny_open_clip  # noqa: E402
from util import run_cli  # noqa: E402

import rsvlm_edge  # noqa: E402
from rsvlm_edge.backends import graph_trt, registry  # noqa: E402
from rsvlm_edge.backends.graph_trt import (  # noqa: E402
    EngineKey,
    build_dir,
    build_engines,
    engine_precision,
    ensure_engine,
    load_engine_bytes,
    part_graph,
    profile_range,
    profile_shapes,
    sidecar_path,
)
from rsvlm_edge.bundle import open_bundle  # noqa: E402
from rsvlm_edge.bundle.schema import GraphPart, TensorSpec  # noqa: E402
from rsvlm_edge.errors import BackendError, InputError  # noqa: E402
from rsvlm_edge.export.clip import export_clip  # noqa: E402
from rsvlm_edge.synthetic import synthetic_rs_images  # noqa: E402

GPU_NAME = "NVIDIA Jetson AGX Orin"
PLAN_MAGIC = b"FAKEPLAN"


# ---- fakes of the two boundaries ------------------------------------------------------------------

def fake_tensorrt(calls: list, version: str = "10.3.0", typed: bool = False) -> types.ModuleType:
    """A ``tensorrt`` module with the TensorRT 10 Python API names rsvlm-edge uses (``typed``: the
    TensorRT 11 API, without FP16/INT8 builder flags). Every call is appended to ``calls``."""
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    dtypes = {"tensor(float)": "FLOAT", "tensor(float16)": "HALF", "tensor(uint8)": "UINT8",
              "tensor(int64)": "INT64", "tensor(int32)": "INT32"}
    np_of = {"FLOAT": np.float32, "HALF": np.float16, "UINT8": np.uint8, "INT64": np.int64, "INT32": np.int32}

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity=None) -> None:
            self.severity = severity

    class IProgressMonitor:
        def __init__(self) -> None:
            calls.append(("monitor_init",))

    trt.Logger, trt.IProgressMonitor = Logger, IProgressMonitor
    trt.BuilderFlag = types.SimpleNamespace() if typed else types.SimpleNamespace(FP16="FP16", INT8="INT8")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dt: np_of[dt]

    class TimingCache:
        def __init__(self, blob: bytes) -> None:
            self.blob = bytes(blob)

        def serialize(self) -> bytes:
            return self.blob + b"|timed"

    class Config:
        def __init__(self) -> None:
            self.progress_monitor = None
            self.flags: list[str] = []
            self.profiles: list = []
            self.timing = None

        def set_memory_pool_limit(self, pool, size) -> None:
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag) -> None:
            calls.append(("set_flag", flag))
            self.flags.append(flag)

        def add_optimization_profile(self, profile) -> int:
            calls.append(("add_optimization_profile",))
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob) -> TimingCache:
            calls.append(("create_timing_cache", bytes(blob)))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch) -> bool:
            calls.append(("set_timing_cache", ignore_mismatch))
            self.timing = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.timing

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, list] = {}

        def set_shape(self, name, min, opt, max) -> None:  # noqa: A002 (TensorRT's own argument names)
            calls.append(("set_shape", name, tuple(min), tuple(opt), tuple(max)))
            self.shapes[name] = [list(min), list(opt), list(max)]

    class Network:
        onnx: str | None = None

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.network, self.errors = network, []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path) -> bool:
            calls.append(("parse_from_file", str(path)))
            try:
                ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            except Exception as e:
                self.errors.append(f"ModelImporter: {e.__class__.__name__}")
                return False
            self.network.onnx = str(path)
            return True

    class Builder:
        def __init__(self, logger) -> None:
            calls.append(("Builder",))

        def create_network(self, flags=0) -> Network:
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network, config) -> bytes:
            calls.append(("build_serialized_network", network.onnx, tuple(config.flags)))
            mon = config.progress_monitor
            if mon is not None:
                mon.phase_start("Building engine", None, 2)
                for step in range(2):
                    assert mon.step_complete("Building engine", step) is True
                mon.phase_finish("Building engine")
            body = {"onnx": network.onnx, "flags": config.flags, "profile": config.profiles[0].shapes}
            return PLAN_MAGIC + json.dumps(body).encode()

    class Context:
        def __init__(self, engine) -> None:
            self.engine, self.addr, self.shapes = engine, {}, {}

        def set_tensor_address(self, name, ptr) -> bool:
            self.addr[name] = int(ptr)
            return True

        def set_input_shape(self, name, shape) -> bool:
            lo, _, hi = self.engine.profile[name]
            ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            batch = next(iter(self.shapes.values()))[0]
            return (batch, *self.engine.out_dims[name])

        def execute_async_v3(self, stream_handle) -> bool:
            calls.append(("execute_async_v3", stream_handle))
            feeds = {}
            for i in self.engine.session.get_inputs():
                shape, dt = self.shapes[i.name], np.dtype(np_of[dtypes[i.type]])
                n = int(np.prod(shape)) * dt.itemsize
                feeds[i.name] = np.frombuffer((ctypes.c_uint8 * n).from_address(self.addr[i.name]), dtype=dt).reshape(shape).copy()
            for o, val in zip(self.engine.session.get_outputs(), self.engine.session.run(None, feeds)):
                val = np.ascontiguousarray(val)
                ctypes.memmove(self.addr[o.name], val.ctypes.data, val.nbytes)
            return True

    class Engine:
        def __init__(self, body) -> None:
            self.session = ort.InferenceSession(body["onnx"], providers=["CPUExecutionProvider"])
            self.profile = body["profile"]
            self.ios = [(i.name, "INPUT", i.type) for i in self.session.get_inputs()]
            self.ios += [(o.name, "OUTPUT", o.type) for o in self.session.get_outputs()]
            self.out_dims = {o.name: tuple(o.shape[1:]) for o in self.session.get_outputs()}

        @property
        def num_io_tensors(self) -> int:
            return len(self.ios)

        def get_tensor_name(self, i):
            return self.ios[i][0]

        def get_tensor_mode(self, name):
            return next(m for n, m, _ in self.ios if n == name)

        def get_tensor_dtype(self, name):
            return dtypes[next(t for n, _, t in self.ios if n == name)]

        def get_tensor_profile_shape(self, name, index):
            return self.profile[name]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize_cuda_engine", bytes(data)))
            if not bytes(data).startswith(PLAN_MAGIC):
                return None
            return Engine(json.loads(bytes(data)[len(PLAN_MAGIC):]))

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


class FakeCudart(types.ModuleType):
    """cuda-python's ``cuda.bindings.runtime`` over host memory: every copy is checked to stay inside
    a live allocation, so a buffer overrun in the backend fails the test."""

    def __init__(self, devices: int = 1) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices, self.live, self.copies = devices, {}, []
        self.cudaError_t = types.SimpleNamespace(cudaSuccess=0)
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")

    def cudaGetDeviceCount(self):
        return (0, self.devices) if self.devices else (100, 0)

    def cudaGetDevice(self):
        return 0, 0

    def cudaGetDeviceProperties(self, dev):
        return 0, types.SimpleNamespace(name=GPU_NAME.encode() + b"\x00" * 8, major=8, minor=7)

    def cudaMalloc(self, n):
        buf = np.zeros(max(int(n), 1), np.uint8)
        self.live[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def cudaFree(self, ptr):
        del self.live[ptr]
        return (0,)

    def cudaStreamCreate(self):
        return 0, 4242

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def _inside(self, ptr: int, n: int) -> bool:
        return any(base <= ptr and ptr + n <= base + len(buf) for base, buf in self.live.items())

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        device = dst if kind == "H2D" else src
        assert self._inside(device, n), f"{kind} copy of {n} bytes outside every device allocation"
        self.copies.append((kind, n))
        ctypes.memmove(dst, src, n)
        return (0,)


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """(calls, cudart): fake tensorrt 10.3 + cuda-python installed; the user cache in tmp_path."""
    calls: list = []
    cudart = FakeCudart()
    install(monkeypatch, fake_tensorrt(calls), cudart)
    monkeypatch.setenv("RSVLM_EDGE_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.delenv("RSVLM_EDGE_ENGINE_CACHE", raising=False)
    return calls, cudart


def install(monkeypatch, trt, cudart) -> None:
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart
    for name, mod in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, mod)


# ---- bundles --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_bare(tiny_open_clip(seed=3), tmp_path_factory.mktemp("trtckpt") / "m.pt")


@pytest.fixture(scope="module")
def fp32_src(ckpt, tmp_path_factory) -> Path:
    return export_clip(ckpt, tmp_path_factory.mktemp("trtfp32") / "fp32.rsvlm", max_batch=4).path


@pytest.fixture(scope="module")
def int8_src(ckpt, tmp_path_factory) -> Path:
    return export_clip(ckpt, tmp_path_factory.mktemp("trtint8") / "int8.rsvlm", precision="int8", max_batch=4,
                       n_synthetic_calib=16).path


@pytest.fixture
def fp32_bundle(fp32_src, tmp_path) -> Path:
    """A fresh copy per test (engines are written into it)."""
    import shutil

    return Path(shutil.copytree(fp32_src, tmp_path / "b" / "fp32.rsvlm"))


def _key(**kw) -> EngineKey:
    base = dict(part="image", precision="fp16", onnx_file="image.onnx", onnx_sha256="ab" * 32, profile=(1, 8, 64),
                gpu=GPU_NAME, compute_capability="8.7", tensorrt="10.3.0")
    return EngineKey(**{**base, **kw})


# ---- names, profiles, precisions ------------------------------------------------------------------

def test_engine_file_names_hold_every_key_field():
    name = _key().file_name
    assert name == f"image.fp16.b1-8-64.nvidia-jetson-agx-orin.sm87.trt10-3-0.{'ab' * 8}.plan"
    variants = [_key(part="text"), _key(precision="int8"), _key(onnx_sha256="cd" * 32), _key(profile=(1, 8, 32)),
                _key(gpu="NVIDIA H100 80GB HBM3"), _key(compute_capability="9.0"), _key(tensorrt="10.4.0")]
    names = {k.file_name for k in variants} | {name}
    assert len(names) == len(variants) + 1  # every field changes the name
    assert all("/" not in n and n.endswith(".plan") for n in names)
    assert _key(gpu="../../etc/passwd GPU").file_name.startswith("image.fp16.b1-8-64.etc-passwd-gpu.")


@pytest.mark.parametrize("max_batch,expect", [(1, (1, 1, 1)), (4, (1, 4, 4)), (8, (1, 8, 8)), (64, (1, 8, 64)),
                                              (65536, (1, 8, 65536))])
def test_profile_covers_the_manifest_batch_range(max_batch, expect):
    assert profile_range(max_batch) == expect
    spec = TensorSpec(name="pixels", dtype="uint8", shape=["batch", 224, 224, 3])
    assert profile_shapes(spec, expect) == tuple((b, 224, 224, 3) for b in expect)


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_profile_refuses_nonsense_batches(bad):
    with pytest.raises(InputError, match="max batch"):
        profile_range(bad)


def test_profile_needs_a_leading_batch_dimension():
    with pytest.raises(BackendError, match="only dynamic dimension is the leading batch"):
        profile_shapes(TensorSpec(name="x", dtype="float32", shape=[4, "batch"]), (1, 2, 4))


def _part(precision: str, s8s8: bool = False) -> GraphPart:
    io = dict(inputs=[TensorSpec(name="x", dtype="uint8", shape=["batch", 8, 8, 3])],
              outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 4])])
    variants = {"s8s8": dict(file="x.s8s8.onnx", precision="int8-qdq", activations="int8-symmetric",
                             weights="int8-symmetric-per-channel")} if s8s8 else {}
    return GraphPart.model_validate(dict(file="x.onnx", precision=precision, variants=variants, **io))


@pytest.mark.parametrize("precision,s8s8,requested,typed,expect", [
    ("fp32", False, None, False, "fp16"), ("fp32", False, "fp16", False, "fp16"), ("fp32", False, "fp32", False, "fp32"),
    ("fp32", False, "int8", False, "fp16"), ("fp16", False, None, False, "fp16"),
    ("int8-qdq", True, None, False, "int8"), ("int8-qdq", True, "fp16", False, "int8"),
    ("fp32", False, None, True, "fp32"), ("fp16", False, None, True, "fp16"), ("int8-qdq", True, None, True, "int8"),
])
def test_engine_precision_per_part(precision, s8s8, requested, typed, expect):
    assert engine_precision(_part(precision, s8s8), requested, typed) == expect


def test_engine_precision_refusals():
    with pytest.raises(BackendError, match="S8S8"):
        engine_precision(_part("int8-qdq"), None, False)
    with pytest.raises(BackendError, match="strongly typed"):
        engine_precision(_part("fp32"), "fp16", True)
    with pytest.raises(InputError, match="unknown engine precision"):
        engine_precision(_part("fp32"), "int4", False)
    assert "S8S8" in graph_trt.supports(_part("int8-qdq")) and graph_trt.supports(_part("int8-qdq", True)) is None


# ---- building: the TensorRT 10 API calls ----------------------------------------------------------

def test_build_uses_the_tensorrt_10_api_and_writes_plan_sidecar_and_timing_cache(fakes, fp32_bundle):
    calls, _ = fakes
    b = open_bundle(fp32_bundle)
    built = build_engines(b, workspace_mb=512)
    assert [(p, k.precision) for p, _, k in built] == [("image", "fp16"), ("text", "fp16")]
    assert ("create_network", 0) in calls
    assert calls.count(("set_memory_pool_limit", "WORKSPACE", 512 << 20)) == 2
    assert [c for c in calls if c[0] == "set_flag"] == [("set_flag", "FP16")] * 2  # no INT8 for float graphs
    assert ("set_shape", "pixels", (1, 64, 64, 3), (4, 64, 64, 3), (4, 64, 64, 3)) in calls
    assert ("set_shape", "input_ids", (1, 77), (4, 77), (4, 77)) in calls
    assert ("set_timing_cache", False) in calls and ("monitor_init",) in calls
    engines = fp32_bundle / "engines"
    plan = engines / built[0][2].file_name
    assert plan.is_file() and plan.read_bytes().startswith(PLAN_MAGIC)
    side = json.loads(sidecar_path(plan).read_text())
    assert side["gpu"] == GPU_NAME and side["compute_capability"] == "8.7" and side["tensorrt"] == "10.3.0"
    assert side["onnx_sha256"] == b.manifest.files["image.onnx"].sha256 and side["profile"] == [1, 4, 4]
    assert side["workspace_mb"] == 512 and len(side["signature"]) == 64
    timing = engines / built[0][2].timing_cache_name
    assert timing.read_bytes().endswith(b"|timed")
    open_bundle(fp32_bundle)  # engines beside the graphs leave the bundle valid


def test_timing_cache_written_by_one_build_is_read_by_the_next(fakes, fp32_bundle):
    calls, _ = fakes
    b = open_bundle(fp32_bundle)
    build_engines(b)
    written = (fp32_bundle / "engines" / part_graph_key(b, "image").timing_cache_name).read_bytes()
    calls.clear()
    build_engines(b, force=True)
    blobs = [c[1] for c in calls if c[0] == "create_timing_cache"]
    assert written == b"|timed|timed"  # one cache per GPU + TensorRT: the image build's, then the text build's
    assert blobs == [written, written + b"|timed"]


def part_graph_key(b, name: str) -> EngineKey:
    trt = sys.modules["tensorrt"]
    return graph_trt.engine_key(part_graph(b, name), "fp16", graph_trt.cuda_api().device(), trt)


def test_int8_engine_builds_from_the_s8s8_graph_with_int8_and_fp16(fakes, int8_src, tmp_path):
    import shutil

    calls, _ = fakes
    bundle = Path(shutil.copytree(int8_src, tmp_path / "int8.rsvlm"))
    built = build_engines(open_bundle(bundle), precision="int8")
    assert {p: k.precision for p, _, k in built} == {"image": "int8", "text": "fp16"}
    builds = [c for c in calls if c[0] == "build_serialized_network"]
    assert builds[0][1].endswith("image.s8s8.onnx") and builds[0][2] == ("FP16", "INT8")
    assert builds[1][1].endswith("text.onnx") and builds[1][2] == ("FP16",)
    assert built[0][2].onnx_file == "image.s8s8.onnx"


def test_int8_request_on_a_float_bundle_is_refused(fakes, fp32_bundle):
    with pytest.raises(BackendError, match="no int8 graph"):
        build_engines(open_bundle(fp32_bundle), precision="int8")


def test_strongly_typed_tensorrt_sets_no_precision_flags(monkeypatch, tmp_path, fp32_bundle):
    calls: list = []
    install(monkeypatch, fake_tensorrt(calls, version="11.0.0", typed=True), FakeCudart())
    monkeypatch.setenv("RSVLM_EDGE_CACHE", str(tmp_path / "uc"))
    built = build_engines(open_bundle(fp32_bundle))
    assert {k.precision for _, _, k in built} == {"fp32"} and not [c for c in calls if c[0] == "set_flag"]
    with pytest.raises(BackendError, match="strongly typed"):
        build_engines(open_bundle(fp32_bundle), precision="fp16")


def test_unparsable_graph_is_an_error_naming_the_file(fakes, fp32_bundle, tmp_path):
    b = open_bundle(fp32_bundle)
    pg = part_graph(b, "image")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(BackendError, match="cannot parse 'broken.onnx'"):
        graph_trt.build_engine(broken, pg.part, part_graph_key(b, "image"), tmp_path)


# ---- the cache: valid engines are reused, stale / tampered / foreign ones never loaded --------------

def _image_engine(b) -> tuple[Path, EngineKey]:
    plan, _, key = ensure_engine(part_graph(b, "image"))
    return plan, key


def _builds(calls) -> int:
    return sum(1 for c in calls if c[0] == "build_serialized_network")


def test_valid_engine_is_reused(fakes, fp32_bundle):
    calls, _ = fakes
    b = open_bundle(fp32_bundle)
    plan, key = _image_engine(b)
    again, data, _ = ensure_engine(part_graph(b, "image"))
    assert again == plan and data == plan.read_bytes() and _builds(calls) == 1


@pytest.mark.campaign("security")
@pytest.mark.parametrize("case,tamper,why", [
    ("stale gpu", lambda plan: _edit_sidecar(plan, gpu="NVIDIA GeForce RTX 4090"), "stale"),
    ("stale tensorrt", lambda plan: _edit_sidecar(plan, tensorrt="10.0.1"), "stale"),
    ("stale graph", lambda plan: _edit_sidecar(plan, onnx_sha256="0" * 64), "stale"),
    ("stale profile", lambda plan: _edit_sidecar(plan, profile=[1, 8, 64]), "stale"),
    ("engine bytes changed", lambda plan: plan.write_bytes(plan.read_bytes()[:-1] + b"X"), "changed since it was built"),
    ("engine truncated", lambda plan: plan.write_bytes(plan.read_bytes()[:10]), "changed since it was built"),
    ("no sidecar", lambda plan: sidecar_path(plan).unlink(), "foreign"),
    ("sidecar not JSON", lambda plan: sidecar_path(plan).write_text("{nope"), "cannot be read"),
    ("sidecar of another format", lambda plan: _edit_sidecar(plan, format="something-else"), "not an rsvlm-edge"),
])
def test_stale_or_tampered_engine_is_rebuilt_and_never_loaded(fakes, fp32_bundle, case, tamper, why):
    calls, _ = fakes
    b = open_bundle(fp32_bundle)
    plan, key = _image_engine(b)
    tamper(plan)
    bad = plan.read_bytes()
    data, reason = load_engine_bytes(plan, key)
    assert data is None and why in reason
    calls.clear()
    new_plan, new_data, _ = ensure_engine(part_graph(b, "image"))
    assert _builds(calls) == 1 and new_plan == plan and load_engine_bytes(plan, key)[0] == new_data
    assert ("deserialize_cuda_engine", bad) not in calls


def _edit_sidecar(plan: Path, **fields) -> None:
    side = sidecar_path(plan)
    record = json.loads(side.read_text())
    record.update(fields)
    side.write_text(json.dumps(record))


@pytest.mark.campaign("security")
def test_engine_shipped_inside_a_bundle_is_foreign_even_with_a_consistent_sidecar(fakes, fp32_bundle, tmp_path):
    """A downloaded bundle may carry ``engines/`` with a plan and a sidecar whose fields and sha256 all
    match: without this user's signing key it is never deserialised."""
    import hashlib
    import hmac

    calls, _ = fakes
    b = open_bundle(fp32_bundle)
    key = part_graph_key(b, "image")
    evil = PLAN_MAGIC + b'{"evil": true}'
    plan = fp32_bundle / "engines" / key.file_name
    plan.parent.mkdir()
    plan.write_bytes(evil)
    record = {"format": "rsvlm-trt-engine", "version": 1, **key.fields(), "engine_size": len(evil),
              "engine_sha256": hashlib.sha256(evil).hexdigest(), "workspace_mb": 1, "built": "x"}
    body = json.dumps(record, sort_keys=True).encode()
    record["signature"] = hmac.new(b"k" * 32, body, hashlib.sha256).hexdigest()  # the attacker's key
    sidecar_path(plan).write_text(json.dumps(record))
    data, why = load_engine_bytes(plan, key)
    assert data is None and "not built on this machine" in why
    rt = rsvlm_edge.load(fp32_bundle, backend="trt")
    assert rt.backend == "trt" and ("deserialize_cuda_engine", evil) not in calls
    assert plan.read_bytes() != evil  # rebuilt in place


@pytest.mark.campaign("faults")
def test_read_only_bundle_builds_into_the_user_cache(fakes, fp32_bundle, tmp_path):
    (fp32_bundle / "engines").write_text("a file where the engines directory would go")
    plan, _ = _image_engine(open_bundle(fp32_bundle))
    assert plan.parent == tmp_path / "user-cache" / "engines"


@pytest.mark.campaign("faults")
def test_nowhere_to_write_an_engine_is_an_error_with_a_fix(fakes, fp32_bundle, monkeypatch):
    (fp32_bundle / "engines").write_text("not a directory")
    monkeypatch.setenv("RSVLM_EDGE_CACHE", "/dev/null/cache")
    with pytest.raises(BackendError, match="not writable") as e:
        build_dir(fp32_bundle)
    assert "--cache-dir" in e.value.fix
    with pytest.raises(BackendError, match="'/dev/null/x' is not writable"):
        build_dir(fp32_bundle, "/dev/null/x")


def test_explicit_cache_dir_is_written_and_searched_first(fakes, fp32_bundle, tmp_path, monkeypatch):
    calls, _ = fakes
    b = open_bundle(fp32_bundle)
    build_engines(b, cache_dir=tmp_path / "mine")
    assert sorted(p.suffix for p in (tmp_path / "mine").iterdir()) == [".cache", ".json", ".json", ".plan", ".plan"]
    monkeypatch.setenv("RSVLM_EDGE_ENGINE_CACHE", str(tmp_path / "mine"))
    calls.clear()
    rt = rsvlm_edge.load(fp32_bundle, backend="trt")
    assert rt.backend == "trt" and _builds(calls) == 0 and rt._image.plan.parent == tmp_path / "mine"


# ---- running ---------------------------------------------------------------------------------------

def test_trt_runtime_matches_onnxruntime_and_splits_large_batches(fakes, fp32_bundle):
    calls, cudart = fakes
    rt = rsvlm_edge.load(fp32_bundle, backend="trt")
    ref = rsvlm_edge.load(fp32_bundle, backend="ort-cpu")
    assert rt.backend == "trt" and rt._image.provider == "TensorRT 10.3.0 fp16"
    px = synthetic_rs_images(11, 64, seed=4)  # max_batch 4: three engine runs per call
    calls.clear()
    np.testing.assert_allclose(rt.encode_images(px), ref.encode_images(px), atol=1e-5)
    assert sum(1 for c in calls if c[0] == "execute_async_v3") == 3
    assert {c[1] for c in calls if c[0] == "execute_async_v3"} == {4242}
    texts = ["a satellite photo of a river.", "forest", "an airport with planes", "beach", "harbor"]
    np.testing.assert_allclose(rt.encode_texts(texts), ref.encode_texts(texts), atol=1e-5)
    graph = rt._image
    assert graph.run({graph.input_names[0]: px[:0]})[0].shape == (0, 64)
    graph.close()
    assert len(cudart.live) == 2  # only the text graph's two buffers are left
    with pytest.raises(BackendError, match="closed"):
        graph.run({graph.input_names[0]: px[:1]})


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("case", ["float pixels", "wrong size", "missing input", "extra input", "not an array",
                                  "rank 3"])
def test_trt_graph_refuses_feeds_it_cannot_copy(fakes, fp32_bundle, case):
    graph = rsvlm_edge.load(fp32_bundle, backend="trt")._image
    name = graph.input_names[0]
    px = synthetic_rs_images(2, 64, seed=1)
    feeds = {"float pixels": {name: px.astype(np.float32)}, "wrong size": {name: px[:, :32]},
             "missing input": {}, "extra input": {name: px, "other": px}, "not an array": {name: px.tolist()},
             "rank 3": {name: px[0]}}[case]
    with pytest.raises(InputError):
        graph.run(feeds)


def test_engine_whose_io_contradicts_the_manifest_is_refused(fakes, fp32_bundle):
    b = open_bundle(fp32_bundle)
    plan, key = _image_engine(b)
    # an engine built (and signed, by this user) from the text graph under the image graph's name
    text_engine, _, _ = ensure_engine(part_graph(b, "text"))
    plan.write_bytes(text_engine.read_bytes())
    _resign(plan)
    with pytest.raises(BackendError, match="has tensors"):
        rsvlm_edge.load(fp32_bundle, backend="trt")


def _resign(plan: Path) -> None:
    import hashlib

    data = plan.read_bytes()
    record = json.loads(sidecar_path(plan).read_text())
    record.update(engine_size=len(data), engine_sha256=hashlib.sha256(data).hexdigest())
    record["signature"] = graph_trt._signature(graph_trt.signing_key(create=False), record)
    sidecar_path(plan).write_text(json.dumps(record))


# ---- selection and probes --------------------------------------------------------------------------

def test_auto_prefers_trt_when_tensorrt_and_a_gpu_are_present(fakes, fp32_bundle, int8_src):
    part = open_bundle(fp32_bundle).manifest.parts["image"]
    assert registry.choose("graph", "auto", part, "image").name == "trt"
    assert [s.name for s in registry.all_backends("graph")][:6] == ["trt", "ort-tensorrt", "ort-cuda", "cuda-vit",
                                                                     "native-vit", "ort-cpu"]
    int8 = open_bundle(int8_src).manifest.parts["image"]
    assert registry.choose("graph", "auto", int8, "image").name == "trt"  # it has the S8S8 variant
    u8s8_only = int8.model_copy(update={"variants": {}})
    assert registry.choose("graph", "auto", u8s8_only, "image").name == "native-vit"  # W8A8 on our kernels
    plain = u8s8_only.model_copy(update={"native": None})
    assert registry.choose("graph", "auto", plain, "image").name == "ort-cpu"
    with pytest.raises(BackendError, match="S8S8") as e:
        registry.choose("graph", "trt", u8s8_only, "image")
    assert "cannot run part 'image'" in e.value.message


@pytest.mark.parametrize("case,why,fix", [
    ("no tensorrt", "TensorRT is not installed", "rsvlm-edge[trt]"),
    ("tensorrt 8", "too old", "rsvlm-edge[trt]"),
    ("no cuda-python or cupy", "neither is installed", "cuda-python"),
    ("no device", "no CUDA device", "nvidia-smi"),
])
def test_probe_names_what_is_missing(monkeypatch, tmp_path, case, why, fix):
    calls: list = []
    cudart = FakeCudart(devices=0 if case == "no device" else 1)
    install(monkeypatch, fake_tensorrt(calls, version="8.6.1" if case == "tensorrt 8" else "10.3.0"), cudart)
    if case == "no tensorrt":
        monkeypatch.setitem(sys.modules, "tensorrt", None)
    if case == "no cuda-python or cupy":
        for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "cupy"):
            monkeypatch.setitem(sys.modules, name, None)
    p = graph_trt.probe()
    assert not p.available and why in p.why_not and fix in p.fix
    with pytest.raises(BackendError, match=why) as e:
        registry.choose("graph", "trt")
    assert fix in e.value.fix


def test_probe_reports_the_gpu(fakes):
    p = graph_trt.probe()
    assert p.available and p.device == f"cuda ({GPU_NAME}, sm 8.7)" and "TensorRT 10.3.0" in p.versions


# ---- the CLI ---------------------------------------------------------------------------------------

def test_build_engine_command_builds_every_graph_part(fakes, fp32_bundle):
    from typer.testing import CliRunner

    from rsvlm_edge.cli import app

    r = CliRunner().invoke(app, ["build-engine", str(fp32_bundle), "--workspace-mb", "256"])
    assert r.exit_code == 0, r.output
    assert len(list((fp32_bundle / "engines").glob("*.plan"))) == 2
    assert ("set_memory_pool_limit", "WORKSPACE", 256 << 20) in fakes[0]


@pytest.mark.campaign("cli")
def test_build_engine_without_tensorrt_is_an_error_with_a_fix(fp32_src):
    r = run_cli("build-engine", str(fp32_src))
    if r.returncode == 0:
        pytest.skip("TensorRT and a GPU are installed here")
    assert r.returncode == 2 and "error:" in r.stderr and "fix:" in r.stderr and "Traceback" not in r.stderr
    assert "TensorRT" in r.stderr or "CUDA" in r.stderr


@pytest.mark.campaign("cli")
def test_export_engine_without_tensorrt_fails_before_exporting(ckpt, tmp_path):
    out = tmp_path / "e.rsvlm"
    r = run_cli("export", "clip", str(ckpt), "-o", str(out), "--engine")
    if r.returncode == 0:
        pytest.skip("TensorRT and a GPU are installed here")
    assert r.returncode == 2 and "error:" in r.stderr and "fix:" in r.stderr and not out.exists()


@pytest.mark.campaign("cli")
@pytest.mark.parametrize("args,needle", [(["--precision", "int4"], "unknown --precision"),
                                         (["--workspace-mb", "0"], "--workspace-mb")])
def test_build_engine_rejects_bad_options(fp32_src, args, needle):
    r = run_cli("build-engine", str(fp32_src), *args)
    assert r.returncode == 2 and needle in r.stderr
