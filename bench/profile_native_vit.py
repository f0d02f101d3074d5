"""Where the native-vit image tower's time goes: wall time per kernel call of one forward pass
(``rsvlm_edge.backends.graph_native.NativeVisionTower``), summed per op over the timed passes.

Each call of the extension (patch_embed, layer_norm, qgemm / linear, kv_append, attention_prefill,
gelu) is timed around the call from Python, so "python + numpy" is the rest of the forward (array
allocation, slicing, the residual add of the class rows). The kernels run on the pool as usual:
``--threads`` (OMP_NUM_THREADS) sets its size.

    python bench/profile_native_vit.py BUNDLE --batch 1 --iters 5 [--kernels auto|amx|avx512vnni] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


class TimedExtension:
    """Forwards attribute access to the extension module; callables come back wrapped with a timer."""

    def __init__(self, ext: Any) -> None:
        self._ext = ext
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._ext, name)
        if not callable(fn):
            return fn

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1

        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="a CLIP bundle exported with native weights (rsvlm-edge export clip)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5, help="timed forward passes (after one warm-up)")
    ap.add_argument("--threads", type=int, default=None, help="kernel pool size (OMP_NUM_THREADS)")
    ap.add_argument("--kernels", default="auto", help="CPU kernel set: auto | amx | avx512vnni | avx2 | portable")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    from rsvlm_edge.backends.graph_native import NativeVisionTower
    from rsvlm_edge.bundle.store import open_bundle

    bundle = open_bundle(args.bundle, verify=False)
    part = bundle.manifest.parts["image"]
    if part.native is None:
        sys.exit(f"error: {args.bundle} has no native image weights\nfix: re-export it without --no-native")
    tower = NativeVisionTower(part, bundle.path / part.file)
    kernels = tower._c.set_cpu_kernels(args.kernels)
    timed = TimedExtension(tower._c)
    tower._c = timed
    size = tower.size
    pixels = {tower.input_names[0]: np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), np.uint8)}
    tower.run(pixels)  # warm-up: scratch buffers, page faults, the pool's threads
    timed.reset()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        tower.run(pixels)
    total = (time.perf_counter() - t0) / args.iters
    rows = sorted(((name, s / args.iters, timed.calls[name] // args.iters) for name, s in timed.seconds.items()),
                  key=lambda r: -r[1])
    rest = total - sum(r[1] for r in rows)
    print(f"# native-vit per op: {args.bundle} ({part.native.precision}), batch {args.batch}, kernels {kernels}, "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')} threads, mean of {args.iters} passes: "
          f"{total * 1e3:.1f} ms per pass ({args.batch / total:.2f} img/s)")
    print("| op | calls / pass | ms / pass | % |\n|---|---:|---:|---:|")
    for name, s, calls in rows:
        print(f"| `{name}` | {calls} | {s * 1e3:.1f} | {100 * s / total:.1f} |")
    print(f"| python + numpy | — | {rest * 1e3:.1f} | {100 * rest / total:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({
            "bundle": str(args.bundle), "precision": part.native.precision, "batch": args.batch, "kernels": kernels,
            "threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.processor() or platform.machine(),
            "ms_per_pass": total * 1e3,
            "ops": [{"op": n, "calls": c, "ms": s * 1e3} for n, s, c in rows] + [{"op": "python", "ms": rest * 1e3}],
        }, indent=1))


if __name__ == "__main__":
    main()
