"""onnxruntime's GPU providers (issue 9): ``ort-tensorrt`` and ``ort-cuda`` fall back in order (TensorRT,
CUDA, CPU), say which provider actually ran, pick the graph variant they can run, and rank in ``auto``
as trt > ort-tensorrt > ort-cuda > ort-cpu. No GPU here: the list of providers onnxruntime reports
(``onnxruntime.get_available_providers``) is replaced at that boundary, and the real (CPU-only)
onnxruntime then falls back to its CPU provider, which is exactly the fallback path."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from clip_models import save_bare, tiny_open_clip  # noqa: E402

import rsvlm_edge  # noqa: E402
from rsvlm_edge.backends import registry  # noqa: E402
from rsvlm_edge.backends.graph_ort import CPU_EP, CUDA_EP, TRT_EP, fallback_providers, tensorrt_options  # noqa: E402
from rsvlm_edge.bundle import open_bundle  # noqa: E402
from rsvlm_edge.errors import BackendError  # noqa: E402
from rsvlm_edge.export.clip import export_clip  # noqa: E402
from rsvlm_edge.synthetic import synthetic_rs_images  # noqa: E402

PX = synthetic_rs_images(5, 64, seed=8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_bare(tiny_open_clip(seed=2), tmp_path_factory.mktemp("ortckpt") / "m.pt")


@pytest.fixture(scope="module")
def fp32_bundle(ckpt, tmp_path_factory) -> Path:
    return export_clip(ckpt, tmp_path_factory.mktemp("ortfp32") / "fp32.rsvlm", max_batch=4).path


@pytest.fixture(scope="module")
def int8_bundle(ckpt, tmp_path_factory) -> Path:
    return export_clip(ckpt, tmp_path_factory.mktemp("ortint8") / "int8.rsvlm", precision="int8", max_batch=4,
                       n_synthetic_calib=16).path


@pytest.fixture
def gpu_onnxruntime(monkeypatch, tmp_path):
    """onnxruntime reporting the TensorRT and CUDA providers (as onnxruntime-gpu does); no tensorrt."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TRT_EP, CUDA_EP, CPU_EP])
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setenv("RSVLM_EDGE_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("available,expect", [
    ([TRT_EP, CUDA_EP, CPU_EP], [TRT_EP, CUDA_EP, CPU_EP]),
    ([CUDA_EP, CPU_EP], [CUDA_EP, CPU_EP]),
    ([CPU_EP], [CPU_EP]),
    (["AzureExecutionProvider", CPU_EP, TRT_EP], [TRT_EP, CPU_EP]),
])
def test_providers_fall_back_tensorrt_cuda_cpu(available, expect):
    chain = fallback_providers((TRT_EP, {"trt_fp16_enable": True}), available)
    assert [p if isinstance(p, str) else p[0] for p in chain] == expect
    if TRT_EP in available:
        assert chain[0] == (TRT_EP, {"trt_fp16_enable": True})  # the options travel with the provider
    assert fallback_providers(CUDA_EP, available) == [p for p in (CUDA_EP, CPU_EP) if p in available]


def test_tensorrt_provider_options_cover_the_batch_range(fp32_bundle, int8_bundle, tmp_path):
    m = open_bundle(fp32_bundle).manifest
    opts = tensorrt_options(m.parts["image"], m.max_batch, tmp_path, 1024)
    name = m.parts["image"].inputs[0].name
    assert opts["trt_profile_min_shapes"] == f"{name}:1x64x64x3"
    assert opts["trt_profile_opt_shapes"] == f"{name}:4x64x64x3" == opts["trt_profile_max_shapes"]
    assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == str(tmp_path)
    assert opts["trt_timing_cache_enable"] and opts["trt_timing_cache_path"] == str(tmp_path)
    assert opts["trt_fp16_enable"] and not opts["trt_int8_enable"] and opts["trt_max_workspace_size"] == 1024 << 20
    m8 = open_bundle(int8_bundle).manifest
    assert tensorrt_options(m8.parts["image"], 4, tmp_path, 1024)["trt_int8_enable"]
    assert not tensorrt_options(m8.parts["text"], 4, tmp_path, 1024)["trt_int8_enable"]


def test_auto_ranks_tensorrt_then_cuda_then_cpu(gpu_onnxruntime, fp32_bundle, int8_bundle):
    part = open_bundle(fp32_bundle).manifest.parts["image"]
    assert registry.choose("graph", "auto", part, "image").name == "ort-tensorrt"  # trt: no tensorrt module
    assert registry.choose("graph", "ort", part, "image").name == "ort-tensorrt"
    assert registry.choose("graph", "cpu", part, "image").name == "ort-cpu"  # fp32: auto keeps onnxruntime
    int8 = open_bundle(int8_bundle).manifest.parts["image"]
    assert registry.choose("graph", "auto", int8, "image").name == "ort-tensorrt"
    u8s8_only = int8.model_copy(update={"variants": {}})
    assert registry.choose("graph", "auto", u8s8_only, "image").name == "ort-cuda"
    with pytest.raises(BackendError, match="S8S8"):
        registry.choose("graph", "ort-tensorrt", u8s8_only, "image")


def test_tensorrt_provider_falls_back_and_says_what_ran(gpu_onnxruntime, fp32_bundle, tmp_path, capsys):
    rt = rsvlm_edge.load(fp32_bundle, backend="ort-tensorrt")
    assert rt.backend == "ort-tensorrt"
    assert rt._image.provider == CPU_EP and rt._image.providers == [CPU_EP]  # from session.get_providers()
    err = capsys.readouterr().err
    assert f"could not use {TRT_EP}" in err and f"running on {CPU_EP}" in err
    np.testing.assert_allclose(rt.encode_images(PX), rsvlm_edge.load(fp32_bundle, backend="ort-cpu").encode_images(PX),
                               atol=1e-6)
    caches = list((tmp_path / "cache" / "engines" / "ort-trt").iterdir())
    assert len(caches) == 2 and all(c.name.endswith(("-fp16-" + c.name[-16:])) for c in caches)
    assert not (fp32_bundle / "engines").exists()  # never inside the bundle


def test_tensorrt_provider_runs_the_s8s8_variant(gpu_onnxruntime, int8_bundle):
    rt = rsvlm_edge.load(int8_bundle, backend="ort-tensorrt")
    assert rt._image.path.name == "image.s8s8.onnx" and rt._image.variant == "s8s8"
    assert rt._text.path.name == "text.onnx" and rt._text.variant is None
    assert rt.encode_images(PX).shape == (5, 64)


def test_cuda_provider_falls_back_to_cpu_and_says_so(monkeypatch, fp32_bundle, capsys):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA_EP, CPU_EP])
    rt = rsvlm_edge.load(fp32_bundle, backend="ort-cuda")
    assert rt.backend == "ort-cuda" and rt._image.provider == CPU_EP
    assert f"could not use {CUDA_EP}" in capsys.readouterr().err


def test_explicit_gpu_provider_missing_is_an_error_naming_the_package(fp32_bundle):
    import onnxruntime

    if TRT_EP in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the TensorRT provider")
    with pytest.raises(BackendError, match="no TensorrtExecutionProvider") as e:
        rsvlm_edge.load(fp32_bundle, backend="ort-tensorrt")
    assert "onnxruntime-gpu" in e.value.fix


def test_bench_rows_name_backend_and_provider(gpu_onnxruntime, fp32_bundle):
    from rsvlm_edge.bench.clip import bench_clip

    res = bench_clip(str(fp32_bundle), [1, 2], ["fp32"], backend="ort-tensorrt", warmup=0, iters=1, peer=True)
    ours = [r for r in res["rows"] if r["backend"] == "ort-tensorrt"]
    peer = [r for r in res["rows"] if r["backend"] == "open_clip"]
    assert [r["provider"] for r in ours] == [CPU_EP, CPU_EP]  # what actually ran, not what was asked for
    assert {r["provider"] for r in peer} >= {"torch cpu"} and all(r["speedup_vs_open_clip"] > 0 for r in ours)
    import torch

    if not torch.cuda.is_available():
        assert any("CUDA peer skipped: no CUDA device" in n for n in res["notes"])
        assert not [r for r in peer if r["provider"] == "torch cuda"]


def test_bench_times_onnxruntime_quantize_dynamic_of_the_same_fp32_graph(fp32_bundle):
    from rsvlm_edge.bench.clip import ORT_DYNAMIC, bench_clip

    res = bench_clip(str(fp32_bundle), [1, 3], ["fp32"], backend="ort-cpu", warmup=0, iters=1, peer=True)
    dyn = [r for r in res["rows"] if r["backend"] == ORT_DYNAMIC]
    assert [r["batch"] for r in dyn] == [1, 3]
    assert all(r["precision"] == "int8-dynamic" and r["provider"] == CPU_EP and r["images_per_s"] > 0 for r in dyn)
    ours = [r for r in res["rows"] if r["backend"] == "ort-cpu"]
    assert len(ours) == 2 and all(r["speedup_vs_ort_dynamic"] > 0 for r in ours)
    assert not any("quantize_dynamic peer skipped" in n for n in res["notes"])


def test_the_quantize_dynamic_peer_needs_an_fp32_graph(int8_bundle):
    from rsvlm_edge.bench.clip import ORT_DYNAMIC, bench_clip

    res = bench_clip(str(int8_bundle), [1], ["int8"], backend="ort-cpu", warmup=0, iters=1, peer=True)
    assert not any(r["backend"] == ORT_DYNAMIC for r in res["rows"])
    assert any("quantize_dynamic peer skipped: it quantises the fp32 image graph" in n for n in res["notes"])
