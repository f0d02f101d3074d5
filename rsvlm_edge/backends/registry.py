"""The one backend registry: where each part of a model runs.

Two kinds of backend serve the two kinds of model part (see ``rsvlm_edge.bundle.schema``):

* ``graph`` backends run an ONNX graph part (CLIP image/text encoders, the VLM vision tower):
  ``trt`` (TensorRT engines), ``ort-tensorrt``, ``ort-cuda`` and ``ort-cpu`` (onnxruntime), preferred
  by ``auto`` in that order; each says through ``supports(part)`` why it cannot run a part (e.g. a
  U8S8 int8 graph without the S8S8 variant TensorRT needs).
* ``decoder`` backends run one prefill / decode step of a LLaMA-family decoder over a KV cache:
  ``numpy`` (the reference), ``native`` (our C++ kernels on the CPU) and ``cuda`` (the whole
  decoder on a GPU, ``decoder_cuda.py``).

A backend module registers a ``BackendSpec`` (name, kind, rank, a probe that says whether it can run
here and why not, and a factory). Runtimes ask ``open_graph`` / ``open_decoder`` for a part and a
user preference and never construct a backend themselves; ``auto`` picks the available backend of
lowest rank; ``rsvlm-edge doctor`` lists the same registry. Adding a backend = one new module that
calls ``register`` + an import in ``backends/__init__.py``.

A preference is ``auto``, a backend name, an alias (``ort``: the best onnxruntime provider;
``cpu``: the best CPU-only backend of each kind), or per kind ``graph=ort-cpu,decoder=numpy``. A
single name applies to the kind it serves; the other kind is chosen automatically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import BackendError

Kind = Literal["graph", "decoder"]
KINDS: tuple[Kind, ...] = ("graph", "decoder")


@dataclass(frozen=True)
class Probe:
    """Whether a backend can run on this machine and build, and what it found. ``fix``: what to
    install or change when it cannot (shown when the backend was asked for by name)."""

    available: bool
    why_not: str = ""
    versions: str = ""
    device: str = ""
    fix: str = ""


def _every_part(part: Any) -> bool:
    return True


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend. ``rank``: lower is preferred by ``auto``. ``device``: cpu | cuda.
    ``factory``: builds the backend object (a graph session, or a decoder op set)."""

    name: str
    kind: Kind
    rank: int
    device: str
    summary: str
    probe: Callable[[], Probe]
    factory: Callable[..., Any]
    supports: Callable[[Any], str | None] = field(default=lambda part: None)  # why it cannot run ``part``
    # The parts it is meant for: a preference naming this backend applies to those; any other part
    # is chosen as under ``auto`` (``native-vit`` serves image towers: ``--backend native-vit`` runs
    # the image tower natively and the text tower where auto puts it).
    serves: Callable[[Any], bool] = field(default=_every_part)
    # The parts ``auto`` (and ``cpu``) may give it: where it is measured faster than the next backend
    # (bench/RESULTS.md). A preference naming it runs it on any part it serves and supports.
    auto_for: Callable[[Any], bool] = field(default=lambda part: True)

    @property
    def partial(self) -> bool:
        """It serves some parts only: never the answer when no part is given."""
        return self.serves is not _every_part

    def check(self) -> Probe:
        try:
            return self.probe()
        except Exception as e:  # a probe must never take the process down
            return Probe(False, f"probe failed: {e.__class__.__name__}: {e}")


_REGISTRY: dict[str, BackendSpec] = {}
ALIASES = ("auto", "ort", "cpu")


def probe_native_ops(required: tuple[str, ...]) -> Probe:
    """The probe of a backend built on ``rsvlm_edge._C``: the extension imports, its environment is
    valid (``RSVLM_EDGE_THREAD_WAIT``) and it has every op in ``required``."""
    from ..errors import BackendError
    from ..native import check_thread_wait_env

    try:
        check_thread_wait_env()
    except BackendError as e:
        return Probe(False, e.message, fix=e.fix or "")
    try:
        from .. import _C
    except ImportError as e:
        return Probe(False, f"the native extension rsvlm_edge._C is not built ({e})",
                     fix="build it with `scripts/dev-build.sh` (developer checkout) or reinstall rsvlm-edge")
    missing = [n for n in required if not hasattr(_C, n)]
    if missing:
        return Probe(False, f"this build of rsvlm_edge._C lacks {', '.join(missing)}", fix="rebuild rsvlm-edge")
    kernels = _C.cpu_kernels() if hasattr(_C, "cpu_kernels") else "?"
    return Probe(True, versions=f"rsvlm_edge._C {_C.version() if hasattr(_C, 'version') else ''}".strip(),
                 device=f"cpu ({kernels} kernels)")


def probe_cuda_ext(required: tuple[str, ...]) -> Probe:
    """The probe of a backend that runs on a GPU through ``rsvlm_edge._C``'s CUDA kernels: the extension imports
    (and its environment is valid), has every attribute in ``required``, was built with CUDA, and sees a device."""
    from ..errors import BackendError
    from ..native import _c

    try:
        ext = _c()
    except ImportError as e:
        return Probe(False, f"the native extension rsvlm_edge._C is not built ({e})",
                     fix="build it: scripts/dev-build.sh (RSVLM_CUDA=ON with nvcc)")
    except BackendError as e:
        return Probe(False, e.message, fix=e.fix or "")
    missing = [n for n in required if not hasattr(ext, n)]
    if missing:
        return Probe(False, f"this build of rsvlm_edge._C lacks {', '.join(missing)}", fix="rebuild rsvlm-edge")
    if not ext.built_with_cuda():
        return Probe(False, "rsvlm_edge._C was built without CUDA kernels",
                     fix="rebuild on a machine with nvcc: RSVLM_CUDA=ON scripts/dev-build.sh")
    if ext.cuda_device_count() < 1:
        return Probe(False, "no CUDA device is visible", fix="check nvidia-smi / CUDA_VISIBLE_DEVICES")
    return Probe(True, versions=f"rsvlm_edge._C {ext.version()}", device="cuda")


def register(spec: BackendSpec) -> None:
    if spec.name in _REGISTRY or spec.name in ALIASES:
        raise ValueError(f"backend '{spec.name}' is registered twice")
    _REGISTRY[spec.name] = spec


def all_backends(kind: Kind | None = None) -> list[BackendSpec]:
    """Registered backends (of ``kind``), best first."""
    return sorted((s for s in _REGISTRY.values() if kind is None or s.kind == kind), key=lambda s: (s.kind, s.rank))


def names() -> list[str]:
    """Every accepted single-name preference."""
    return [*ALIASES, *(s.name for s in all_backends())]


def parse_preference(preference: str | None) -> dict[Kind, str]:
    """``{kind: name-or-alias}`` for both kinds from a user preference string."""
    pref = (preference or "auto").strip()
    out: dict[Kind, str] = {"graph": "auto", "decoder": "auto"}
    if "=" in pref:
        for item in pref.split(","):
            kind, _, name = item.partition("=")
            kind, name = kind.strip(), name.strip()
            if kind not in KINDS:
                raise BackendError(f"unknown part kind '{kind}' in backend '{preference}'",
                                   "use graph=NAME,decoder=NAME, e.g. graph=ort-cpu,decoder=numpy")
            out[kind] = _known(name, preference)  # type: ignore[index]
        return out
    name = _known(pref, preference)
    if name in ALIASES:
        return {"graph": name, "decoder": name}
    spec = _REGISTRY[name]
    out[spec.kind] = name
    return out


def _known(name: str, preference: str | None) -> str:
    if name in ALIASES or name in _REGISTRY:
        return name
    raise BackendError(f"unknown backend '{name}'" + (f" in '{preference}'" if preference != name else ""),
                       f"choose one of {', '.join(names())} (see `rsvlm-edge doctor`)")


def choose(kind: Kind, preference: str | None, part: Any = None, part_name: str = "") -> BackendSpec:
    """The backend that runs a part of ``kind`` under ``preference``; BackendError naming what is
    missing when the requested one cannot run it."""
    wanted = parse_preference(preference)[kind]
    what = f"part '{part_name}' ({kind})" if part_name else f"{kind} parts"
    if wanted not in ALIASES and part is not None and not _REGISTRY[wanted].serves(part):
        wanted = "auto"
    if wanted in ALIASES:
        candidates = [s for s in all_backends(kind)
                      if wanted == "auto" or (wanted == "ort" and s.name.startswith("ort-"))
                      or (wanted == "cpu" and s.device == "cpu")]
        reasons = []
        for spec in candidates:
            if spec.partial and part is None:  # it is for some parts only: never the answer for "any part"
                continue
            if part is not None and not spec.auto_for(part):
                continue
            probe = spec.check()
            why = probe.why_not if not probe.available else spec.supports(part) if part is not None else None
            if not why:
                return spec
            reasons.append(f"{spec.name}: {why}")
        raise BackendError(f"no '{wanted}' backend can run {what}: " + ("; ".join(reasons) or "none registered"),
                           "run `rsvlm-edge doctor` to see what is installed")
    spec = _REGISTRY[wanted]
    if spec.kind != kind:
        raise BackendError(f"backend '{wanted}' runs {spec.kind} parts, not {what}",
                           f"use one of {', '.join(s.name for s in all_backends(kind))} or auto for {kind} parts")
    probe = spec.check()
    if not probe.available:
        raise BackendError(f"backend '{wanted}' is not available: {probe.why_not}",
                           (f"{probe.fix}; or use --backend auto" if probe.fix
                            else "run `rsvlm-edge doctor`, or use --backend auto"))
    why = spec.supports(part) if part is not None else None
    if why:
        raise BackendError(f"backend '{wanted}' cannot run {what}: {why}", "use --backend auto")
    return spec


def open_graph(part: Any, path: Any, preference: str | None = "auto", part_name: str = "", **options: Any) -> Any:
    """A session for graph ``part`` (a ``GraphPart``) whose ONNX file is ``path``."""
    spec = choose("graph", preference, part, part_name)
    return spec.factory(part, path, **options)


def open_decoder(preference: str | None = "auto", part: Any = None) -> Any:
    """The decoder op set (see ``backends/decoder_numpy.py`` for the contract)."""
    return choose("decoder", preference, part, "decoder").factory()


def doctor_rows() -> list[dict[str, str]]:
    """One row per registered backend: name, kind, available, why not, versions, device."""
    rows = []
    for spec in all_backends():
        probe = spec.check()
        rows.append({"backend": spec.name, "kind": spec.kind, "available": "yes" if probe.available else "no",
                     "why not": probe.why_not, "versions": probe.versions, "device": probe.device or spec.device,
                     "summary": spec.summary})
    return rows
