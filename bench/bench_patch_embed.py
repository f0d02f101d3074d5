"""Benchmark the fused patch embedding (rsvlm_edge._C.patch_embed) against torch on the same device.

Torch baseline = what open_clip does from uint8 images: permute + float + normalise + conv2d +
cat class token + add position embedding (+ layer_norm for ln_pre), in the same dtype.
Shapes: ViT-B/32 @ 224 (D=768, P=32, 7x7 grid) and ViT-L/14 @ 336 (D=1024, P=14, 24x24 grid).

Prints ms, img/s, achieved TFLOP/s (GEMM flops 2*B*N*3P^2*D) and, on CUDA, % of the 768 TFLOP/s
bf16 H100 roofline; writes all rows to JSON. Runs on CPU (fp32) and on CUDA when available.

  python bench/bench_patch_embed.py --device cpu --batches 1,2,4
  python bench/bench_patch_embed.py --device cuda --dtype bfloat16          # batches 1..256
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from rsvlm_edge import native
from rsvlm_edge.bench import timing

ROOFLINE_TFLOPS = 768.0  # bf16 dense GEMM, H100 (design.md "Numbers to beat")
MODELS = {  # name: (image size, patch, width)
    "vit-b-32@224": (224, 32, 768),
    "vit-l-14@336": (336, 14, 1024),
}


def make_params(size, patch, dim, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = (size // patch) ** 2
    k = 3 * patch * patch
    p = {
        "weight": torch.randn(dim, 3, patch, patch, generator=g) / k**0.5,
        "class_emb": torch.randn(dim, generator=g) * 0.02,
        "pos_emb": torch.randn(n + 1, dim, generator=g) * 0.02,
        "ln_gamma": 1 + 0.1 * torch.randn(dim, generator=g),
        "ln_beta": 0.1 * torch.randn(dim, generator=g),
    }
    return {name: t.to(device=device, dtype=dtype) for name, t in p.items()}


def torch_patch_embed(images, p, mean, std):
    """open_clip's front end from uint8 NHWC images, in the parameters' dtype."""
    x = images.permute(0, 3, 1, 2).to(p["weight"].dtype) / 255.0
    x = (x - mean) / std
    x = F.conv2d(x, p["weight"], stride=p["weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = p["class_emb"].view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + p["pos_emb"]
    return F.layer_norm(x, (x.shape[-1],), p["ln_gamma"], p["ln_beta"], 1e-5)


def time_fn(fn, device, warmup, iters):
    """Median milliseconds per call."""
    if device.type != "cuda":
        return timing.median(timing.time_fn(fn, warmup, iters)) * 1e3
    return timing.cuda_event_ms(fn, warmup, iters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                    help="parameter/output dtype (CPU: float32 only; CUDA default bfloat16)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of " + ", ".join(MODELS))
    ap.add_argument("--batches", default=None, help="comma list (default CPU 1,2,4; CUDA 1,2,4,...,256)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", default=None, help="output JSON (default bench/out/patch_embed_<device>.json)")
    args = ap.parse_args()

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not native.built_with_cuda():
        raise SystemExit("rsvlm_edge._C was built without CUDA; rebuild with nvcc (scripts/dev-build.sh)")
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if device.type == "cpu" and dtype_name != "float32":
        raise SystemExit("the CPU op is float32 only")
    dtype = getattr(torch, dtype_name)
    default_batches = "1,2,4,8,16,32,64,128,256" if device.type == "cuda" else "1,2,4"
    batches = [int(b) for b in (args.batches or default_batches).split(",")]
    mean = torch.tensor(native.CLIP_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(native.CLIP_STD, device=device, dtype=dtype).view(1, 3, 1, 1)
    torch.set_grad_enabled(False)

    rows = []
    hdr = f"{'model':14} {'batch':>5} {'impl':6} {'ms':>9} {'img/s':>10} {'TFLOP/s':>8} {'roofline%':>9} {'max|diff|':>9}"
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}) "
          f"dtype={dtype_name} threads={torch.get_num_threads()}")
    print(hdr)
    for model in args.models.split(","):
        size, patch, dim = MODELS[model]
        p = make_params(size, patch, dim, device, dtype)
        n = (size // patch) ** 2
        for b in batches:
            g = torch.Generator().manual_seed(b)
            images = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=g).to(device)
            out = torch.empty(b, n + 1, dim, device=device, dtype=dtype)

            def ours():
                native.patch_embed(images, p["weight"], p["class_emb"], p["pos_emb"], ln_gamma=p["ln_gamma"],
                                   ln_beta=p["ln_beta"], out=out,
                                   stream=torch.cuda.current_stream().cuda_stream if device.type == "cuda" else 0)

            def theirs():
                return torch_patch_embed(images, p, mean, std)

            ours()
            diff = float((out.float() - theirs().float()).abs().max())
            flops = 2.0 * b * n * 3 * patch * patch * dim
            for impl, fn in (("ours", ours), ("torch", theirs)):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                ms = time_fn(fn, device, args.warmup, args.iters)
                tflops = flops / (ms * 1e-3) / 1e12
                row = {
                    "model": model, "batch": b, "impl": impl, "device": str(device), "dtype": dtype_name,
                    "ms": ms, "img_per_s": b / (ms * 1e-3), "tflops": tflops,
                    "roofline_pct": 100 * tflops / ROOFLINE_TFLOPS if device.type == "cuda" else None,
                    "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
                    "max_abs_diff_vs_torch": diff,
                }
                rows.append(row)
                roof = f"{row['roofline_pct']:9.2f}" if row["roofline_pct"] is not None else f"{'n/a':>9}"
                print(f"{model:14} {b:5d} {impl:6} {ms:9.3f} {row['img_per_s']:10.1f} {tflops:8.3f} {roof} {diff:9.2e}")

    path = Path(args.json or Path(__file__).parent / "out" / f"patch_embed_{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "roofline_tflops": ROOFLINE_TFLOPS,
    }
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
