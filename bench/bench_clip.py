#!/usr/bin/env python3
"""CLIP image-encoding sweep: rsvlm-edge (onnxruntime, per precision) vs open_clip (torch fp32) on the
same weights in the same process. Writes JSON (+ optional PNG) and prints a markdown table for
bench/RESULTS.md.

    python bench/bench_clip.py --target builtin:remoteclip-vit-b-32 --batch 1,8,32 --precision fp32,int8 \
        --json bench/out/clip_cpu.json --plot bench/out/clip_cpu.png
    python bench/bench_clip.py --backend 'graph=ort-cpu;graph=native-vit' ...   # both CPU image backends
"""

from __future__ import annotations

import argparse

from benchlib import add_output_args, ratio_cell, run_sweep, with_notes

from rsvlm_edge.bench.clip import bench_clip


def markdown(result: dict) -> str:
    lines = [f"{result['model']} on {result['device']}, {result['date']}, rsvlm-edge {result['rsvlm_edge']}, "
             f"warm-up {result['warmup']}, {result['iters']} timed iterations per point; "
             f"{result['gflop_per_image']:.2f} GFLOP/image.", "",
             "| backend | precision | batch | p50 ms | p90 ms | p99 ms | img/s | GFLOP/s | vs open_clip | "
             "vs ORT quantize_dynamic | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['images_per_s']:.1f} | {r['gflop_per_s']:.1f} | "
                     f"{ratio_cell(r.get('speedup_vs_open_clip'))} | {ratio_cell(r.get('speedup_vs_ort_dynamic'))} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return with_notes(lines, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="builtin:remoteclip-vit-b-32")
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--precision", default="fp32,int8")
    ap.add_argument("--backend", default="auto",
                    help="backend preference; several separated by ';' run in the same process, e.g. "
                         "'graph=ort-cpu;graph=native-vit'")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    add_output_args(ap)
    a = ap.parse_args()
    run_sweep(a, lambda: bench_clip(a.target, [int(x) for x in a.batch.split(",")], a.precision.split(","),
                                    backend=a.backend, warmup=a.warmup, iters=a.iters, threads=a.threads),
              markdown)


if __name__ == "__main__":
    main()
