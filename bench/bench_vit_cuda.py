#!/usr/bin/env python3
"""Time the CLIP image tower on our CUDA kernels (graph backend ``cuda-vit``) against open_clip's own tower in
fp16 on the same GPU: same seeded weights, same pixels, one process.

The model (open_clip ``--arch``, seeded random weights: timing and agreement only) is exported with
``rsvlm-edge export clip --precision fp16`` into ``--workdir``; ours = ``ClipRuntime(bundle,
backend="cuda-vit")``'s image session, from uint8 pixels on the host to fp32 embeddings on the host (the
upload and the read-back included); the peer = ``model.half().cuda().encode_image`` of the same pixels
normalised on the device (torch.no_grad, synchronised), from a uint8 tensor already on the GPU. Per batch:
median ms of ``--iters`` after 3 warm-ups, images/s, ours / peer, and the cosine of ours to open_clip's fp32
embeddings (the accuracy gate of tests/test_cuda_vit.py is >= 0.999).

    python bench/bench_vit_cuda.py --json out/vit_cuda.json                  # ViT-B-32, batches 1, 8, 32
    python bench/bench_vit_cuda.py --arch ViT-L-14-336 --batches 1,8
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_export_memory import seeded_checkpoint  # noqa: E402
from benchlib import add_output_args, ratio_cell, run_sweep, with_notes  # noqa: E402

from rsvlm_edge.bench.timing import median, time_fn  # noqa: E402


def sweep(a: argparse.Namespace) -> dict:
    import open_clip
    import torch

    from rsvlm_edge.export.clip import export_clip, synthetic_rs_images
    from rsvlm_edge.images import OPENAI_MEAN, OPENAI_STD
    from rsvlm_edge.models.clip.runtime import ClipRuntime

    if not torch.cuda.is_available():
        raise SystemExit("bench_vit_cuda: needs a CUDA GPU (torch.cuda.is_available() is False)")
    batches = [int(b) for b in a.batches.split(",")]
    a.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = seeded_checkpoint(a.arch, a.workdir)
    bundle = export_clip(ckpt, a.workdir / f"{a.arch}-fp16.rsvlm", precision="fp16", activation="gelu",
                         max_batch=max(batches), overwrite=True)
    rt = ClipRuntime(bundle, backend="cuda-vit")
    if rt.backend != "cuda-vit":
        raise SystemExit(f"bench_vit_cuda: the image tower runs on {rt.backend}, not cuda-vit")
    session = rt._image
    size = session.size

    model = open_clip.create_model(a.arch)
    model.load_state_dict(torch.load(ckpt, map_location="cpu"))
    visual32 = model.visual.float().cuda().eval()
    import copy

    visual16 = copy.deepcopy(visual32).half()
    mean = torch.tensor(OPENAI_MEAN, device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device="cuda").view(1, 3, 1, 1)

    def peer(px_gpu: torch.Tensor, visual: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
        with torch.no_grad():
            x = ((px_gpu.permute(0, 3, 1, 2).float() / 255.0 - mean) / std).to(dtype)
            return visual(x)

    rows = []
    for b in batches:
        px = synthetic_rs_images(b, size, seed=b)
        px_gpu = torch.from_numpy(px).cuda()
        ours_fn = lambda: session.run({session.input_names[0]: px})[0]  # noqa: E731

        def peer_fn() -> None:
            peer(px_gpu, visual16, torch.float16)
            torch.cuda.synchronize()

        ours_s = median(list(time_fn(ours_fn, 3, a.iters)))
        peer_s = median(list(time_fn(peer_fn, 3, a.iters)))
        got = ours_fn()
        want = peer(px_gpu, visual32, torch.float32).cpu().numpy()
        cos = float(((got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)).min())
        rows.append({"batch": b, "ours_ms": ours_s * 1e3, "peer_ms": peer_s * 1e3, "ours_img_s": b / ours_s,
                     "peer_img_s": b / peer_s, "speedup_vs_peer": peer_s / ours_s, "min_cosine_vs_fp32": cos})
        print(f"batch {b}: ours {ours_s * 1e3:.2f} ms, open_clip fp16 {peer_s * 1e3:.2f} ms, cosine {cos:.6f}",
              flush=True)
    return {"bench": "vit_cuda", "arch": a.arch, "device": torch.cuda.get_device_name(), "rows": rows,
            "when": datetime.now(timezone.utc).isoformat(timespec="minutes"), "host": platform.node(),
            "notes": ["ours: uint8 pixels on the host -> fp32 embeddings on the host (upload and read-back "
                      "included); open_clip: uint8 pixels already on the GPU -> fp16 embeddings on the GPU",
                      "seeded random weights (timing and agreement only)"]}


def markdown(result: dict) -> str:
    lines = [f"CLIP {result['arch']} image tower on {result['device']} ({result['when']})", "",
             "| batch | ours ms | ours img/s | open_clip fp16 ms | open_clip img/s | ours / open_clip | cosine vs fp32 |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['batch']} | {r['ours_ms']:.2f} | {r['ours_img_s']:.1f} | {r['peer_ms']:.2f} | "
                     f"{r['peer_img_s']:.1f} | {ratio_cell(r['speedup_vs_peer'])} | {r['min_cosine_vs_fp32']:.6f} |")
    return with_notes(lines, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path("bench/out/vit_cuda"))
    add_output_args(ap)
    a = ap.parse_args()
    run_sweep(a, lambda: sweep(a), markdown)


if __name__ == "__main__":
    main()
