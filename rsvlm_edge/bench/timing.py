"""Timing helpers shared by every bench: wall-clock timing, peak RSS, the machine's weight-streaming
bandwidth, the device line, and the JSON + PNG outputs."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json_atomic

CACHE_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def last_level_cache_bytes(root: Path = CACHE_SYSFS) -> int | None:
    """Size of the largest CPU cache level (Linux sysfs ``index*/level`` and ``size``, e.g. ``491520K``), or
    None where sysfs does not say."""
    best: tuple[int, int] | None = None
    for index in root.glob("index*"):
        try:
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip().upper()
            nbytes = int(size.rstrip("KMG")) * _SIZE_UNITS[size[-1] if size[-1] in "KMG" else ""]
        except (OSError, ValueError):
            continue
        if best is None or level > best[0]:
            best = (level, nbytes)
    return best[1] if best else None


def read_buffer_bytes(llc: int | None) -> int:
    """Bytes ``measure_read_gb_s`` streams: twice the last-level cache, at least 256 MiB, at most 2 GiB (a
    buffer the cache holds measures the cache: 480 MiB L3s exist)."""
    return min(max(2 * (llc or 0), 256 << 20), 2 << 30)


def measure_read_gb_s(nbytes: int | None = None, repeats: int = 5) -> float:
    """Weight-streaming bandwidth of this machine: best of ``repeats`` fp32 matrix-vector products
    over a matrix of ``nbytes`` (default ``read_buffer_bytes``: larger than the caches; BLAS, all threads) -
    the reference for the decode bandwidth floor."""
    nbytes = nbytes if nbytes is not None else read_buffer_bytes(last_level_cache_bytes())
    cols = 8192
    w = np.ones((nbytes // 4 // cols, cols), dtype=np.float32)
    x = np.ones(cols, dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        w @ x
        best = min(best, time.perf_counter() - t0)
    return w.nbytes / best / 1e9


def median(xs: list[float]) -> float:
    return float(np.median(xs))


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: write 5 to /proc/self/clear_refs). False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size (MiB) since the last ``reset_peak_rss`` (VmHWM), else since start."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_fn(fn: Callable[[], Any], warmup: int, iters: int) -> np.ndarray:
    """Wall-clock seconds of ``iters`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def cuda_event_ms(fn: Callable[[], Any], warmup: int, iters: int) -> float:
    """Median milliseconds of ``iters`` calls of ``fn``, each timed by a pair of CUDA events on torch's
    current stream, after ``warmup`` untimed calls (torch is imported here: only GPU benches call it)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def device_line(threads: int | None) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu}, {threads or os.cpu_count()} threads"


def write_outputs(result: dict[str, Any], json_path: Path | None, plot_path: Path | None) -> None:
    if json_path:
        write_json_atomic(json_path, result)
    if plot_path:
        plot(result, plot_path)


def plot(result: dict[str, Any], path: Path) -> None:
    """Throughput vs batch, one line per backend/precision (matplotlib, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_key = "images_per_s" if result["kind"] == "clip" else "decode_tok_s"
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    series: dict[str, list[tuple[int, float]]] = {}
    for r in result["rows"]:
        if r.get(y_key) is not None:
            series.setdefault(f"{r.get('backend', '')} {r.get('precision', '')}".strip(), []).append((r["batch"], r[y_key]))
    for label, pts in series.items():
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel(y_key.replace("_", " "))
    ax.set_title(f"{result['model']} on {result['device']}", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from ..atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
