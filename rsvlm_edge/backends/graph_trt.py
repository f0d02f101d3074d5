"""TensorRT graph backend ``trt``: engines built from a bundle's ONNX graphs, cached per GPU and
TensorRT version, run with ``execute_async_v3`` on device buffers of our own.

Needs ``tensorrt`` 10 or newer (the ``[trt]`` extra; JetPack ships it) and, for device memory and
streams, ``cuda-python`` (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6) or else
``cupy``; all imported lazily, never torch.

Building (``build_engine``): ``trt.Builder`` -> ``create_network(0)`` (explicit batch is the only
mode since 10.0) -> ``OnnxParser.parse_from_file`` -> a builder config with a workspace limit
(``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)``), ``BuilderFlag.FP16`` for fp16 engines
and ``FP16`` + ``INT8`` for int8 engines (TensorRT 10; TensorRT 11 networks are always strongly
typed and take their precision from the graph, so these flags are not set there), one optimisation
profile per input (batch min 1, opt ``OPT_BATCH`` or less, max the manifest's ``max_batch``), the
timing cache read from and written back beside the engines, a progress line per build phase, and
``build_serialized_network``. INT8 is explicit quantisation only: an int8 part is built from its
S8S8 QDQ variant (symmetric int8 activations, the only INT8 TensorRT runs); no implicit calibrator.

Caching: engines live in ``BUNDLE/engines/`` when the bundle is writable, else in the user cache
(``$RSVLM_EDGE_CACHE``, else ``$XDG_CACHE_HOME/rsvlm-edge``, else ``~/.cache/rsvlm-edge``, under
``engines/``); ``RSVLM_EDGE_ENGINE_CACHE`` or ``--cache-dir`` names another directory, searched first.
A file name holds the part, precision, batch profile, GPU name, compute capability, TensorRT version
and the first 16 hex digits of the graph's sha256; a JSON sidecar beside it holds those fields in
full, the engine's size and sha256, and an HMAC of all of them under a key only this user's cache
holds. Before an engine is deserialised its bytes are hashed and the sidecar checked field by
field: an engine built for another GPU, TensorRT, graph or profile (stale), or one this machine did
not build (a foreign file, e.g. shipped inside a downloaded bundle: its HMAC cannot match) is
rebuilt, or refused with ``error:``/``fix:`` where nothing can be written. A plan is never
deserialised blindly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import BackendError, InputError
from ..progress import info, progress, warn
from .registry import BackendSpec, Probe, register

TRT_FIX = "pip install 'rsvlm-edge[trt]' cuda-python (on Jetson, JetPack 6 ships TensorRT 10: pip install cuda-python)"
CUDA_FIX = "pip install cuda-python (or cupy) matching your CUDA version"
PRECISIONS = ("fp32", "fp16", "int8")
OPT_BATCH = 8  # the batch TensorRT tunes its kernels for (capped at the bundle's max_batch)
DEFAULT_WORKSPACE_MB = 2048  # fits 8 GB Jetson Orin Nano boards; raise it on large GPUs
ENGINE_CACHE_ENV = "RSVLM_EDGE_ENGINE_CACHE"
SIDECAR_FORMAT = "rsvlm-trt-engine"
SIDECAR_VERSION = 1
KEY_FILE = "engine-signing.key"
U8S8_WHY = ("its int8 graph has uint8 activations with zero points (U8S8, for onnxruntime's CPU kernels), "
            "which TensorRT cannot run, and the bundle has no S8S8 variant (a re-export with --precision int8 "
            "adds it)")
U8S8_FIX = "re-export with `rsvlm-edge export clip --precision int8` (it also writes the S8S8 graph TensorRT runs)"


# ---- lazy imports: tensorrt, and device memory from cuda-python or cupy --------------------------

def import_tensorrt() -> Any:
    """The ``tensorrt`` module (10 or newer), or BackendError naming what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(f"TensorRT is not installed ({e})", TRT_FIX) from None
    version = str(getattr(trt, "__version__", "0"))
    if _major(version) < 10:
        raise BackendError(f"TensorRT {version} is too old (rsvlm-edge builds engines with the TensorRT 10 API)",
                           TRT_FIX)
    return trt


def _major(version: str) -> int:
    m = re.match(r"(\d+)", version)
    return int(m.group(1)) if m else 0


def strongly_typed(trt: Any) -> bool:
    """TensorRT 11 removed the FP16/INT8 builder flags: every network takes its types from the graph."""
    return not hasattr(trt.BuilderFlag, "FP16")


@dataclass(frozen=True)
class Gpu:
    """The CUDA device engines are built for: its name and compute capability ("8.7")."""

    name: str
    compute_capability: str


class CudaPython:
    """Device memory, copies and streams through cuda-python's runtime bindings."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as rt  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart as rt  # older cuda-python
        self.rt = rt

    def _ok(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA {what} failed ({getattr(err, 'name', err)})",
                               "check the GPU and driver with nvidia-smi (or tegrastats on Jetson)")
        return rest[0] if len(rest) == 1 else None

    def device_count(self) -> int:
        err, count = self.rt.cudaGetDeviceCount()
        return int(count) if err == self.rt.cudaError_t.cudaSuccess else 0

    def device(self) -> Gpu:
        props = self._ok(self.rt.cudaGetDeviceProperties(self._ok(self.rt.cudaGetDevice(), "cudaGetDevice")),
                         "cudaGetDeviceProperties")
        name = props.name.decode("utf-8", "replace") if isinstance(props.name, bytes) else str(props.name)
        return Gpu(name.split("\x00", 1)[0].strip(), f"{props.major}.{props.minor}")

    def malloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(nbytes), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._ok(self.rt.cudaFree(ptr), "cudaFree")

    def stream(self) -> Any:
        return self._ok(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def destroy_stream(self, stream: Any) -> None:
        self._ok(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def handle(self, stream: Any) -> int:
        return int(stream)

    def h2d(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync")

    def d2h(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream), "cudaMemcpyAsync")

    def sync(self, stream: Any) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


class CuPy:
    """The same operations through ``cupy.cuda.runtime`` (used when cuda-python is not installed)."""

    name = "cupy"

    def __init__(self) -> None:
        import cupy

        self.rt = cupy.cuda.runtime

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # cupy's CUDARuntimeError
            raise BackendError(f"CUDA {what} failed ({e})",
                               "check the GPU and driver with nvidia-smi (or tegrastats on Jetson)") from None

    def device_count(self) -> int:
        try:
            return int(self.rt.getDeviceCount())
        except Exception:
            return 0

    def device(self) -> Gpu:
        props = self._call("cudaGetDeviceProperties", self.rt.getDeviceProperties, self._call(
            "cudaGetDevice", self.rt.getDevice))
        name = props["name"]
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        return Gpu(name.split("\x00", 1)[0].strip(), f"{props['major']}.{props['minor']}")

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", self.rt.malloc, nbytes))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", self.rt.free, ptr)

    def stream(self) -> Any:
        return self._call("cudaStreamCreate", self.rt.streamCreate)

    def destroy_stream(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", self.rt.streamDestroy, stream)

    def handle(self, stream: Any) -> int:
        return int(stream)

    def h2d(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._call("cudaMemcpyAsync", self.rt.memcpyAsync, dst, src.ctypes.data, src.nbytes,
                   self.rt.memcpyHostToDevice, stream)

    def d2h(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._call("cudaMemcpyAsync", self.rt.memcpyAsync, dst.ctypes.data, src, dst.nbytes,
                   self.rt.memcpyDeviceToHost, stream)

    def sync(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", self.rt.streamSynchronize, stream)


def cuda_api() -> CudaPython | CuPy:
    """cuda-python's runtime, else cupy's; BackendError when neither is installed."""
    errors = []
    for api in (CudaPython, CuPy):
        try:
            return api()
        except ImportError as e:
            errors.append(f"{api.name}: {e}")
    raise BackendError("TensorRT needs device memory from cuda-python or cupy; neither is installed ("
                       + "; ".join(errors) + ")", CUDA_FIX)


# ---- engine identity, file names, sidecars --------------------------------------------------------

def _slug(text: str, limit: int = 40) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))[:limit].strip("-") or "unknown"


def profile_range(max_batch: int, opt: int = OPT_BATCH) -> tuple[int, int, int]:
    """(min, opt, max) batch of an engine's optimisation profile: 1, a typical batch, ``max_batch``."""
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise InputError(f"max batch must be a positive integer (got {max_batch!r})", "re-export the bundle")
    return 1, max(1, min(opt, max_batch)), max_batch


def profile_shapes(spec: Any, profile: tuple[int, int, int]) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes of one graph input: its manifest shape with "batch" set per profile."""
    dims = list(spec.shape)
    if dims[0] != "batch" or any(not isinstance(d, int) for d in dims[1:]):
        raise BackendError(f"input '{spec.name}' has shape {dims}: the TensorRT backend needs graphs whose only "
                           "dynamic dimension is the leading batch", "use --backend ort-cuda for this bundle")
    return tuple((b, *dims[1:]) for b in profile)


@dataclass(frozen=True)
class EngineKey:
    """What an engine was built from and for. Every field is in the sidecar; the file name holds
    all but the full sha256 (its first 16 hex digits)."""

    part: str
    precision: str
    onnx_file: str
    onnx_sha256: str
    profile: tuple[int, int, int]
    gpu: str
    compute_capability: str
    tensorrt: str

    @property
    def file_name(self) -> str:
        lo, opt, hi = self.profile
        return (f"{_slug(self.part)}.{self.precision}.b{lo}-{opt}-{hi}.{_slug(self.gpu)}"
                f".sm{self.compute_capability.replace('.', '')}.trt{_slug(self.tensorrt)}.{self.onnx_sha256[:16]}.plan")

    @property
    def timing_cache_name(self) -> str:
        """Timing caches are shared by every engine of one GPU + TensorRT (they hold kernel timings)."""
        return f"timing.{_slug(self.gpu)}.sm{self.compute_capability.replace('.', '')}.trt{_slug(self.tensorrt)}.cache"

    def fields(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = list(self.profile)
        return d


def sidecar_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def user_cache_root() -> Path:
    """``$RSVLM_EDGE_CACHE``, else ``$XDG_CACHE_HOME/rsvlm-edge``, else ``~/.cache/rsvlm-edge``."""
    if os.environ.get("RSVLM_EDGE_CACHE"):
        return Path(os.environ["RSVLM_EDGE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rsvlm-edge"


def signing_key(create: bool) -> bytes | None:
    """This user's engine-signing key (32 random bytes, mode 0600, in the user cache); created on
    first use when ``create``. Engines signed with it were built here, by this user."""
    path = user_cache_root() / KEY_FILE
    try:
        data = path.read_bytes()
        if len(data) == 32:
            return data
    except OSError:
        pass
    if not create:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        data = path.read_bytes()
    except OSError as e:
        raise BackendError(f"cannot create the engine-signing key '{path}' ({e.strerror})",
                           "set RSVLM_EDGE_CACHE to a writable directory") from None
    if len(data) != 32:
        raise BackendError(f"engine-signing key '{path}' is damaged", f"delete '{path}' (engines are rebuilt)")
    return data


def _signature(key: bytes, record: Mapping[str, Any]) -> str:
    body = json.dumps({k: v for k, v in record.items() if k != "signature"}, sort_keys=True).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def make_sidecar(key: EngineKey, plan: bytes, workspace_mb: int, signing: bytes) -> dict[str, Any]:
    record = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **key.fields(),
              "engine_size": len(plan), "engine_sha256": hashlib.sha256(plan).hexdigest(),
              "workspace_mb": workspace_mb, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record["signature"] = _signature(signing, record)
    return record


def load_engine_bytes(plan: Path, key: EngineKey) -> tuple[bytes | None, str]:
    """(the engine's bytes, "") when ``plan`` is an engine this user built for exactly ``key`` and
    unchanged since; else (None, why not). The bytes returned are the ones checked."""
    if not plan.is_file():
        return None, "no engine built yet"
    side = sidecar_path(plan)
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"'{plan.name}' has no sidecar '{side.name}': not built by rsvlm-edge (a foreign file)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"its sidecar '{side.name}' cannot be read ({e.__class__.__name__})"
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT or record.get("version") != SIDECAR_VERSION:
        return None, f"its sidecar '{side.name}' is not an rsvlm-edge engine record"
    for name, want in key.fields().items():
        if record.get(name) != want:
            return None, f"it was built for {name} {str(record.get(name))[:80]!r}, this run needs {str(want)[:80]!r} (stale)"
    signing = signing_key(create=False)
    if signing is None or not isinstance(record.get("signature"), str) or not hmac.compare_digest(
            record["signature"], _signature(signing, record)):
        return None, "it was not built on this machine by this user (its sidecar's signature does not match: a foreign file)"
    try:
        data = plan.read_bytes()
    except OSError as e:
        return None, f"it cannot be read ({e.strerror})"
    if len(data) != record.get("engine_size") or hashlib.sha256(data).hexdigest() != record.get("engine_sha256"):
        return None, "the engine file changed since it was built (size or sha256 differs from its sidecar)"
    return data, ""


# ---- where engines live ---------------------------------------------------------------------------

def engine_dirs(bundle_root: Path, cache_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories searched for an engine, in order: ``cache_dir`` (or ``$RSVLM_EDGE_ENGINE_CACHE``),
    the bundle's ``engines/``, the user cache's ``engines/``."""
    explicit = cache_dir if cache_dir is not None else os.environ.get(ENGINE_CACHE_ENV) or None
    dirs = [Path(explicit)] if explicit else []
    return [*dirs, bundle_root / "engines", user_cache_root() / "engines"]


def _writable_dir(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return d.is_dir() and not d.is_symlink() and os.access(d, os.W_OK | os.X_OK)


def build_dir(bundle_root: Path, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where a new engine is written: an explicit cache directory (which must be writable), else
    the bundle's ``engines/`` if the bundle is writable, else the user cache."""
    explicit = cache_dir if cache_dir is not None else os.environ.get(ENGINE_CACHE_ENV) or None
    if explicit:
        if not _writable_dir(Path(explicit)):
            raise BackendError(f"engine cache directory '{explicit}' is not writable",
                               "pass a writable --cache-dir (or RSVLM_EDGE_ENGINE_CACHE)")
        return Path(explicit)
    inside = bundle_root / "engines"
    if os.access(bundle_root, os.W_OK | os.X_OK) and (not inside.is_symlink()) and _writable_dir(inside):
        return inside
    user = user_cache_root() / "engines"
    if not _writable_dir(user):
        raise BackendError(f"the bundle '{bundle_root}' is read-only and the user cache '{user}' is not writable",
                           "pass --cache-dir DIR (or set RSVLM_EDGE_ENGINE_CACHE) to a writable directory")
    return user


# ---- which graph and precision a part is built from -----------------------------------------------

def supports(part: Any) -> str | None:
    """Why TensorRT cannot run ``part`` (None: it can)."""
    if getattr(part, "kind", None) != "graph":
        return "TensorRT runs graph parts only"
    if part.precision == "int8-qdq" and "s8s8" not in part.variants:
        return U8S8_WHY
    return None


def graph_entry(part: Any) -> Any:
    """The manifest entry (the part or its S8S8 variant) whose ONNX file TensorRT builds from."""
    why = supports(part)
    if why:
        raise BackendError(f"TensorRT cannot run this part: {why}", U8S8_FIX)
    return part.variants["s8s8"] if part.precision == "int8-qdq" else part


def engine_precision(part: Any, requested: str | None, typed: bool) -> str:
    """The precision of ``part``'s engine. An int8 (QDQ) part is always ``int8`` (from its S8S8
    graph). A float part is ``requested`` (default fp16; ``int8`` asks for int8 where a graph has it
    and fp16 elsewhere); under strongly typed TensorRT (11) it is the graph's own precision."""
    if requested is not None and requested not in PRECISIONS:
        raise InputError(f"unknown engine precision '{requested}'", f"choose one of {', '.join(PRECISIONS)}")
    if part.precision == "int8-qdq":
        graph_entry(part)
        return "int8"
    if typed:
        if requested == "fp16" and part.precision == "fp32":
            raise BackendError("this TensorRT builds strongly typed networks, whose precision is the graph's own "
                               "(fp32 here): it cannot make an fp16 engine from it",
                               "export the bundle with --precision fp16, or build with --precision fp32")
        return part.precision
    return "fp32" if requested == "fp32" else "fp16"


# ---- building -------------------------------------------------------------------------------------

def _progress_monitor(trt: Any, label: str) -> Any:
    """An ``IProgressMonitor`` drawing one progress line per top-level build phase (None where
    the TensorRT Python API lacks it)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.bar = progress()
            self.tasks: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                if not self.tasks:
                    self.bar.start()
                self.tasks[phase_name] = self.bar.add_task(f"{label}: {phase_name}", total=max(num_steps, 1))

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name in self.tasks:
                self.bar.update(self.tasks[phase_name], completed=step + 1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            task = self.tasks.pop(phase_name, None)
            if task is not None:
                self.bar.update(task, completed=self.bar.tasks[task].total)
                if not self.tasks:
                    self.bar.stop()

    return Monitor()


def _write_atomic(path: Path, data: bytes, what: str) -> None:
    from ..atomic import atomic_path

    with atomic_path(path, what=what) as tmp, open(tmp, "wb") as f:
        f.write(data)


def build_engine(graph: Path, part: Any, key: EngineKey, dest: Path, workspace_mb: int = DEFAULT_WORKSPACE_MB) -> Path:
    """Build the engine for ``key`` from ONNX ``graph`` into ``dest`` (plan + signed sidecar) and
    update the timing cache there; returns the plan's path."""
    trt = import_tensorrt()
    if not isinstance(workspace_mb, int) or isinstance(workspace_mb, bool) or workspace_mb < 1:
        raise InputError(f"--workspace-mb must be a positive integer (got {workspace_mb!r})", "e.g. --workspace-mb 2048")
    signing = signing_key(create=True)
    assert signing is not None
    label = f"TensorRT {key.precision} engine '{key.part}'"
    info(f"building the {label} for {key.gpu} (sm {key.compute_capability}, TensorRT {key.tensorrt}), batch "
         f"{key.profile[0]}..{key.profile[2]}, workspace {workspace_mb} MiB; this takes minutes, once")
    started = time.monotonic()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["no error reported"]
        raise BackendError(f"TensorRT {key.tensorrt} cannot parse '{graph.name}': {errors[0][:400]}",
                           "use --backend ort-cuda for this bundle, or report the graph's first failing node")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if not strongly_typed(trt):
        if key.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if key.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes: no calibrator
    profile = builder.create_optimization_profile()
    for spec in part.inputs:
        lo, opt, hi = profile_shapes(spec, key.profile)
        profile.set_shape(spec.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    timing_path = dest / key.timing_cache_name
    try:
        timing_blob = timing_path.read_bytes()
    except OSError:
        timing_blob = b""
    try:
        timing = config.create_timing_cache(timing_blob)
    except Exception:  # a damaged cache file: start from an empty one
        timing = None
    if timing is None:
        timing = config.create_timing_cache(b"")
    config.set_timing_cache(timing, False)
    monitor = _progress_monitor(trt, label)
    if monitor is not None:
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"TensorRT could not build the {label} (its messages are above)",
                           "give it more workspace (--workspace-mb), or use --backend ort-cuda")
    data = bytes(memoryview(plan))
    out = dest / key.file_name
    _write_atomic(out, data, "TensorRT engine")
    _write_atomic(sidecar_path(out), json.dumps(make_sidecar(key, data, workspace_mb, signing), indent=2).encode(),
                  "TensorRT engine sidecar")
    _write_atomic(timing_path, bytes(memoryview(config.get_timing_cache().serialize())), "TensorRT timing cache")
    info(f"built {out} ({len(data) / 2**20:.1f} MiB) in {time.monotonic() - started:.0f} s")
    return out


@dataclass(frozen=True)
class PartGraph:
    """A graph part of an opened bundle as the engine cache needs it."""

    root: Path
    name: str
    part: Any
    entry: Any  # the part or its S8S8 variant: what is built
    graph: Path
    sha256: str
    max_batch: int


def part_graph(bundle: Any, name: str) -> PartGraph:
    """``PartGraph`` of part ``name`` of a ``Bundle`` (external data checked: it must stay inside the
    bundle and be listed in the manifest, as for onnxruntime)."""
    from .graph_ort import check_external_data

    m = bundle.manifest
    part = m.parts[name]
    entry = graph_entry(part)
    graph = bundle.file(entry.file)
    check_external_data(entry, graph, m.files)
    return PartGraph(Path(bundle.path), name, part, entry, graph, m.files[entry.file].sha256, m.max_batch)


def engine_key(pg: PartGraph, precision: str, gpu: Gpu, trt: Any) -> EngineKey:
    return EngineKey(pg.name, precision, pg.entry.file, pg.sha256, profile_range(pg.max_batch), gpu.name,
                     gpu.compute_capability, str(trt.__version__))


def ensure_engine(pg: PartGraph, precision: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                  workspace_mb: int = DEFAULT_WORKSPACE_MB, force: bool = False,
                  gpu: Gpu | None = None) -> tuple[Path, bytes, EngineKey]:
    """(plan path, checked plan bytes, key) of a valid engine for part ``pg``: found in the engine
    directories, or built (``force``: always built) into ``build_dir``. Stale or foreign engines
    found on the way are named in a warning and never loaded."""
    trt = import_tensorrt()
    gpu = gpu or cuda_api().device()
    key = engine_key(pg, engine_precision(pg.part, precision, strongly_typed(trt)), gpu, trt)
    rejected = []
    if not force:
        for d in engine_dirs(pg.root, cache_dir):
            data, why = load_engine_bytes(d / key.file_name, key)
            if data is not None:
                return d / key.file_name, data, key
            if why != "no engine built yet":
                rejected.append(f"{d / key.file_name}: {why}")
    for r in rejected:
        warn(f"not loading TensorRT engine {r}; building a new one")
    plan = build_engine(pg.graph, pg.part, key, build_dir(pg.root, cache_dir), workspace_mb)
    data, why = load_engine_bytes(plan, key)
    if data is None:
        raise BackendError(f"the engine just built at '{plan}' fails its own check: {why}",
                           "another process may be writing the same engine; run the command again")
    return plan, data, key


def build_engines(bundle: Any, precision: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                  workspace_mb: int = DEFAULT_WORKSPACE_MB, force: bool = False) -> list[tuple[str, Path, EngineKey]]:
    """Build (or find valid) engines for every graph part of a bundle: [(part, plan, key)]."""
    require_trt()
    parts = [n for n, p in bundle.manifest.parts.items() if p.kind == "graph"]
    if precision == "int8" and not any(bundle.manifest.parts[n].precision == "int8-qdq" for n in parts):
        raise BackendError(f"bundle '{bundle.path}' has no int8 graph", "export it with --precision int8 first")
    out = []
    for name in parts:
        plan, _, key = ensure_engine(part_graph(bundle, name), precision, cache_dir, workspace_mb, force)
        out.append((name, plan, key))
    return out


# ---- running --------------------------------------------------------------------------------------

class TrtGraph:
    """A TensorRT engine for one graph part, run with ``execute_async_v3`` on our own device buffers.

    The engine is found in (or built into) the engine cache on first use. Device buffers for the
    largest batch of the profile are allocated once; ``run`` splits larger inputs. One execution
    context is shared, so ``run`` holds a lock: concurrent callers get the same results as alone.
    ``threads`` is accepted for the graph-backend interface and unused (TensorRT runs on the GPU)."""

    def __init__(self, part: Any, path: str | os.PathLike[str], threads: int | None = None,
                 precision: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB) -> None:
        from ..bundle.store import Bundle, read_manifest
        from .graph_ort import _bundle_root

        self._buffers: list[int] = []
        self._stream: Any = None
        root, _ = _bundle_root(part, Path(path))
        manifest = read_manifest(root)
        names = [n for n, p in manifest.parts.items() if getattr(p, "file", None) == part.file and p.kind == "graph"]
        if not names:
            raise BackendError(f"bundle '{root}' has no graph part with file '{part.file}'", "re-export the bundle")
        trt = import_tensorrt()
        self._cuda = cuda_api()
        pg = part_graph(Bundle(root, manifest), names[0])
        self.plan, data, self.key = ensure_engine(pg, precision, cache_dir, workspace_mb)
        self.part = part
        self.backend = "trt"
        self.provider = f"TensorRT {trt.__version__} {self.key.precision}"
        self.providers = [self.provider]
        self.input_names = [t.name for t in part.inputs]
        self.output_names = [t.name for t in part.outputs]
        self._lock = threading.Lock()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise BackendError(f"TensorRT could not load its engine '{self.plan}' (its messages are above)",
                               f"delete '{self.plan}' and run again to rebuild it")
        self.max_batch = self._check_io(trt)
        self._context = self._engine.create_execution_context()
        self._stream = self._cuda.stream()
        self._ptr: dict[str, int] = {}
        for spec in [*part.inputs, *part.outputs]:
            nbytes = self.max_batch * math.prod(spec.shape[1:]) * np.dtype(spec.dtype).itemsize
            ptr = self._cuda.malloc(nbytes)
            self._buffers.append(ptr)
            self._ptr[spec.name] = ptr
            if not self._context.set_tensor_address(spec.name, ptr):
                raise BackendError(f"TensorRT refused the device buffer of '{spec.name}'", "report this with the bundle")

    @property
    def precision(self) -> str:
        return self.key.precision

    def _check_io(self, trt: Any) -> int:
        """Check the engine's I/O names, directions and dtypes against the manifest part; return the
        largest batch its profile accepts."""
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        want = {t.name: (t, trt.TensorIOMode.INPUT) for t in self.part.inputs}
        want |= {t.name: (t, trt.TensorIOMode.OUTPUT) for t in self.part.outputs}
        fix = f"delete '{self.plan}' and run again to rebuild it"
        if sorted(names) != sorted(want):
            raise BackendError(f"engine '{self.plan.name}' has tensors {names}, the manifest {sorted(want)}", fix)
        for name, (spec, mode) in want.items():
            dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(name)))
            if eng.get_tensor_mode(name) != mode or dtype != np.dtype(spec.dtype):
                raise BackendError(f"engine '{self.plan.name}' tensor '{name}' is {dtype} ({eng.get_tensor_mode(name)}), "
                                   f"the manifest says {spec.dtype} ({mode})", fix)
        hi = min(int(eng.get_tensor_profile_shape(t.name, 0)[2][0]) for t in self.part.inputs)
        if hi < self.key.profile[2]:
            raise BackendError(f"engine '{self.plan.name}' accepts batches up to {hi}, not {self.key.profile[2]}", fix)
        return self.key.profile[2]

    def _feeds(self, feeds: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], int]:
        if sorted(feeds) != sorted(self.input_names):
            raise InputError(f"graph inputs are {self.input_names}, got {sorted(map(str, feeds))}",
                             "pass one array per graph input")
        arrays, n = [], None
        for spec in self.part.inputs:
            a = feeds[spec.name]
            want = tuple(spec.shape[1:])
            if not isinstance(a, np.ndarray) or a.dtype != np.dtype(spec.dtype) or a.ndim != len(spec.shape) \
                    or tuple(a.shape[1:]) != want:
                got = f"{a.dtype} {tuple(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
                raise InputError(f"input '{spec.name}' is {got}, the graph takes {spec.dtype} (N, "
                                 f"{', '.join(map(str, want))})", "pass arrays of the graph's dtype and shape")
            if n is not None and len(a) != n:
                raise InputError(f"inputs have different batch sizes ({n} and {len(a)})", "pass equal batches")
            n = len(a)
            arrays.append(np.ascontiguousarray(a))
        return arrays, int(n or 0)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the manifest's order for ``feeds`` keyed by the manifest's input names."""
        arrays, n = self._feeds(feeds)
        outs = [np.empty((n, *spec.shape[1:]), dtype=spec.dtype) for spec in self.part.outputs]
        with self._lock:
            if self._stream is None:
                raise BackendError("this TensorRT graph was closed", "open the bundle again")
            for a in range(0, n, self.max_batch):
                b = min(n, a + self.max_batch)
                for spec, arr in zip(self.part.inputs, arrays):
                    chunk = arr[a:b]
                    if not self._context.set_input_shape(spec.name, chunk.shape):
                        raise BackendError(f"TensorRT refused input shape {chunk.shape} for '{spec.name}'",
                                           f"delete '{self.plan}' and run again to rebuild it")
                    self._cuda.h2d(self._ptr[spec.name], chunk, self._stream)
                if not self._context.execute_async_v3(self._cuda.handle(self._stream)):
                    raise BackendError(f"TensorRT failed to run '{self.plan.name}' (its messages are above)",
                                       "run `rsvlm-edge doctor`; try --backend ort-cuda")
                for spec, out in zip(self.part.outputs, outs):
                    got = tuple(self._context.get_tensor_shape(spec.name))
                    if got != (b - a, *spec.shape[1:]):
                        raise BackendError(f"engine output '{spec.name}' has shape {got}, expected "
                                           f"{(b - a, *spec.shape[1:])}", f"delete '{self.plan}' and rebuild it")
                    self._cuda.d2h(out[a:b], self._ptr[spec.name], self._stream)
                self._cuda.sync(self._stream)
        return outs

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the object is collected)."""
        lock = getattr(self, "_lock", None) or threading.Lock()
        with lock:
            self._context = self._engine = self._runtime = None
            for ptr in self._buffers:
                self._cuda.free(ptr)
            self._buffers = []
            if self._stream is not None:
                self._cuda.destroy_stream(self._stream)
                self._stream = None

    def __del__(self) -> None:
        try:
            if getattr(self, "_buffers", None) or getattr(self, "_stream", None) is not None:
                self.close()
        except Exception:
            pass


# ---- registration ---------------------------------------------------------------------------------

def probe() -> Probe:
    """Available when TensorRT >= 10, cuda-python or cupy, and a CUDA device are all present."""
    try:
        trt = import_tensorrt()
    except BackendError as e:
        return Probe(False, e.message, fix=e.fix or "")
    versions = f"TensorRT {trt.__version__}"
    try:
        cuda = cuda_api()
    except BackendError as e:
        return Probe(False, e.message, versions, fix=e.fix or "")
    versions += f", {cuda.name}"
    if cuda.device_count() < 1:
        return Probe(False, "no CUDA device is visible", versions, fix="check the GPU and driver with nvidia-smi")
    gpu = cuda.device()
    return Probe(True, versions=versions, device=f"cuda ({gpu.name}, sm {gpu.compute_capability})")


def require_trt() -> None:
    """BackendError naming what is missing when the TensorRT backend cannot run here."""
    p = probe()
    if not p.available:
        raise BackendError(f"TensorRT engines cannot be built here: {p.why_not}", p.fix or TRT_FIX)


register(BackendSpec(
    name="trt", kind="graph", rank=5, device="cuda",
    summary="TensorRT engines built from the bundle's ONNX (fp16; int8 from the S8S8 QDQ graph), cached per GPU",
    probe=probe, factory=TrtGraph, supports=supports,
))
