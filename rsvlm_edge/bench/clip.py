"""CLIP bench: latency / throughput of image encoding per batch size and precision, with open_clip
(torch) on the same machine in the same run as the peer: fp32 on the CPU always, and fp16 on CUDA
when torch sees a GPU (else a note says why it was skipped); and, when an fp32 image graph is benched,
onnxruntime's ``quantize_dynamic`` INT8 of that same graph on the CPU (what a user gets from
onnxruntime by hand: ``speedup_vs_ort_dynamic``). Every row names its backend and the provider that
actually ran (onnxruntime's execution provider, or the TensorRT version and precision)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..builtin import RANDOM_WEIGHTS_NOTE, builtin_clip_bundle, builtin_name, is_builtin
from ..progress import progress
from ..synthetic import synthetic_rs_images
from .timing import device_line, peak_rss_mb, reset_peak_rss, time_fn


def vit_image_gflop(model: dict[str, Any]) -> float:
    """Multiply-add FLOPs (x2) of one image through the CLIP vision tower, in GFLOP."""
    w, s, p = model["vision_width"], model["image_size"], model["patch_size"]
    n = (s // p) ** 2 + 1
    mlp = model["vision_mlp_ratio"] * w
    per_layer = 2 * n * w * 3 * w + 2 * 2 * n * n * w + 2 * n * w * w + 2 * 2 * n * w * mlp
    total = 2 * (n - 1) * 3 * p * p * w + model["vision_layers"] * per_layer + 2 * w * model["embed_dim"]
    return total / 1e9


TORCH_CPU, TORCH_CUDA = "torch cpu", "torch cuda"
ORT_DYNAMIC = "onnxruntime quantize_dynamic"  # the peer's backend name; its provider: CPUExecutionProvider


def _row(backend: str, provider: str, precision: str, batch: int, secs: np.ndarray, gflop: float) -> dict[str, Any]:
    p50, p90, p99 = (float(np.percentile(secs, q)) * 1e3 for q in (50, 90, 99))
    ips = batch / float(np.mean(secs))
    return {"backend": backend, "provider": provider, "precision": precision, "batch": batch, "p50_ms": p50,
            "p90_ms": p90, "p99_ms": p99, "images_per_s": ips, "gflop_per_s": ips * gflop, "peak_rss_mb": peak_rss_mb()}


def runtime_provider(rt: Any) -> str:
    """What runs a CLIP runtime's image graph: onnxruntime's execution provider that actually loaded
    (``session.get_providers()[0]``), or the TensorRT version and engine precision."""
    graph = getattr(rt, "_image", None)
    return str(getattr(graph, "provider", None) or rt.backend)


def bench_clip(target: str, batches: list[int], precisions: list[str], backend: str = "auto",
               warmup: int = 3, iters: int = 10, peer: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Bench image encoding of a CLIP bundle (or each precision of a built-in model). ``backend``: one
    preference, or several separated by ``;`` (e.g. ``graph=ort-cpu;graph=native-vit``): every bundle
    runs under each, in one process, so their rows compare directly; a bundle a backend cannot run is
    noted and skipped."""
    import rsvlm_edge
    from rsvlm_edge.errors import BackendError

    notes: list[str] = []
    if is_builtin(target):
        name = builtin_name(target)
        bundles = [(p, builtin_clip_bundle(name, p)) for p in precisions]
        notes.append(RANDOM_WEIGHTS_NOTE)
    else:  # one bundle, or several separated by commas (e.g. the fp32 and int8 exports of one model)
        bundles = [(None, Path(t)) for t in target.split(",") if t]
    rows: list[dict[str, Any]] = []
    model_cfg: dict[str, Any] = {}
    fp32_graph: Path | None = None
    preferences = [p.strip() for p in backend.split(";") if p.strip()] or ["auto"]
    with progress() as bar:
        task = bar.add_task("benchmarking", total=len(bundles) * len(preferences) * len(batches)
                            + (3 * len(batches) if peer else 0))
        for path, pref in ((path, pref) for _, path in bundles for pref in preferences):
            reset_peak_rss()  # peak RSS per row = loading this bundle + running up to this batch
            try:
                rt = rsvlm_edge.load(path, backend=pref, threads=threads)
            except BackendError as e:
                notes.append(f"{path.name} under --backend {pref}: skipped ({e.message})")
                bar.advance(task, len(batches))
                continue
            model_cfg = rt.bundle.model.model_dump()
            prec = rt.bundle.manifest.parts["image"].precision
            if prec == "fp32":
                fp32_graph = rt.bundle.file(rt.bundle.manifest.parts["image"].file)
            gflop = vit_image_gflop(model_cfg)
            for b in batches:
                bar.update(task, description=f"{rt.backend} {prec} batch {b}")
                px = synthetic_rs_images(b, rt.image_size, seed=b)
                rows.append(_row(rt.backend, runtime_provider(rt), prec, b,
                                 time_fn(lambda: rt.encode_images(px), warmup, iters), gflop))
                bar.advance(task)
        if peer:
            rows += _peer_open_clip(bundles[0][1], batches, warmup, iters, threads, bar, task)
            cuda_rows, why = _peer_open_clip_cuda(bundles[0][1], batches, warmup, iters, bar, task)
            rows += cuda_rows
            if why:
                notes.append(f"open_clip torch fp16 CUDA peer skipped: {why}")
            ort_rows, why = _peer_ort_dynamic(fp32_graph, vit_image_gflop(model_cfg), batches, warmup, iters, threads,
                                              bar, task)
            rows += ort_rows
            if why:
                notes.append(f"onnxruntime quantize_dynamic peer skipped: {why}")
    for key, backend_name, provider in (("speedup_vs_open_clip", "open_clip", TORCH_CPU),
                                        ("speedup_vs_open_clip_cuda", "open_clip", TORCH_CUDA),
                                        ("speedup_vs_ort_dynamic", ORT_DYNAMIC, None)):
        base = {r["batch"]: r["images_per_s"] for r in rows
                if r["backend"] == backend_name and (provider is None or r["provider"] == provider)}
        if base:
            for r in rows:
                r[key] = r["images_per_s"] / base[r["batch"]] if r["batch"] in base else None
    return {"kind": "clip", "target": target, "model": model_cfg.get("name", "?"), "device": device_line(threads),
            "rsvlm_edge": __version__, "date": time.strftime("%Y-%m-%d"), "warmup": warmup, "iters": iters,
            "gflop_per_image": vit_image_gflop(model_cfg) if model_cfg else None, "notes": notes, "rows": rows}


def _peer_ort_dynamic(fp32_graph: Path | None, gflop: float, batches: list[int], warmup: int, iters: int,
                      threads: int | None, bar, task) -> tuple[list[dict[str, Any]], str]:
    """onnxruntime's ``quantize_dynamic`` (int8 weights, activations quantised per call; its defaults)
    of the benched fp32 image graph, on the CPU provider with ORT_ENABLE_ALL and the same thread count:
    (rows, "") or ([], why it was skipped)."""
    if fp32_graph is None:
        bar.advance(task, len(batches))
        return [], "it quantises the fp32 image graph: bench the fp32 precision too (--precision fp32,int8)"
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rows = []
    with tempfile.TemporaryDirectory(prefix="rsvlm-ort-dynamic-") as tmp:
        dst = Path(tmp) / "image.dynamic.onnx"
        bar.update(task, description="onnxruntime quantize_dynamic")
        quantize_dynamic(str(fp32_graph), str(dst), weight_type=QuantType.QInt8)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(dst), opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        size = int(inp.shape[1])
        reset_peak_rss()
        for bs in batches:
            bar.update(task, description=f"onnxruntime quantize_dynamic batch {bs}")
            feed = {inp.name: synthetic_rs_images(bs, size, seed=bs)}
            rows.append(_row(ORT_DYNAMIC, sess.get_providers()[0], "int8-dynamic", bs,
                             time_fn(lambda: sess.run(None, feed), warmup, iters), gflop))
            bar.advance(task)
    return rows, ""


def _peer_open_clip(bundle_path: Path, batches: list[int], warmup: int, iters: int, threads: int | None,
                    bar, task) -> list[dict[str, Any]]:
    """open_clip fp32 in torch on the CPU, same weights (rebuilt from the bundle's checkpoint)."""
    try:
        import torch

        from ..bundle import open_bundle
        from ..export.clip import torch_encoders
        from ..export.clip_checkpoint import build_open_clip, load_clip_checkpoint
    except ImportError:
        return []
    b = open_bundle(bundle_path, verify=False)
    src = Path(b.manifest.source.checkpoint)
    if not src.exists():
        return []
    if threads:
        torch.set_num_threads(threads)
    reset_peak_rss()
    ckpt = load_clip_checkpoint(src, activation=b.model.activation)
    image_enc, _ = torch_encoders(build_open_clip(ckpt), ckpt.config)
    del ckpt
    gflop = vit_image_gflop(b.model.model_dump())
    rows = []
    with torch.inference_mode():
        for bs in batches:
            bar.update(task, description=f"open_clip torch fp32 batch {bs}")
            px = torch.from_numpy(synthetic_rs_images(bs, b.model.image_size, seed=bs))
            rows.append(_row("open_clip", TORCH_CPU, "fp32", bs, time_fn(lambda: image_enc(px), warmup, iters), gflop))
            bar.advance(task)
    return rows


def _peer_open_clip_cuda(bundle_path: Path, batches: list[int], warmup: int, iters: int,
                         bar, task) -> tuple[list[dict[str, Any]], str]:
    """open_clip fp16 on the GPU (same weights; uint8 pixels copied from the host and normalised on
    the GPU, synchronised per call): (rows, "") or ([], why it was skipped)."""
    try:
        import torch

        from ..bundle import open_bundle
        from ..export.clip_checkpoint import build_open_clip, load_clip_checkpoint
        from ..images import OPENAI_MEAN, OPENAI_STD
    except ImportError as e:
        bar.advance(task, len(batches))
        return [], f"torch / open_clip are not installed ({e})"
    if not torch.cuda.is_available():
        bar.advance(task, len(batches))
        return [], "no CUDA device (torch.cuda.is_available() is False)"
    b = open_bundle(bundle_path, verify=False)
    src = Path(b.manifest.source.checkpoint)
    if not src.exists():
        bar.advance(task, len(batches))
        return [], f"the bundle's source checkpoint '{src}' is not on this machine"
    ckpt = load_clip_checkpoint(src, activation=b.model.activation)
    dev = torch.device("cuda")
    model = build_open_clip(ckpt).half().to(dev).eval()
    del ckpt
    mean = torch.tensor(OPENAI_MEAN, device=dev, dtype=torch.float16).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=dev, dtype=torch.float16).view(1, 3, 1, 1)

    def encode(px: torch.Tensor) -> None:
        x = px.to(dev, non_blocking=False).permute(0, 3, 1, 2).half() / 255.0
        model.encode_image((x - mean) / std)
        torch.cuda.synchronize()

    gflop = vit_image_gflop(b.model.model_dump())
    rows = []
    with torch.inference_mode():
        for bs in batches:
            bar.update(task, description=f"open_clip torch fp16 cuda batch {bs}")
            px = torch.from_numpy(synthetic_rs_images(bs, b.model.image_size, seed=bs))
            rows.append(_row("open_clip", TORCH_CUDA, "fp16", bs, time_fn(lambda: encode(px), warmup, iters), gflop))
            bar.advance(task)
    return rows, ""


