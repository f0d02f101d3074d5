"""GPU conformance of the TensorRT and onnxruntime GPU backends: the same embeddings as the fp32 bundle
on onnxruntime's CPU provider (cosine >= 0.999 for fp16 engines, >= 0.99 for int8 ones).

Runs wherever ``tensorrt`` (with cuda-python or cupy) or ``onnxruntime-gpu`` and a GPU are present; each
case is skipped with the reason otherwise (and when onnxruntime silently fell back to the CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from clip_models import LABELS, cos, save_bare, tiny_open_clip, top1_agreement  # noqa: E402

import rsvlm_edge  # noqa: E402
from rsvlm_edge.backends import registry  # noqa: E402
from rsvlm_edge.export.clip import export_clip  # noqa: E402
from rsvlm_edge.synthetic import synthetic_rs_images  # noqa: E402

pytestmark = pytest.mark.cuda
EXPECTED_PROVIDER = {"ort-tensorrt": "TensorrtExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}
TEXTS = ["a satellite photo of an airport.", "a satellite photo of a forest.", "dense residential area", "river"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conformance")
    ckpt = save_bare(tiny_open_clip(seed=11), root / "m.pt")
    return {p: export_clip(ckpt, root / f"{p}.rsvlm", precision=p, max_batch=16).path for p in ("fp32", "int8")}


def _runtime(backend: str, precision: str, request, monkeypatch, tmp_path):
    """The runtime of the ``precision`` bundle on ``backend``; skips (before exporting anything) when
    the backend cannot run here."""
    monkeypatch.setenv("RSVLM_EDGE_CACHE", str(tmp_path / "cache"))
    probe = next(s for s in registry.all_backends("graph") if s.name == backend).check()
    if not probe.available:
        pytest.skip(f"{backend} cannot run here: {probe.why_not}")
    rt = rsvlm_edge.load(request.getfixturevalue("bundles")[precision], backend=backend)
    want = EXPECTED_PROVIDER.get(backend)
    if want and rt._image.provider != want:
        pytest.skip(f"{backend}: onnxruntime fell back to {rt._image.provider} (no usable GPU / TensorRT)")
    return rt


@pytest.mark.parametrize("backend", ["trt", "ort-tensorrt", "ort-cuda"])
@pytest.mark.parametrize("precision,gate", [("fp32", 0.999), ("int8", 0.99)])
def test_gpu_backend_gives_the_cpu_embeddings(request, backend, precision, gate, monkeypatch, tmp_path):
    rt = _runtime(backend, precision, request, monkeypatch, tmp_path)
    ref = rsvlm_edge.load(request.getfixturevalue("bundles")["fp32"], backend="ort-cpu")
    px = synthetic_rs_images(37, 64, seed=123)  # more than max_batch 16: split into three runs
    img = cos(rt.encode_images(px), ref.encode_images(px))
    txt = cos(rt.encode_texts(TEXTS), ref.encode_texts(TEXTS))
    assert img.min() >= gate, (backend, precision, float(img.min()))
    assert txt.min() >= 0.999, (backend, precision, float(txt.min()))
    assert top1_agreement(rt, ref, px) >= 0.95
    assert np.isfinite(rt.classify(px[:3], LABELS).probs).all()


def test_trt_engines_are_cached_and_reused(request, monkeypatch, tmp_path):
    rt = _runtime("trt", "fp32", request, monkeypatch, tmp_path)
    plan = rt._image.plan
    assert plan.is_file() and plan.with_name(plan.name + ".json").is_file()
    before = plan.stat().st_mtime_ns
    again = rsvlm_edge.load(request.getfixturevalue("bundles")["fp32"], backend="trt")
    assert again._image.plan == plan and plan.stat().st_mtime_ns == before
