"""onnxruntime graph backends: ``ort-tensorrt`` (TensorrtExecutionProvider, falling back to CUDA
then CPU), ``ort-cuda`` (CUDAExecutionProvider, falling back to CPU) and ``ort-cpu``.

``ort-tensorrt`` builds its TensorRT engines through onnxruntime, cached (engines and timing cache)
in the user cache (``engines/ort-trt/<onnxruntime version>-<precision>-<graph sha256>``, never in the
bundle: onnxruntime loads cached engines without checking them, so a bundle must not be able to
ship one), with an optimisation profile over the bundle's batch range (1 .. max_batch) and fp16 on;
an int8 part runs its S8S8 QDQ variant with ``trt_int8_enable`` (its scales come from the graph).
Which provider actually runs is ``OrtGraph.provider`` (from ``session.get_providers()``); when the
first one asked for could not be loaded (e.g. libnvinfer missing), a warning says what runs instead.

Before onnxruntime opens a graph, every external-data reference in it (``TensorProto.external_data``
``location`` of initializers, Constant/attribute tensors, sparse tensors, subgraphs and functions)
is read with a small protobuf walk (no ``onnx`` package, no torch) and must name a file that is
relative, has no '..', stays inside the bundle after following symlinks, and is listed in the
manifest's ``files`` (so ``open_bundle`` has checked its size and sha256). Anything else is refused
with a ``BundleError`` naming the location, and onnxruntime never sees the graph, so nothing outside
the bundle is read.

A session is then checked against its manifest part: the graph's input and output names, element
types and ranks, and every fixed dimension must be what the manifest says, so a graph that
contradicts its manifest is refused before anything runs.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, NamedTuple, Union

import numpy as np

from ..errors import BackendError, BundleError, InputError
from .registry import BackendSpec, Probe, register

TRT_EP, CUDA_EP, CPU_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"

_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(float)": "float32", "tensor(float16)": "float16"}


def _providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _version() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}"


# ---- external-data references of an ONNX file --------------------------------------------------

class ExternalRef(NamedTuple):
    """One ``external_data`` reference of a tensor: the tensor's name and its key/value entries."""

    tensor: str
    location: str | None
    offset: str | None
    length: str | None


class OnnxParseError(ValueError):
    """The file is not a well-formed ONNX protobuf (truncated, or not ONNX at all)."""


# Message kinds and, per kind, the length-delimited fields that hold messages that can (transitively)
# hold a TensorProto. Field numbers from onnx/onnx.proto (stable since IR version 3).
_MODEL, _GRAPH, _NODE, _ATTR, _TENSOR, _SPARSE, _FUNC, _TRAIN, _ENTRY = range(9)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAIN, 25: _FUNC},          # graph, training_info, functions
    _TRAIN: {1: _GRAPH, 2: _GRAPH},                       # initialization, algorithm
    _FUNC: {7: _NODE},                                    # node
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},          # node, initializer, sparse_initializer
    _NODE: {5: _ATTR},                                    # attribute
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},  # t, g, tensors, graphs, sparse
    _SPARSE: {1: _TENSOR, 2: _TENSOR},                    # values, indices
    _TENSOR: {13: _ENTRY},                                # external_data (StringStringEntryProto)
}
_TENSOR_NAME, _ENTRY_KEY, _ENTRY_VALUE = 8, 1, 2
_MAX_DEPTH = 100  # protobuf's own default recursion limit
ORT_MEMORY_TAG = "_ORT_MEM_ADDR_"  # onnxruntime reads location "*/_ORT_MEM_ADDR_/*" from a raw memory address


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxParseError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def _scan(buf: Any, pos: int, end: int, kind: int, depth: int, out: list[ExternalRef]) -> tuple[bytes, bytes] | None:
    """Walk one message of ``kind`` in ``buf[pos:end]``, appending the external-data references of
    every tensor it (transitively) holds to ``out``. An ``_ENTRY`` returns its (key, value)."""
    if depth > _MAX_DEPTH:
        raise OnnxParseError(f"messages nested deeper than {_MAX_DEPTH}")
    children = _CHILDREN.get(kind, {})
    name = b""
    entries: list[tuple[bytes, bytes]] = []
    key_value = [b"", b""]
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise OnnxParseError("field number 0")
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if size > end - pos:
                raise OnnxParseError("a length-delimited field runs past its message")
            child = children.get(field)
            if child == _ENTRY:
                entries.append(_scan(buf, pos, pos + size, _ENTRY, depth + 1, out))  # type: ignore[arg-type]
            elif child is not None:
                _scan(buf, pos, pos + size, child, depth + 1, out)
            elif kind == _TENSOR and field == _TENSOR_NAME:
                name = bytes(buf[pos:pos + size])
            elif kind == _ENTRY and field in (_ENTRY_KEY, _ENTRY_VALUE):
                key_value[field - 1] = bytes(buf[pos:pos + size])
            pos += size
        else:  # groups (3, 4) are not used by onnx.proto; 6, 7 do not exist
            raise OnnxParseError(f"wire type {wire}")
        if pos > end:
            raise OnnxParseError("a fixed-size field runs past its message")
    if kind == _ENTRY:
        return key_value[0], key_value[1]
    if kind == _TENSOR and entries:
        found: dict[str, list[str]] = {}
        for k, v in entries:
            found.setdefault(_text(k), []).append(_text(v))
        locations = found.get("location") or [None]  # type: ignore[list-item]
        for loc in locations:  # every value is checked, whichever one a reader would take
            out.append(ExternalRef(_text(name), loc, (found.get("offset") or [None])[-1],
                                   (found.get("length") or [None])[-1]))
    return None


def external_data_refs(data: Any) -> list[ExternalRef]:
    """Every external-data reference in a serialized ``ModelProto`` (bytes or an mmap)."""
    out: list[ExternalRef] = []
    _scan(data, 0, len(data), _MODEL, 0, out)
    return out


def external_data_refs_of_file(path: Path) -> list[ExternalRef]:
    """``external_data_refs`` of an ONNX file, memory-mapped (tensor payloads are skipped, not read)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return external_data_refs(data)


def _bundle_root(part: Any, path: Path) -> tuple[Path, PurePosixPath]:
    """(bundle directory, directory of the graph inside the bundle) for a graph at ``path``."""
    rel = PurePosixPath(str(getattr(part, "file", "") or path.name))
    if len(rel.parts) > 1 and path.as_posix().endswith("/" + rel.as_posix()):
        return path.parents[len(rel.parts) - 1], rel.parent
    return path.parent, PurePosixPath(".")


def check_external_data(part: Any, path: Path, files: Mapping[str, Any] | None = None) -> list[str]:
    """Bundle-relative names of the external-data files the graph at ``path`` reads, after checking
    that each is a relative path without '..', listed in ``files`` (default: the bundle manifest's
    ``files``), and inside the bundle after following symlinks; else ``BundleError``. Nothing
    outside the bundle is opened, and nothing about a file outside it is reported."""
    from ..bundle.schema import check_relpath

    root, graph_dir = _bundle_root(part, path)
    fix = "re-export the bundle with `rsvlm-edge export`; a graph may only read files listed in the manifest"
    try:
        refs = external_data_refs_of_file(path)
    except OnnxParseError as e:
        raise BundleError(f"'{path.name}' of bundle '{root}' is not a valid ONNX file ({e})", "re-export the bundle") from None
    except OSError as e:
        raise BundleError(f"cannot read '{path.name}' of bundle '{root}' ({e.strerror})",
                          "check the bundle's file permissions") from None
    if not refs:
        return []
    if files is None:
        from ..bundle import read_manifest

        files = read_manifest(root).files
    real_root = root.resolve()
    names: list[str] = []
    for ref in refs:
        what = f"'{path.name}' of bundle '{root}': tensor '{ref.tensor[:200]}' reads external data from"
        loc = ref.location
        if loc is None:
            raise BundleError(f"{what} a file it does not name (external_data without 'location')", fix)
        shown = loc[:200]
        if ORT_MEMORY_TAG in loc:
            raise BundleError(f"{what} '{shown}', onnxruntime's raw memory-address marker", fix)
        try:
            check_relpath(loc)
        except ValueError:
            raise BundleError(f"{what} '{shown}', which is not a relative path inside the bundle "
                              "(absolute, '..', or empty components)", fix) from None
        name = (graph_dir / loc).as_posix()
        if name not in files:
            raise BundleError(f"{what} '{shown}', which the manifest does not list (so it is not size- and "
                              "sha256-checked)", fix)
        try:
            real = (root / name).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            real = root / name
        if real.is_symlink() or real_root not in real.parents:
            raise BundleError(f"{what} '{shown}', a link that leaves the bundle",
                              "copy the bundle with real files (cp -rL), or re-export it")
        if not real.is_file():
            raise BundleError(f"{what} '{shown}', which is missing", "copy the whole bundle directory again")
        size = real.stat().st_size
        try:
            offset = int(ref.offset or 0)
            length = int(ref.length) if ref.length is not None else size - offset
        except ValueError:
            raise BundleError(f"{what} '{shown}' at offset {ref.offset!r:.40} length {ref.length!r:.40}, "
                              "which are not integers", fix) from None
        if offset < 0 or length < 0 or offset + length > size:
            raise BundleError(f"{what} '{shown}' at bytes {offset}..{offset + length}, past its end ({size} bytes)", fix)
        if name not in names:
            names.append(name)
    return names


Provider = Union[str, tuple[str, dict[str, Any]]]


class OrtGraph:
    """An onnxruntime InferenceSession for one graph part.

    ``threads``: intra-op threads (default: onnxruntime's). fp16 graphs get ORT_ENABLE_EXTENDED
    because onnxruntime 1.32's CPU layout optimisations (ORT_ENABLE_ALL) crash on them.
    ``InferenceSession.run`` is thread-safe, so one ``OrtGraph`` may serve several threads.
    """

    def __init__(self, part: Any, path: str | os.PathLike[str], providers: list[Provider], backend: str,
                 threads: int | None = None, files: Mapping[str, Any] | None = None, graph: Any = None) -> None:
        """``files``: the bundle manifest's ``files`` (read from the bundle's manifest.json when
        None and the graph has external data). ``graph``: the manifest entry whose file ``path`` is
        (one of the part's ``variants``; default the part itself)."""
        import onnxruntime as ort

        self.part = part
        self.path = Path(path)
        self.backend = backend
        self.variant = next((k for k, v in getattr(part, "variants", {}).items() if v is graph), None)
        self.external_files = check_external_data(graph if graph is not None else part, self.path, files)
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
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if self.providers[0] != wanted:
            from ..progress import warn

            warn(f"{backend}: onnxruntime could not use {wanted} for '{self.path.name}' (see its messages above); "
                 f"running on {self.providers[0]}")

    @property
    def provider(self) -> str:
        """The execution provider that runs the graph (the first of ``session.get_providers()``)."""
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


def _probe_provider(provider: str, device: str, hint: str = "", fix: str = "") -> Probe:
    """Whether onnxruntime is installed and has execution provider ``provider``."""
    try:
        have = _providers()
    except ImportError as e:
        return Probe(False, f"onnxruntime is not installed ({e})", fix="pip install onnxruntime")
    if provider not in have:
        return Probe(False, f"this onnxruntime has no {provider}{hint}", _version(), fix=fix)
    return Probe(True, versions=_version(), device=device)


def _probe_cpu() -> Probe:
    return _probe_provider(CPU_EP, "cpu")


def _probe_cuda() -> Probe:
    return _probe_provider(CUDA_EP, "cuda (CUDAExecutionProvider)", " (pip install onnxruntime-gpu)",
                           "pip install 'rsvlm-edge[gpu]' (onnxruntime-gpu replaces onnxruntime)")


def _probe_tensorrt() -> Probe:
    return _probe_provider(TRT_EP, "cuda (TensorrtExecutionProvider)",
                           " (pip install onnxruntime-gpu, and TensorRT 10: pip install tensorrt, or JetPack)",
                           "pip install 'rsvlm-edge[gpu]' tensorrt (onnxruntime-gpu replaces onnxruntime)")


def _supports_tensorrt(part: Any) -> str | None:
    """Why onnxruntime's TensorRT provider cannot run ``part`` (the same rule as the ``trt`` backend)."""
    from .graph_trt import supports

    return supports(part)


def fallback_providers(first: Provider, available: list[str]) -> list[Provider]:
    """``first`` followed by the CUDA then CPU providers, keeping only the providers onnxruntime has."""
    chain: list[Provider] = [first, CUDA_EP, CPU_EP]
    out: list[Provider] = []
    for p in chain:
        name = p if isinstance(p, str) else p[0]
        if name in available and all(name != (q if isinstance(q, str) else q[0]) for q in out):
            out.append(p)
    return out


def tensorrt_options(part: Any, max_batch: int, cache: Path, workspace_mb: int) -> dict[str, Any]:
    """TensorrtExecutionProvider options for ``part``: engine and timing caches in ``cache``, fp16 on,
    int8 on for an int8 (QDQ) part, one profile over batches 1 .. ``max_batch`` for every input."""
    from .graph_trt import profile_range, profile_shapes

    profile = profile_range(max_batch)
    shapes = [profile_shapes(spec, profile) for spec in part.inputs]

    def spec_string(i: int) -> str:
        return ",".join(f"{spec.name}:{'x'.join(map(str, s[i]))}" for spec, s in zip(part.inputs, shapes))

    return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": True, "trt_int8_enable": part.precision == "int8-qdq",
            "trt_max_workspace_size": workspace_mb << 20,
            "trt_profile_min_shapes": spec_string(0), "trt_profile_opt_shapes": spec_string(1),
            "trt_profile_max_shapes": spec_string(2)}


def open_ort_tensorrt(part: Any, path: str | os.PathLike[str], threads: int | None = None,
                      workspace_mb: int | None = None) -> OrtGraph:
    """An ``OrtGraph`` on TensorrtExecutionProvider (then CUDA, then CPU) for ``part``: its S8S8
    variant for an int8 part, the part's own graph otherwise."""
    import onnxruntime as ort

    from ..bundle.store import Bundle, read_manifest
    from .graph_trt import DEFAULT_WORKSPACE_MB, graph_entry, user_cache_root

    root, _ = _bundle_root(part, Path(path))
    manifest = read_manifest(root)
    entry = graph_entry(part)
    graph = Bundle(root, manifest).file(entry.file)
    sha = manifest.files[entry.file].sha256
    precision = "int8" if part.precision == "int8-qdq" else "fp16"
    cache = user_cache_root() / "engines" / "ort-trt" / f"{ort.__version__}-{precision}-{sha[:16]}"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackendError(f"cannot create onnxruntime's TensorRT engine cache '{cache}' ({e.strerror})",
                           "set RSVLM_EDGE_CACHE to a writable directory") from None
    opts = tensorrt_options(part, manifest.max_batch, cache, workspace_mb or DEFAULT_WORKSPACE_MB)
    return OrtGraph(part, graph, fallback_providers((TRT_EP, opts), _providers()), "ort-tensorrt", threads,
                    manifest.files, graph=entry)


register(BackendSpec(
    name="ort-tensorrt", kind="graph", rank=10, device="cuda",
    summary="onnxruntime, TensorRT execution provider (engine cache, fp16, int8 from the S8S8 graph; "
            "CUDA then CPU fallback)",
    probe=_probe_tensorrt, factory=open_ort_tensorrt, supports=_supports_tensorrt,
))
register(BackendSpec(
    name="ort-cuda", kind="graph", rank=20, device="cuda",
    summary="onnxruntime, CUDA execution provider (CPU fallback for unsupported nodes)",
    probe=_probe_cuda,
    factory=lambda part, path, threads=None: OrtGraph(part, path, fallback_providers(CUDA_EP, _providers()),
                                                      "ort-cuda", threads),
))
register(BackendSpec(
    name="ort-cpu", kind="graph", rank=90, device="cpu",
    summary="onnxruntime, CPU execution provider",
    probe=_probe_cpu,
    factory=lambda part, path, threads=None: OrtGraph(part, path, [CPU_EP], "ort-cpu", threads),
))


def require_ort() -> None:
    """BackendError when onnxruntime is missing (used by export-side validation)."""
    probe = _probe_cpu()
    if not probe.available:
        raise BackendError(probe.why_not, "pip install onnxruntime")
