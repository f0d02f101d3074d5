"""Benchmark the CUDA linear / qlinear kernels at decode shapes against the measured copy bandwidth.

A decode step is a chain of GEMVs: every weight byte is read once per token, so the ceiling is the
device's memory bandwidth. This script measures that ceiling first (a device-to-device copy through
torch, counting bytes read + written), then times rsvlm_edge._C.linear (fp16 weights) and
rsvlm_edge._C.qlinear (w8 per-channel, w4 groups of 128) at the TinyLlama-1.1B linear shapes for
M = 1 and 8 rows, and the cuBLAS fp16 GEMM (torch.nn.functional.linear) as the peer on the same
shapes. Reports GB/s of weight bytes and % of the copy bandwidth. Needs torch with CUDA.

    python bench/bench_gemv_cuda.py --json bench/out/gemv_cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from rsvlm_edge.bench.timing import cuda_event_ms

# (name, N out, K in) of one TinyLlama-1.1B layer and its lm_head.
SHAPES = [("q/o_proj", 2048, 2048), ("k/v_proj", 256, 2048), ("gate/up_proj", 5632, 2048),
          ("down_proj", 2048, 5632), ("lm_head", 32000, 2048)]


def graph_time_ms(torch, fn, calls: int = 20, iters: int = 20) -> float | None:
    """Per-call device time (ms) of fn(stream) replayed from a CUDA graph of `calls` calls, so that
    the Python binding's per-call host cost (tens of microseconds) does not hide the kernel; None
    when capture fails."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(side.cuda_stream)  # warm-up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            stream = torch.cuda.current_stream().cuda_stream
            for _ in range(calls):
                fn(stream)
        return cuda_event_ms(graph.replay, 5, iters) / calls
    except Exception as e:  # reported as host-bound timings only
        print(f"graph capture failed ({type(e).__name__}: {e}); timings are per Python call", flush=True)
        return None


def copy_bandwidth_gbs(torch, gib: float = 1.0, iters: int = 20) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second, GB/s)."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_event_ms(lambda: dst.copy_(src), 5, iters)
    return 2 * n * 2 / (ms * 1e-3) / 1e9


def weights(torch, fmt: str, n: int, k: int, gen):
    """(w, w_scale, bytes) on the GPU for format fp16 | w8 | w4 (random bits: speed only)."""
    if fmt == "fp16":
        w = torch.randn((n, k), dtype=torch.float16, device="cuda", generator=gen) * 0.02
        return w, None, w.numel() * 2
    if fmt == "w8":
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda", generator=gen)
        s = torch.full((n, 1), 1e-3, device="cuda")
    else:
        w = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
        s = torch.full((n, k // 128), 1e-3, device="cuda")
    return w, s, w.numel() + s.numel() * 4


def run(args: argparse.Namespace) -> dict:
    import torch

    import rsvlm_edge._C as C

    if not torch.cuda.is_available() or not C.built_with_cuda():
        raise SystemExit("error: needs a CUDA GPU and rsvlm_edge._C built with CUDA\n"
                         "fix: run on a GPU machine after RSVLM_CUDA=ON scripts/dev-build.sh")
    gen = torch.Generator(device="cuda").manual_seed(0)
    bw = copy_bandwidth_gbs(torch)
    rows = []
    for name, n, k in SHAPES:
        for m in args.rows:
            x = torch.randn((m, k), dtype=torch.float16, device="cuda", generator=gen)
            out = torch.empty((m, n), dtype=torch.float16, device="cuda")
            for fmt in args.formats:
                w, s, nbytes = weights(torch, fmt, n, k, gen)
                if fmt == "fp16":
                    ours = lambda st=0, x=x, w=w, out=out: C.linear(x, w, None, out=out, stream=st)  # noqa: E731
                else:
                    ours = lambda st=0, x=x, w=w, s=s, out=out: C.qlinear(x, w, s, None, out=out, stream=st)  # noqa: E731
                call_ms = cuda_event_ms(ours, 5, args.iters)
                kernel_ms = graph_time_ms(torch, ours)
                ms = kernel_ms if kernel_ms is not None else call_ms
                row = dict(shape=name, n=n, k=k, m=m, format=fmt, ms=ms, python_call_ms=call_ms,
                           timing="cuda-graph" if kernel_ms is not None else "python-call", weight_bytes=nbytes,
                           gbs=nbytes / (ms * 1e-3) / 1e9)
                row["pct_copy_bw"] = 100 * row["gbs"] / bw
                if fmt == "fp16":
                    peer = lambda st=0, x=x, w=w, out=out: torch.nn.functional.linear(x, w, out=out)  # noqa: E731
                    peer_ms = graph_time_ms(torch, peer) if kernel_ms is not None else cuda_event_ms(peer, 5, args.iters)
                    row.update(cublas_ms=peer_ms, vs_cublas=peer_ms / ms)
                rows.append(row)
                del w, s
    return dict(bench="gemv_cuda", date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                host=platform.node(), device=torch.cuda.get_device_name(), copy_bandwidth_gbs=bw,
                torch=torch.__version__, rows=rows)


def markdown(result: dict) -> str:
    timing = {r["timing"] for r in result["rows"]}
    lines = [f"GEMV on {result['device']}; copy bandwidth {result['copy_bandwidth_gbs']:.0f} GB/s (read + write); "
             f"ms = device time per call ({', '.join(sorted(timing))}: 20 calls replayed from one CUDA graph "
             "when capture works, else one Python call each).", "",
             "| shape (N x K) | M | weights | ms | GB/s | % copy bw | cuBLAS fp16 ms | ours / cuBLAS speed | ms per Python call |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        peer = f"{r['cublas_ms']:.4f} | {r['vs_cublas']:.2f}x" if "cublas_ms" in r else "— | —"
        lines.append(f"| {r['shape']} ({r['n']}x{r['k']}) | {r['m']} | {r['format']} | {r['ms']:.4f} | "
                     f"{r['gbs']:.0f} | {r['pct_copy_bw']:.0f} | {peer} | {r['python_call_ms']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8], help="activation rows M (batch)")
    ap.add_argument("--formats", nargs="+", default=["fp16", "w8", "w4"], choices=["fp16", "w8", "w4"])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--json", type=Path, default=Path("bench/out/gemv_cuda.json"))
    args = ap.parse_args(argv)
    result = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
