#!/usr/bin/env python3
"""VLM sweep: rsvlm-edge (vision in onnxruntime, decoder on the native kernels or numpy) vs
transformers `generate` (torch fp32 eager) on the same weights in the same process. Reports vision
encode ms, time to first token, decode tok/s per batch size and peak memory; writes JSON (+ PNG)
and prints a markdown table for bench/RESULTS.md.

    python bench/bench_vlm.py --target builtin:tinyllava-1b --batch 1,8 --json bench/out/vlm_cpu.json

The builtin model has seeded random weights: timing only. `weights GB/s` is the decoder weight
traffic decode achieved; `% of bandwidth floor` compares it with this machine's weight-streaming
bandwidth measured in the same run (a BLAS GEMV over a 256 MiB matrix): 100% = decode as fast as
reading the weights once per step allows. On a shared machine both vary from run to run.
"""

from __future__ import annotations

import argparse

from benchlib import add_output_args, ratio_cell, run_sweep, with_notes

from rsvlm_edge.bench.llava import bench_vlm


def _num(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def markdown(result: dict) -> str:
    lines = [
        f"{result['model']} on {result['device']}, {result['date']}, rsvlm-edge {result['rsvlm_edge']}, "
        f"warm-up {result['warmup']}, {result['iters']} timed runs per point (median), "
        f"{result['max_new_tokens']} new tokens.",
        "",
        "| backend | precision | batch | prompt tok | vision ms | TTFT ms | decode tok/s | weights GB/s | % of bandwidth floor | vs transformers (decode) | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['prompt_tokens']} | {_num(r.get('vision_ms'), '.1f')} | "
            f"{r['ttft_ms']:.1f} | {r['decode_tok_s']:.1f} | {_num(r.get('weights_gb_s'), '.2f')} | "
            f"{_num(r.get('bandwidth_floor_pct'), '.0f')} | "
            f"{ratio_cell(r.get('decode_vs_peer'))} | {r['peak_rss_mb']:.0f} |"
        )
    return with_notes(lines, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="builtin:tinyllava-1b", help="bundle path or builtin:tinyllava-1b")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--backend", default="auto", help="auto | native | numpy | cpu")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--no-peer", action="store_true", help="skip timing transformers")
    add_output_args(ap)
    a = ap.parse_args()
    run_sweep(a, lambda: bench_vlm(a.target, [int(x) for x in a.batch.split(",")], warmup=a.warmup, iters=a.iters,
                                   max_new_tokens=a.max_new_tokens, backend=a.backend, peer=not a.no_peer,
                                   progress=lambda msg: print(f"[bench] {msg}", flush=True)),
              markdown)


if __name__ == "__main__":
    main()
