"""Benchmark decode attention over a KV cache (rsvlm_edge._C.attention_decode).

For each (context, batch, H_kv) the cache holds `context` tokens per sequence; one decode step reads
all of K and V once, so achieved bandwidth = bytes of K/V (+ int8 scales) / time, reported against
a roofline (default 3.0 TB/s, the H100 copy bandwidth of the design doc; pass --peak-gbs for
another device). A torch SDPA decode step on the same shapes is timed as the peer when torch is
installed. Writes JSON (one record per configuration) and prints a table.

    python bench/bench_kv_attention.py --device cuda --out bench/out/kv_attention_cuda.json
    python bench/bench_kv_attention.py --device cpu --batches 1 4 --max-cache-gib 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from rsvlm_edge.bench.timing import median, time_fn


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    ap.add_argument("--contexts", type=int, nargs="+", default=[608, 2048, 8192])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, nargs="+", default=[32, 8])
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16", help="CUDA activation dtype")
    ap.add_argument("--int8", action="store_true", help="also time the int8 KV cache")
    ap.add_argument("--paged", action="store_true", help="use a paged cache (shuffled page table)")
    ap.add_argument("--num-splits", type=int, default=0, help="CUDA split-KV chunks (0 = automatic)")
    ap.add_argument("--max-cache-gib", type=float, default=None,
                    help="skip configurations whose K+V cache exceeds this (default 2 on CPU, 40 on CUDA)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 5 CPU, 100 CUDA)")
    ap.add_argument("--peak-gbs", type=float, default=3000.0, help="roofline bandwidth in GB/s")
    ap.add_argument("--no-peer", action="store_true", help="skip the torch SDPA peer")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    return ap.parse_args(argv)


def cache_bytes(batch, ctx, h_kv, d, elem_bytes, int8):
    kv = 2 * batch * ctx * h_kv * d * (1 if int8 else elem_bytes)
    return kv + (2 * batch * ctx * h_kv * 4 if int8 else 0)


def make_page_table(batch, ctx, rng):
    per_seq = -(-ctx // 16)
    return rng.permutation(batch * per_seq).reshape(batch, per_seq).astype(np.int32), batch * per_seq


def bench_cpu(C, args, batch, ctx, h_kv, int8, rng):
    d, h = args.head_dim, args.heads
    if args.paged:
        table, pages = make_page_table(batch, ctx, rng)
        shape = (pages, h_kv, 16, d)
    else:
        table, shape = None, (batch, h_kv, ctx, d)
    k = rng.standard_normal(shape, dtype=np.float32)
    v = rng.standard_normal(shape, dtype=np.float32)
    extra = {}
    if int8:
        ks = (np.abs(k).max(-1) / 127).astype(np.float32)
        vs = (np.abs(v).max(-1) / 127).astype(np.float32)
        k = np.round(k / ks[..., None]).astype(np.int8)
        v = np.round(v / vs[..., None]).astype(np.int8)
        extra = dict(k_scale=ks, v_scale=vs)
    q = rng.standard_normal((batch, h, d), dtype=np.float32)
    out = np.empty_like(q)
    lens = np.full(batch, ctx, np.int32)

    def step():
        C.attention_decode(q, k, v, lens, out=out, page_table=table, **extra)

    iters = args.iters or 5
    t = time_step(step, "cpu", iters)
    peer = None
    if not args.no_peer and not int8 and not args.paged:
        peer = torch_peer(args, q, k, v, "cpu", iters)
    return t, peer


def torch_peer(args, q, k, v, device, iters):
    """Median seconds of one torch SDPA decode step (q (B, H, 1, D) over K/V (B, H_kv, ctx, D))."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    tq = torch.as_tensor(q).unsqueeze(2).to(device)
    tk = torch.as_tensor(k).to(device)
    tv = torch.as_tensor(v).to(device)

    def step():
        return F.scaled_dot_product_attention(tq, tk, tv, enable_gqa=tq.shape[1] != tk.shape[1])

    return time_step(step, device, iters)


def time_step(fn, device, iters):
    """Seconds per call of ``fn`` after one warm-up call: CPU the median of ``iters`` calls, CUDA the
    mean over ``iters`` back-to-back calls between two CUDA events."""
    if device != "cuda":
        return median(time_fn(fn, 1, iters))
    import torch

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def peak_mem_mib(device):
    """CUDA: peak bytes torch allocated since the last reset (caches, q, out; the split-KV workspace
    comes from the CUDA memory pool and is not included). CPU: the process's peak RSS."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_cuda(C, args, batch, ctx, h_kv, int8, rng):
    import torch

    torch.cuda.reset_peak_memory_stats()
    dtype = getattr(torch, args.dtype)
    d, h = args.head_dim, args.heads
    gen = torch.Generator(device="cuda").manual_seed(0)
    if args.paged:
        table_np, pages = make_page_table(batch, ctx, rng)
        table = torch.from_numpy(table_np).cuda()
        shape = (pages, h_kv, 16, d)
    else:
        table, shape = None, (batch, h_kv, ctx, d)
    extra = {}
    if int8:
        k = torch.randint(-127, 128, shape, dtype=torch.int8, device="cuda", generator=gen)
        v = torch.randint(-127, 128, shape, dtype=torch.int8, device="cuda", generator=gen)
        extra = dict(k_scale=torch.full(shape[:3], 0.01, device="cuda"),
                     v_scale=torch.full(shape[:3], 0.01, device="cuda"))
    else:
        k = torch.randn(shape, dtype=dtype, device="cuda", generator=gen)
        v = torch.randn(shape, dtype=dtype, device="cuda", generator=gen)
    q = torch.randn((batch, h, d), dtype=dtype, device="cuda", generator=gen)
    out = torch.empty_like(q)
    lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    iters = args.iters or 100

    def step():
        C.attention_decode(q, k, v, lens, out=out, page_table=table, num_splits=args.num_splits, **extra)

    t = time_step(step, "cuda", iters)
    peer = None
    if not args.no_peer and not int8 and not args.paged:
        import torch.nn.functional as F

        tq = q.unsqueeze(2)
        peer = time_step(lambda: F.scaled_dot_product_attention(tq, k, v, enable_gqa=h != h_kv), "cuda", iters)
    return t, peer


def main(argv=None):
    args = parse_args(argv)
    import rsvlm_edge._C as C

    device = args.device
    if device == "auto":
        device = "cpu"
        if C.built_with_cuda():
            try:
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            except ImportError:
                pass
    if device == "cuda" and not C.built_with_cuda():
        sys.exit("rsvlm_edge was built without CUDA kernels; rebuild with RSVLM_CUDA=ON")
    max_gib = args.max_cache_gib if args.max_cache_gib is not None else (2.0 if device == "cpu" else 40.0)
    elem = 4 if device == "cpu" else 2
    dev_name = platform.processor() or platform.machine()
    if device == "cuda":
        import torch

        dev_name = torch.cuda.get_device_name()
    rng = np.random.default_rng(0)
    records = []
    print(f"decode attention on {device} ({dev_name}), H={args.heads}, D={args.head_dim}, "
          f"{'paged' if args.paged else 'contiguous'} cache, roofline {args.peak_gbs:.0f} GB/s")
    print(f"{'kv':>5} {'ctx':>6} {'batch':>5} {'h_kv':>4} {'ms':>9} {'GB/s':>8} {'%roof':>6} {'peer ms':>9} {'x peer':>7} {'peak MiB':>9}")
    for int8 in ([False, True] if args.int8 else [False]):
        for h_kv in args.kv_heads:
            for ctx in args.contexts:
                for batch in args.batches:
                    nbytes = cache_bytes(batch, ctx, h_kv, args.head_dim, elem, int8)
                    if nbytes > max_gib * 2**30:
                        continue
                    fn = bench_cpu if device == "cpu" else bench_cuda
                    t, peer = fn(C, args, batch, ctx, h_kv, int8, rng)
                    gbs = nbytes / t / 1e9
                    rec = dict(op="attention_decode", device=device, device_name=dev_name,
                               kv_dtype="int8" if int8 else ("float32" if device == "cpu" else args.dtype),
                               paged=args.paged, context=ctx, batch=batch, heads=args.heads, kv_heads=h_kv,
                               head_dim=args.head_dim, ms=t * 1e3, kv_bytes=nbytes, gbs=gbs,
                               roofline_pct=100 * gbs / args.peak_gbs, peer="torch.sdpa" if peer else None,
                               peer_ms=peer * 1e3 if peer else None, speedup_vs_peer=(peer / t) if peer else None,
                               peak_mem_mib=peak_mem_mib(device))
                    records.append(rec)
                    peer_ms = f"{rec['peer_ms']:9.3f}" if peer else f"{'-':>9}"
                    ratio = f"{rec['speedup_vs_peer']:7.2f}" if peer else f"{'-':>7}"
                    print(f"{rec['kv_dtype'][:5]:>5} {ctx:>6} {batch:>5} {h_kv:>4} {t * 1e3:9.3f} {gbs:8.1f} "
                          f"{rec['roofline_pct']:6.1f} {peer_ms} {ratio} {rec['peak_mem_mib']:9.0f}")
    result = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=device,
                  device_name=dev_name, peak_gbs=args.peak_gbs, records=records)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
