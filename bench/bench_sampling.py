#!/usr/bin/env python3
"""Time one nucleus (top-p) sampling step of the runtime: the numpy rule (backends/decoder_numpy.py: an fp64
softmax and a full argsort per row, what the runtime ran before) against the native op
(rsvlm_edge._C.top_p_sample: partial sorts of growing prefixes, the thread pool over rows) and, where a GPU is
visible and the extension has CUDA, the device op (CUB's segmented radix sort; logits already on the device,
as in CudaDecoder.decode_sample) timed with CUDA events.

Logits are seeded random with a spread (--scale) that sets how large the nucleus is: 3 (default) keeps a few
hundred of 32000 tokens at top_p 0.9, 0.3 keeps most of them. Every implementation runs the same rows and
draws; the bench checks they pick the same tokens. Blocks of --iters calls alternate between the
implementations for --rounds rounds; the table shows the median per call. Writes --json.

    PYTHONPATH=$PWD python bench/bench_sampling.py --batches 1 8 --json bench/out/sampling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def main() -> None:
    from rsvlm_edge import native
    from rsvlm_edge.backends.decoder_numpy import top_p_sample

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--scale", type=float, default=3.0, help="standard deviation of the logits")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path("bench/out/sampling.json"))
    args = ap.parse_args()
    C = native._c()
    torch = None
    if C.built_with_cuda() and C.cuda_device_count() > 0:
        import torch
    rows = []
    for batch in args.batches:
        rng = np.random.default_rng(batch)
        logits = (rng.standard_normal((batch, args.vocab)) * args.scale).astype(np.float32)
        u = rng.random(batch).astype(np.float32)
        impls = {
            "numpy": lambda: top_p_sample(logits, u.astype(np.float64), args.temperature, args.top_p),
            "native": lambda: C.top_p_sample(logits, u, args.temperature, args.top_p),
        }
        if torch is not None:
            dl, du = torch.from_numpy(logits).cuda(), torch.from_numpy(u).cuda()
            dout = torch.empty(batch, dtype=torch.int64, device="cuda")

            def cuda_call():
                C.top_p_sample(dl, du, args.temperature, args.top_p, out=dout,
                               stream=torch.cuda.current_stream().cuda_stream)
                torch.cuda.synchronize()
                return dout.cpu().numpy()

            impls["cuda"] = cuda_call
        picks = {name: np.asarray(fn()) for name, fn in impls.items()}
        agree = {name: bool((p == picks["numpy"]).all()) for name, p in picks.items()}
        times: dict[str, list[float]] = {name: [] for name in impls}
        for _ in range(args.rounds):
            for name, fn in impls.items():
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        nucleus = []
        for b in range(batch):
            z = logits[b].astype(np.float64) / args.temperature
            p = np.exp(z - z.max())
            p /= p.sum()
            nucleus.append(int(np.searchsorted(np.cumsum(np.sort(p)[::-1]), args.top_p) + 1))
        for name in impls:
            ms = 1e3 * statistics.median(times[name])
            rows.append(dict(impl=name, batch=batch, vocab=args.vocab, ms=ms,
                             speedup_vs_numpy=1e3 * statistics.median(times["numpy"]) / ms,
                             same_tokens_as_numpy=agree[name], nucleus_tokens=nucleus))
    result = dict(bench="sampling", host=platform.node(), processor=platform.processor(),
                  cpus=os.cpu_count(), omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                  temperature=args.temperature, top_p=args.top_p, scale=args.scale, rows=rows,
                  date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [f"Temperature {result['temperature']}, top_p {result['top_p']}, logits sd {result['scale']}.", "",
             "| impl | batch | V | ms / call | vs numpy | same tokens | nucleus sizes |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['impl']} | {r['batch']} | {r['vocab']} | {r['ms']:.3f} | {r['speedup_vs_numpy']:.2f}x | "
                     f"{r['same_tokens_as_numpy']} | {min(r['nucleus_tokens'])}-{max(r['nucleus_tokens'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
