"""Where a GPU decode step's time goes: per-kernel device time of rsvlm_edge._C.CudaDecoder steps.

The TinyLlama-1.1B decoder shape with seeded random weights (bench_decoder_cuda's), a `--prompt`-token
prefill, then `--steps` greedy decode steps run with CUDA graphs off (direct launches, so that each
kernel is its own profiler record) under torch.profiler (CUPTI sees every kernel of the process, ours
included). Per kernel: launches per step, device microseconds per step, share of the summed kernel time.
Beside it, the wall time per step with graphs off and on: the difference is launch overhead that the
graph removes; summed kernel time vs graph step time shows the gaps left between kernels.

    python bench/profile_decoder_cuda.py --json bench/out/profile_decoder.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder_cuda import TINYLLAMA, build_model, canonical_tensors, cuda_decoder  # noqa: E402


def short_name(kernel: str) -> str:
    """A kernel's demangled name without its namespaces, argument list and template arguments' types."""
    name = kernel.replace("(anonymous namespace)::", "").split("(")[0]
    name = re.sub(r"^(void|Status)\s+", "", name)
    base = name.split("<")[0].split("::")[-1]
    args = name[len(name.split("<")[0]):]
    return base + (args[:60] if args else "")


def step_wall_ms(torch, dec, nxt, steps: int, graphs: bool):
    dec.use_graphs = graphs
    nxt = dec.decode(nxt, logits=False)[1]  # captures the graph when graphs are on
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        nxt = dec.decode(nxt, logits=False)[1]
    return (time.perf_counter() - t0) / steps * 1e3, nxt


def profile_one(torch, tensors: dict, fmt: str, batch: int, prompt: int, steps: int) -> dict:
    import numpy as np
    from torch.profiler import ProfilerActivity, profile

    from rsvlm_edge.export.llava import decoder_tensors

    dec = cuda_decoder(TINYLLAMA, decoder_tensors(tensors, fmt), batch, prompt + 4 * steps + 8)
    embed = tensors["embed_tokens.weight"]
    ids = np.random.default_rng(batch).integers(3, TINYLLAMA["vocab_size"], (batch, prompt))
    logits = dec.prefill(embed[ids].astype(np.float32), np.full(batch, prompt, np.int64))
    nxt = logits.argmax(axis=1)
    direct_ms, nxt = step_wall_ms(torch, dec, nxt, steps, graphs=False)
    graph_ms, nxt = step_wall_ms(torch, dec, nxt, steps, graphs=True)
    dec.use_graphs = False
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            nxt = dec.decode(nxt, logits=False)[1]
        torch.cuda.synchronize()
    kernels: dict[str, dict] = {}
    for e in prof.events():
        if str(getattr(e, "device_type", "")).endswith("CUDA") and "memcpy" not in e.name.lower() \
                and "memset" not in e.name.lower():
            k = kernels.setdefault(short_name(e.name), dict(kernel=short_name(e.name), launches=0, us=0.0))
            k["launches"] += 1
            k["us"] += float(e.device_time_total)
    if not kernels:
        raise SystemExit("error: torch.profiler recorded no CUDA kernel of the decode steps\n"
                         "fix: run with a torch built with CUDA (CUPTI) and a visible GPU")
    total = sum(k["us"] for k in kernels.values())
    rows = sorted(kernels.values(), key=lambda k: -k["us"])
    for k in rows:
        k["launches_per_step"] = k["launches"] / steps
        k["us_per_step"] = k["us"] / steps
        k["pct"] = 100.0 * k["us"] / total
    del dec
    return dict(fmt=fmt, batch=batch, prompt=prompt, steps=steps, step_ms_direct=direct_ms, step_ms_graph=graph_ms,
                kernel_us_per_step=total / steps, kernels=rows)


def markdown(result: dict) -> str:
    out = []
    for r in result["runs"]:
        out += [f"**{r['fmt']}, batch {r['batch']}** (context {r['prompt']}): step {r['step_ms_graph']:.3f} ms from "
                f"its CUDA graph, {r['step_ms_direct']:.3f} ms launched directly; kernels sum to "
                f"{r['kernel_us_per_step'] / 1e3:.3f} ms per step.", "",
                "| kernel | launches / step | us / step | % of kernel time |", "|---|---|---|---|"]
        for k in r["kernels"][:14]:
            out.append(f"| `{k['kernel']}` | {k['launches_per_step']:.0f} | {k['us_per_step']:.1f} | {k['pct']:.1f} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ours", nargs="*", default=["fp16", "w8"], choices=["fp16", "w8", "w4"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=608)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", type=Path, default=Path("bench/out/profile_decoder.json"))
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU visible to torch\nfix: run on a GPU machine")
    tensors = canonical_tensors(build_model(torch, TINYLLAMA["num_hidden_layers"]))
    torch.cuda.empty_cache()
    result = dict(bench="profile_decoder_cuda", host=platform.node(), device=torch.cuda.get_device_name(),
                  torch=torch.__version__, date=datetime.now(timezone.utc).isoformat(timespec="seconds"), runs=[])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for fmt in args.ours:
        for batch in args.batches:
            result["runs"].append(profile_one(torch, tensors, fmt, batch, args.prompt, args.steps))
            args.json.write_text(json.dumps(result, indent=2))
            print(markdown(dict(runs=result["runs"][-1:])), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
