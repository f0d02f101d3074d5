#!/usr/bin/env python3
"""Time qgemm (W8A8 encoder GEMM, rsvlm_edge._C.qgemm) against onnxruntime's dynamic int8 GEMM (MLAS).

Shapes (M, K, N) are the matmuls of CLIP ViT image towers: M = batch x tokens (50: one ViT-B/32 image,
400: eight; 577: one ViT-L/14-336 image, 4616: eight), K / N = the qkv, attention-out and MLP widths.
Peers, on the same shapes and the same thread count (--threads, default 2), sequential execution:

  ort-dynamic  onnxruntime.quantization.quantize_dynamic of a one-MatMul fp32 graph (int8 weights,
               activations quantised per call), ORT_ENABLE_ALL: the fused DynamicQuantizeMatMul node
               (MLAS U8S8, AVX512-VNNI where the CPU has it) -- what a user of quantize_dynamic runs
  ort-graph    a hand-built graph: DynamicQuantizeLinear(x) -> MatMulInteger(xq, w int8 initializer,
               x_zero_point) -> Cast(float) -> Mul(x_scale) -> Mul(w_scale per channel)

qgemm times include quantising x (per row) and the whole epilogue; out= is preallocated. Each
implementation runs in blocks (--warmup untimed runs, then --iters timed ones), the blocks alternating
between the implementations for --rounds rounds, so that a busy machine slows all of them alike while
no block is timed next to another thread pool still spinning after its last run (onnxruntime's workers
spin after each run; alternating single runs would time each implementation against the other's spin).
The table shows medians (--stat min: the best run of each, for a machine shared with other processes).
GOPS = 2 * M * N * K / time. Prints a markdown table.

    PYTHONPATH=$PWD python bench/bench_qgemm.py
    PYTHONPATH=$PWD python bench/bench_qgemm.py --shapes 577,1024,4096 --iters 20 --peers ort-dynamic
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from rsvlm_edge.models.llava.quant import quantize_w8

SHAPES = [(50, 768, 2304), (50, 768, 3072), (50, 3072, 768), (400, 768, 3072), (577, 1024, 3072),
          (577, 1024, 4096), (577, 4096, 1024), (4616, 1024, 4096)]


def wait_idle(seconds: float, idle: float = 0.9) -> bool:
    """Waits (Linux, up to `seconds`) until the CPUs were at least `idle` idle for one second: on a machine
    shared with other processes, time only while nothing else runs. False when it never was."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        i0, t0 = sample()
        time.sleep(1.0)
        i1, t1 = sample()
        if t1 > t0 and (i1 - i0) / (t1 - t0) >= idle:
            return True
    return False


def _session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def ort_dynamic(w32: np.ndarray, m: int, threads: int, tmp: Path):
    """quantize_dynamic of x (M, K) @ W.T: a session and the op types it runs after optimisation."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    n, k = w32.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wt"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(np.ascontiguousarray(w32.T), "wt")])
    src, dst, opt = tmp / f"mm_{m}_{k}_{n}.onnx", tmp / f"mm_{m}_{k}_{n}.q.onnx", tmp / f"mm_{m}_{k}_{n}.opt.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(opt)
    ort.InferenceSession(str(dst), opts, providers=["CPUExecutionProvider"])
    ops = sorted({node.op_type for node in onnx.load(opt).graph.node})
    return _session(str(dst), threads), ops


def ort_graph(w8: np.ndarray, scale: np.ndarray, m: int, threads: int):
    """DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Mul, per-channel weight scales."""
    from onnx import TensorProto, helper, numpy_helper

    n, k = w8.shape
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "wt", "xz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["accf", "xs"], ["y0"]),
             helper.make_node("Mul", ["y0", "ws"], ["y"])]
    graph = helper.make_graph(
        nodes, "qmm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(np.ascontiguousarray(w8.T), "wt"), numpy_helper.from_array(scale, "ws")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _session(model.SerializeToString(), threads), ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul"]


def main() -> None:  # noqa: PLR0915 (one linear script)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=None, help="M,K,N triples (default: the CLIP tower shapes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5, help="timed runs per block")
    ap.add_argument("--rounds", type=int, default=3, help="blocks of --iters runs per implementation")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs before each block")
    ap.add_argument("--peers", default="ort-dynamic,ort-graph")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="time of a shape: the median or the best of its runs (min: a machine shared with others)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each block, wait up to S seconds for idle CPUs (Linux; a shared machine)")
    ap.add_argument("--kernels", default="auto", help="qgemm's CPU kernel set: auto | avx512vnni | avx2 | portable")
    a = ap.parse_args()
    # qgemm's thread pool takes OMP_NUM_THREADS when the extension loads: set it first
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    if int(os.environ["OMP_NUM_THREADS"]) != a.threads:
        raise SystemExit(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} but --threads {a.threads}")
    from rsvlm_edge import _C

    kernels = _C.set_cpu_kernels(a.kernels)
    shapes = [tuple(int(v) for v in s.split(",")) for s in a.shapes] if a.shapes else SHAPES
    peers = [p for p in a.peers.split(",") if p]
    import logging

    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # no warnings about serialising the optimised graph
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's "consider pre-processing"
    print(f"# qgemm vs onnxruntime {ort.__version__} int8, {platform.machine()} ({os.cpu_count()} CPUs), "
          f"{a.threads} threads, qgemm kernels {kernels}, {a.stat} of {a.rounds} x {a.iters} runs in alternating blocks")
    cols = " | ".join(f"{p} GOPS | qgemm / {p}" for p in peers)
    print(f"| M | K | N | qgemm ms | qgemm GOPS | {cols} | max rel diff vs ORT |")
    print("|---:|---:|---:|---:|---:|" + "---:|---:|" * len(peers) + "---:|")
    rng = np.random.default_rng(0)
    ops_seen = {}
    busy = 0  # blocks timed while other processes ran (--wait-idle gave up)
    with tempfile.TemporaryDirectory(prefix="rsvlm-bench-qgemm-") as tmp:
        for m, k, n in shapes:
            w32 = (rng.standard_normal((n, k)) * k**-0.5).astype(np.float32)
            w8, scale = quantize_w8(w32)
            x = rng.standard_normal((m, k)).astype(np.float32)
            packed = _C.qgemm_pack(w8, scale)
            out = np.empty((m, n), np.float32)
            fns = {"qgemm": lambda: _C.qgemm(x, packed, out=out)}
            outs = {}
            for p in peers:
                if p == "ort-dynamic":
                    sess, ops = ort_dynamic(w32, m, a.threads, Path(tmp))
                elif p == "ort-graph":
                    sess, ops = ort_graph(w8, scale, m, a.threads)
                else:
                    raise SystemExit(f"unknown peer {p!r}")
                ops_seen[p] = ops
                fns[p] = (lambda s: lambda: s.run(None, {"x": x})[0])(sess)
            times = {name: [] for name in fns}
            for _ in range(a.rounds):  # blocks of runs, alternating between the implementations
                for name, fn in fns.items():
                    if a.wait_idle and not wait_idle(a.wait_idle):
                        busy += 1
                    for _ in range(a.warmup):  # also lets the previous block's spinning threads go idle
                        outs[name] = fn()
                    for _ in range(a.iters):
                        t0 = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - t0)
            stat = np.median if a.stat == "median" else np.min
            med = {name: float(stat(t)) for name, t in times.items()}
            gops = {name: 2.0 * m * n * k / t / 1e9 for name, t in med.items()}
            y = outs["qgemm"]
            diffs = [float(np.abs(y - outs[p]).max() / np.abs(outs[p]).max()) for p in peers]
            cells = " | ".join(f"{gops[p]:.0f} | {gops['qgemm'] / gops[p]:.2f}x" for p in peers)
            print(f"| {m} | {k} | {n} | {med['qgemm'] * 1e3:.3f} | {gops['qgemm']:.0f} | {cells} | "
                  f"{max(diffs, default=0):.1e} |", flush=True)
    for p, ops in ops_seen.items():
        print(f"\nNote: {p} runs the ops {', '.join(ops)}")
    if a.wait_idle:
        print(f"\nNote: {busy} blocks were timed while the CPUs were busy with other processes (--wait-idle)")


if __name__ == "__main__":
    main()
