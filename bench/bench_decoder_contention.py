#!/usr/bin/env python3
"""CPU decode on cores shared with other work: batch-1 decode tok/s of the TinyLlama-shape decoder
(bench_decoder_cpu.py's workload and worker) with 0, 2, 6 ... busy processes beside it, for each wait
policy of the kernels' thread pool (RSVLM_EDGE_THREAD_WAIT = auto / spin / passive).

Issue 12 asks that decode degrade in proportion, not collapse: with K busy processes on C cores and T
of our threads, a fair share of the machine is about C / (K + T) of it, so the table shows each rate
against rate(load 0) * min(1, C / (K + T)).

    python bench/bench_decoder_contention.py --json bench/out/contention.json
    python bench/bench_decoder_contention.py --precision w4 --loads 0,4 --policies auto,passive
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_decoder_cpu import decoder_file, make_checkpoint  # noqa: E402

BUSY = "while True:\n    pass\n"


def decode_rate(a: argparse.Namespace, ckpt: Path, dfile: Path, policy: str) -> dict:
    """One fresh worker process of bench_decoder_cpu.py: prefill --prompt tokens, decode --new."""
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), RSVLM_EDGE_THREAD_WAIT=policy)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(HERE / "bench_decoder_cpu.py"), "--worker", a.precision, "--checkpoint",
                        str(ckpt), "--decoder-file", str(dfile), "--batch", "1", "--prompt", str(a.prompt),
                        "--new", str(a.new), "--repeats", str(a.repeats), "--backend", "native"],
                       capture_output=True, text=True, env=env, timeout=a.timeout)
    if r.returncode != 0:
        sys.exit(f"error: the {policy} worker failed: {r.stderr[-2000:]}")
    row = json.loads(r.stdout.strip().splitlines()[-1])
    return {"decode_bs1_tok_s": row["decode_bs1_tok_s"], "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="w8", choices=["fp16", "w8", "w4"])
    ap.add_argument("--loads", default="0,2,6", help="busy processes beside the decoder, one run each")
    ap.add_argument("--policies", default="auto,spin,passive")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--workdir", type=Path, default=HERE / "out" / "decoder-cpu")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(a.workdir / f"tinyllama-shape-l{a.layers}-s0", a.layers, 0)
    dfile = decoder_file(ckpt, a.precision, ckpt)
    cores = os.cpu_count() or 1
    result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                    "cores": cores, "threads": a.threads, "precision": a.precision, "prompt": a.prompt, "new": a.new,
                    "rows": []}
    for load in [int(x) for x in a.loads.split(",")]:
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load)]
        try:
            time.sleep(1.0 if load else 0.0)
            for policy in a.policies.split(","):
                print(f"load {load}: {policy} ...", flush=True)
                result["rows"].append({"load": load, "policy": policy, **decode_rate(a, ckpt, dfile, policy)})
        finally:
            for p in busy:
                p.kill()
            for p in busy:
                p.wait()
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1))
    base = {r["policy"]: r["decode_bs1_tok_s"] for r in result["rows"] if r["load"] == 0}
    print(f"\n{a.precision} decode at batch 1, {a.threads} threads on {cores} cores, {result['date']}:\n")
    print("| busy processes | policy | decode tok/s | fair share of load-0 rate | vs fair share |")
    print("|---|---|---|---|---|")
    for r in result["rows"]:
        share = min(1.0, cores / (r["load"] + a.threads))
        ref = base.get(r["policy"], max(base.values(), default=0.0)) * share
        ratio = f"{r['decode_bs1_tok_s'] / ref:.2f}x" if ref else ""
        print(f"| {r['load']} | {r['policy']} | {r['decode_bs1_tok_s']:.1f} | {ref:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
