"""The layout's promises: one backend registry behind every runtime, no import cycles, nothing that
imports torch in the runtime packages, no test fixtures in the package, every CLI command present,
decode steps that run on preallocated buffers."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
from kernel_testing import tiny_decoder_config, tiny_decoder_tensors

import rsvlm_edge
from rsvlm_edge.backends import registry
from rsvlm_edge.errors import BackendError

PKG = Path(rsvlm_edge.__file__).parent
RUNTIME_PACKAGES = ("models", "backends", "bundle", "cli")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules of rsvlm_edge imported when ``path`` is imported (module level only)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("rsvlm_edge")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("rsvlm_edge"):
                continue
            out.add(mod)
            for a in node.names:  # ``from . import x`` imports the submodule x
                if (PKG.parent / Path(*(mod + "." + a.name).split("."))).with_suffix(".py").exists() or \
                        (PKG.parent / Path(*(mod + "." + a.name).split(".")) / "__init__.py").exists():
                    out.add(f"{mod}.{a.name}")
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _top_level_imports(p) for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1 and dep not in stack[:1]:
                # a parent package importing its own submodule is not a cycle
                if not dep.startswith(node + ".") and not node.startswith(dep + "."):
                    cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert cycles == []


def test_runtime_packages_never_import_export_or_torch_at_module_level():
    for path in PKG.rglob("*.py"):
        name = _module_name(path)
        if name.split(".")[1:2] and name.split(".")[1] in RUNTIME_PACKAGES:
            tree = ast.parse(path.read_text())
            top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            for node in top:
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] in ("torch", "open_clip", "transformers") for m in mods), name
                assert not any("export" in m.split(".") for m in mods if node.__class__ is ast.ImportFrom), name


def test_no_test_fixtures_ship_in_the_package():
    names = {m.name for m in pkgutil.walk_packages([str(PKG)], "rsvlm_edge.")}
    assert not any(n.rsplit(".", 1)[-1] in ("testing", "fixtures", "conftest") for n in names)


def test_every_module_imports():
    for m in pkgutil.walk_packages([str(PKG)], "rsvlm_edge."):
        if m.name.endswith("__main__") or m.name.rsplit(".", 1)[-1].startswith(("_C", "librsvlm")):
            continue
        importlib.import_module(m.name)


def test_cli_registers_every_command():
    from rsvlm_edge.cli import app, export_app

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"classify", "embed", "bench", "info", "doctor", "ask", "caption", "classify-scene"} <= names
    assert {c.name for c in export_app.registered_commands} == {"clip", "vlm"}


def test_graph_io_names_live_only_in_the_manifest_and_the_exporter():
    for path in list((PKG / "models").rglob("*.py")) + list((PKG / "backends").rglob("*.py")):
        text = path.read_text()
        for name in ('"pixels"', '"input_ids"', '"image_embeds"', '"text_embeds"', '"images"', '"image_features"'):
            assert name not in text, f"{path.name} hard-codes {name}"


# ---- the registry ----

def test_preferences_resolve_per_kind():
    assert registry.parse_preference("auto") == {"graph": "auto", "decoder": "auto"}
    assert registry.parse_preference("numpy") == {"graph": "auto", "decoder": "numpy"}
    assert registry.parse_preference("graph=ort-cpu,decoder=numpy") == {"graph": "ort-cpu", "decoder": "numpy"}
    assert registry.choose("graph", "auto").name in ("trt", "ort-tensorrt", "ort-cuda", "ort-cpu")
    assert registry.choose("graph", "cpu").name == "ort-cpu"
    assert registry.choose("decoder", "numpy").name == "numpy"


@pytest.mark.parametrize("pref,needle", [
    ("tensorrt", "unknown backend 'tensorrt'"), ("nope", "unknown backend"), ("graph=nope", "unknown backend 'nope'"),
    ("gpu=ort", "unknown part kind 'gpu'"),
])
def test_bad_preferences_are_named(pref, needle):
    with pytest.raises(BackendError, match=needle):
        registry.choose("graph", pref)


def test_decoder_backend_cannot_run_a_graph_part():
    with pytest.raises(BackendError, match="runs decoder parts"):
        registry.choose("graph", "graph=native")


def test_a_new_graph_backend_is_one_registration_and_no_runtime_edit(tmp_path, monkeypatch):
    """A backend registered from outside is picked by ``auto`` for every graph part of a runtime."""
    torch = pytest.importorskip("torch")  # noqa: F841
    from clip_models import save_bare, tiny_open_clip

    from rsvlm_edge.backends.graph_ort import OrtGraph
    from rsvlm_edge.backends.registry import BackendSpec, Probe
    from rsvlm_edge.export.clip import export_clip

    calls = []

    def factory(part, path, threads=None):
        calls.append(part.file)
        return OrtGraph(part, path, ["CPUExecutionProvider"], "fake", threads)

    monkeypatch.setitem(registry._REGISTRY, "fake", BackendSpec(
        name="fake", kind="graph", rank=0, device="cpu", summary="test", probe=lambda: Probe(True), factory=factory))
    bundle = export_clip(save_bare(tiny_open_clip(), tmp_path / "t.pt"), tmp_path / "t.rsvlm").path
    rt = rsvlm_edge.load(bundle)
    assert rt.backend == "fake" and sorted(calls) == ["image.onnx", "text.onnx"]
    assert rsvlm_edge.load(bundle, backend="ort-cpu").backend == "ort-cpu"


def test_doctor_lists_the_registry(tmp_path):
    import json

    from util import run_cli

    r = run_cli("doctor", "--json", str(tmp_path / "d.json"))
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "d.json").read_text())["backends"]
    assert {row["backend"] for row in rows} == {s.name for s in registry.all_backends()}
    assert {"ort-cpu", "numpy"} <= {row["backend"] for row in rows if row["available"] == "yes"}
    assert "ort-cpu" in r.stdout


# ---- the decode step ----

def _tiny_tensors() -> dict:
    rng = np.random.default_rng(0)
    return tiny_decoder_tensors(lambda name, shape: rng.normal(0, 0.5 if name == "embed_tokens" else 0.3,
                                                               shape).astype(np.float32))


def _tiny_decoder(backend: str):
    from rsvlm_edge.models.llava.decoder import LlamaDecoder

    cfg = tiny_decoder_config()
    return cfg, LlamaDecoder(cfg, _tiny_tensors(), max_batch=3, max_seq=16, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_decode_step_writes_into_out_and_keeps_its_buffers(backend):
    from rsvlm_edge.models.llava.decoder import decode_step, prefill

    try:
        cfg, dec = _tiny_decoder(backend)
    except BackendError as e:
        pytest.skip(str(e))
    embeds = dec.embed_tokens(np.array([[1, 5, 7, 9], [1, 3, 0, 0]]))
    prefill(cfg, dec.weights, dec.ops, dec.cache, embeds, np.array([4, 2]))
    buffers = {k: v.__array_interface__["data"][0] for k, v in dec.buffers.__dict__.items()}
    out = np.full((2, cfg.vocab_size), np.nan, dtype=np.float32)
    got = decode_step(cfg, dec.weights, dec.ops, dec.cache, np.array([11, 12]), dec.buffers, out=out)
    assert got is out and np.isfinite(out).all()
    assert buffers == {k: v.__array_interface__["data"][0] for k, v in dec.buffers.__dict__.items()}
    assert dec.cache.lengths.tolist() == [5, 3]
    # the same step through a fresh prefill of the longer prompt
    _, ref = _tiny_decoder("numpy")
    full = ref.embed_tokens(np.array([[1, 5, 7, 9, 11], [1, 3, 12, 0, 0]]))
    np.testing.assert_allclose(out, ref.prefill(full, np.array([5, 3])), rtol=1e-4, atol=1e-4)


def test_kv_cache_refuses_absurd_sizes():
    from rsvlm_edge.errors import InputError
    from rsvlm_edge.models.llava.config import DecoderConfig
    from rsvlm_edge.models.llava.kv_cache import KVCache

    cfg = DecoderConfig(model_type="llama", vocab_size=50, hidden_size=4096, intermediate_size=48, num_layers=32,
                        num_heads=32, num_kv_heads=32, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e4,
                        max_position_embeddings=4096, attention_bias=False, bos_token_id=1, eos_token_id=2)
    with pytest.raises(InputError, match="GiB"):
        KVCache.allocate(cfg, 1_000_000, 4096)
    with pytest.raises(InputError, match="positive integer"):
        KVCache.allocate(cfg, 0, 16)


def test_optional_linear_biases_are_applied_when_present():
    """LLaMA variants with attention_bias / mlp_bias carry o_proj / MLP biases: they must not be dropped."""
    from rsvlm_edge.models.llava.decoder import LlamaDecoder

    cfg, dec = _tiny_decoder("numpy")
    tensors = _tiny_tensors()
    rng = np.random.default_rng(3)
    with_bias = dict(tensors, **{f"layers.{i}.{n}.bias": rng.normal(0, 0.5, size).astype(np.float32)
                                 for i in range(2) for n, size in (("o_proj", 32), ("down_proj", 32))})
    biased = LlamaDecoder(cfg, with_bias, max_batch=1, max_seq=16, backend="numpy")
    assert biased.layers[0].o.bias is not None and biased.layers[1].down.bias is not None
    embeds = dec.embed_tokens(np.array([[1, 5, 7]]))
    assert not np.allclose(biased.prefill(embeds, np.array([3])), dec.prefill(embeds, np.array([3])))
