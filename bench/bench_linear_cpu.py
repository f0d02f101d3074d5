#!/usr/bin/env python3
"""Time the CPU linear layer (rsvlm_edge._C.linear) with fp32, fp16 and int8 weights.

Default shape: a TinyLlama-1.1B gate/up projection over a 622-token prompt (M=622, K=2048,
N=5632: the GEMM path) and the same layer for one decode token (M=1: the GEMV path). numpy's BLAS
(x @ W.T, fp32 weights) is timed on the same shapes as the reference. Prints ms (median of --iters
after one warm-up), GFLOP/s (2*M*N*K / time) and, for the GEMV rows, weight GB/s (bytes of W / time).

    PYTHONPATH=$PWD python bench/bench_linear_cpu.py
    PYTHONPATH=$PWD python bench/bench_linear_cpu.py --m 1 8 622 --kernels portable
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np

from rsvlm_edge import _C
from rsvlm_edge.bench.timing import median, time_fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, nargs="+", default=[622, 1])
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--n", type=int, default=5632)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--kernels", default="auto", help="auto | avx2 | portable (builds that have _C.set_cpu_kernels)")
    a = ap.parse_args()
    kernels = _C.set_cpu_kernels(a.kernels) if hasattr(_C, "set_cpu_kernels") else "(build without set_cpu_kernels)"
    rng = np.random.default_rng(0)
    w32 = (rng.standard_normal((a.n, a.k), dtype=np.float32) * a.k**-0.5).astype(np.float32)
    weights = {"fp32": (w32, {}), "fp16": (w32.astype(np.float16), {})}
    w8, scale = _C.quantize_weight_int8(w32)
    weights["int8"] = (w8, {"w_scale": scale})
    print(f"# linear K={a.k} N={a.n} on {platform.machine()} ({os.cpu_count()} cores), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, kernels: {kernels}")
    print("| M | weights | impl | ms | GFLOP/s | weight GB/s |")
    print("|---:|---|---|---:|---:|---:|")
    for m in a.m:
        x = rng.standard_normal((m, a.k), dtype=np.float32)
        flop = 2.0 * m * a.n * a.k
        rows = []
        for name, (w, kw) in weights.items():
            try:
                _C.linear(x[:1], w, **kw)
            except ValueError as e:  # e.g. fp16 weights on a build without them
                print(f"| {m} | {name} | rsvlm _C.linear | unsupported: {str(e)[:60]} | | |")
                continue
            rows.append((name, "rsvlm _C.linear", w.nbytes, lambda w=w, kw=kw: _C.linear(x, w, **kw)))
        # BLAS last: OpenBLAS threads keep spinning for a while after a call and would steal the
        # cores from the next OpenMP region on a small machine.
        rows.append(("fp32", "numpy BLAS", w32.nbytes, lambda: x @ w32.T))
        for name, impl, nbytes, fn in rows:
            t = median(time_fn(fn, 1, a.iters))  # one warm-up call
            gbs = f"{nbytes / t / 1e9:.1f}" if m <= 8 else ""
            print(f"| {m} | {name} | {impl} | {t * 1e3:.2f} | {flop / t / 1e9:.1f} | {gbs} |")


if __name__ == "__main__":
    main()
