#!/usr/bin/env python3
"""Archive-index bench: (a) embedding throughput of `index build` in this process vs on Ray with 1 and
2 workers, same CPU, builtin:remoteclip-vit-b-32; (b) the FAISS index on 1,000,000 synthetic
normalised 512-d embeddings: build time, memory, query latency p50/p99 at k=20 and recall@20 vs exact
search, over a small nprobe x k_factor grid. Writes JSON and prints markdown tables for bench/RESULTS.md.

    python bench/bench_index.py --json bench/out/index_cpu.json

(a) times the real `rsvlm_edge.index.build` (decode + encode + shard writes; Ray start-up reported apart)
on synthetic 256 px JPEG scenes, configurations in round robin after one untimed warm-up round (the machine
is shared: best of the rounds): end to end (loading the runtime or starting the actors included) and steady
(after the first batch is out); the builtin model has seeded random weights (timing only). (b) writes the vectors to disk in 50,000-row blocks first (as shards),
then times `faiss_index.build` reading them back (the code `index build` runs), so the process's memory
growth is the index's. The vectors are CLIP-like, not uniform: a 64-d latent mixture of 1,000 Gaussian
clusters mapped into 512-d, plus a shared mean direction and isotropic noise (random pairs have cosine
~0.44, nearest neighbours ~0.9, as real CLIP image embeddings do); queries are fresh draws from the same
distribution. Uniformly random 512-d vectors have no neighbourhood structure: no approximate index reaches
this recall on them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import add_output_args, run_sweep, with_notes

from rsvlm_edge import __version__
from rsvlm_edge.bench.timing import device_line, peak_rss_mb, reset_peak_rss

DIM = 512
BLOCK = 50_000
K = 20


# ---- (a) embedding throughput ----------------------------------------------------------------------

def _write_images(folder: Path, n: int, size: int = 256) -> None:
    from PIL import Image

    from rsvlm_edge.synthetic import synthetic_rs_images

    folder.mkdir(parents=True)
    for start in range(0, n, 64):
        for i, px in enumerate(synthetic_rs_images(min(64, n - start), size, seed=start)):
            Image.fromarray(px).save(folder / f"scene{start + i:05d}.jpg", quality=90)


def _decode_ms_per_image(folder: Path, image_size: int) -> float:
    """Decode + resize + crop alone (one core), per image: what a node must do per encoded image."""
    from rsvlm_edge.images import clip_pixels

    files = sorted(folder.iterdir())
    t0 = time.perf_counter()
    for f in files:
        clip_pixels([str(f)], image_size)
    return (time.perf_counter() - t0) / len(files) * 1e3


class _Clock:
    """Stands in for the rich progress display of `index build`: timestamps the embedding batches as
    the driver receives them, so that the steady rate can be told apart from the start-up (loading
    the runtime, starting the actors)."""

    def __init__(self) -> None:
        self.labels: dict[int, str] = {}
        self.marks: list[tuple[float, int]] = []

    def add_task(self, label: str, total: int | None = None) -> int:
        self.labels[len(self.labels)] = label
        return len(self.labels) - 1

    def advance(self, task: int, n: int) -> None:
        if self.labels[task] == "embedding":
            self.marks.append((time.perf_counter(), n))

    def steady_images_per_s(self) -> float:
        """Images per second from the batch that completes the first quarter to the last batch (Ray
        may hand over its first outputs in a burst, so the first batch alone would flatter it)."""
        done = np.cumsum([n for _, n in self.marks])
        q = int(np.searchsorted(done, done[-1] / 4))
        return float((done[-1] - done[q]) / (self.marks[-1][0] - self.marks[q][0]))


def bench_embedding(n_images: int, batch: int, repeats: int, work: Path, log) -> dict:
    import logging

    import faiss
    import ray

    import rsvlm_edge.index as rx
    from rsvlm_edge.builtin import builtin_clip_bundle
    from rsvlm_edge.index.builder import EmbedOptions

    bundle = builtin_clip_bundle("remoteclip-vit-b-32", "fp32")
    folder = work / "images"
    _write_images(folder, n_images)
    log(f"{n_images} synthetic 256 px JPEGs written; bundle {bundle}")
    cpus = os.cpu_count() or 1
    configs = [  # in-process first, before Ray's processes exist
        ("in-process", f"{cpus} onnxruntime threads", EmbedOptions(batch_size=batch)),
        ("ray, 1 worker", f"1 actor x {cpus} threads",
         EmbedOptions(batch_size=batch, ray="local", workers=1, cpus_per_worker=cpus)),
        ("ray, 1 worker", "1 actor x 1 thread", EmbedOptions(batch_size=batch, ray="local", workers=1, cpus_per_worker=1)),
        ("ray, 2 workers", "2 actors x 1 thread",
         EmbedOptions(batch_size=batch, ray="local", workers=2, cpus_per_worker=1)),
    ]
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    times: dict[int, list[float]] = {c: [] for c in range(len(configs))}
    steady: dict[int, list[float]] = {c: [] for c in range(len(configs))}
    vectors = {}
    encoder_alone, encoder_rates = _EncoderAlone(bundle, batch), []
    try:
        # Round robin, so that the load of other processes on this shared machine falls on every
        # configuration alike; round 0 warms the page cache, the actors' imports and the model files.
        for r in range(repeats + 1):
            for c, (name, layout, opts) in enumerate(configs):
                out = work / f"idx-{c}-{r}"
                clock = _Clock()
                report = rx.build(bundle, [folder], out, embed=opts, progress=clock)
                if r:
                    times[c].append(report.embed_seconds)
                    steady[c].append(clock.steady_images_per_s())
                    log(f"round {r}: {name} ({layout}): {n_images / report.embed_seconds:.1f} img/s end to end, "
                        f"{steady[c][-1]:.1f} img/s steady")
                vectors[c] = faiss.read_index(str(out / rx.open(out).manifest.index_file)).reconstruct_n(0, n_images)
                shutil.rmtree(out)
            if r:
                encoder_rates.append(encoder_alone.images_per_s())
    finally:
        ray.shutdown()
    rows = [{"mode": name, "layout": layout, "seconds": times[c], "images_per_s": n_images / min(times[c]),
             "images_per_s_median": n_images / statistics.median(times[c]), "steady_images_per_s": max(steady[c]),
             "steady_images_per_s_all": steady[c]} for c, (name, layout, _) in enumerate(configs)]
    base = rows[0]["steady_images_per_s"]
    for c, row in enumerate(rows):
        row["vs_in_process"] = row["steady_images_per_s"] / base
        row["identical_to_in_process"] = bool(np.array_equal(vectors[c], vectors[0]))
    decode_ms = _decode_ms_per_image(folder, 224)
    encoder = max(encoder_rates)
    log(f"encoder alone (ClipRuntime.encode_images, batch {batch}, {cpus} threads): {encoder:.1f} img/s (best round)")
    return {"images": n_images, "image_size": 256, "batch": batch, "repeats": repeats, "ray_start_s": ray_start,
            "decode_ms_per_image_one_core": decode_ms, "encoder_only_images_per_s": encoder,
            "encoder_only_images_per_s_all": encoder_rates, "rows": rows}


class _EncoderAlone:
    """The runtime alone on prepared pixels (no decoding, no shards): the ceiling of the pipeline,
    timed once per round next to the builds."""

    def __init__(self, bundle: Path, batch: int, n: int = 64) -> None:
        import rsvlm_edge
        from rsvlm_edge.synthetic import synthetic_rs_images

        self.rt = rsvlm_edge.load(bundle, verify=False)
        self.px = synthetic_rs_images(n, self.rt.image_size, seed=1)
        self.batch = batch
        self.rt.encode_images(self.px[:batch])

    def images_per_s(self) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(self.px), self.batch):
            self.rt.encode_images(self.px[i:i + self.batch])
        return len(self.px) / (time.perf_counter() - t0)


# ---- (b) FAISS at 1M ---------------------------------------------------------------------------------

class ClipLikeVectors:
    """Deterministic CLIP-like normalised vectors (see the module docstring), drawn in blocks."""

    def __init__(self, dim: int = DIM, latent: int = 64, clusters: int = 1000, spread: float = 0.5,
                 noise: float = 0.1) -> None:
        rng = np.random.default_rng(0)
        self.basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)  # (latent, dim)
        self.centres = rng.standard_normal((clusters, latent)).astype(np.float32)
        mean = rng.standard_normal(dim).astype(np.float32)
        self.mean = mean / np.linalg.norm(mean)
        self.dim, self.latent, self.spread, self.noise = dim, latent, spread, noise
        self.params = {"dim": dim, "latent": latent, "clusters": clusters, "spread": spread, "noise": noise}

    def draw(self, n: int, seed: int) -> np.ndarray:
        r = np.random.default_rng(seed)
        z = self.centres[r.integers(0, len(self.centres), n)] + self.spread * r.standard_normal((n, self.latent),
                                                                                                 dtype=np.float32)
        x = z @ self.basis / np.sqrt(self.latent) + self.mean
        x += self.noise / np.sqrt(self.dim) * r.standard_normal((n, self.dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _latencies(index, spec, queries: np.ndarray, nprobe: int | None, k_factor: int | None) -> tuple[np.ndarray, np.ndarray]:
    from rsvlm_edge.index import faiss_index

    ids = np.empty((len(queries), K), np.int64)
    lat = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        _, found = faiss_index.search(index, spec, q[None], K, nprobe=nprobe, k_factor=k_factor)
        lat[i] = time.perf_counter() - t0
        ids[i] = found[0]
    return lat * 1e3, ids


def bench_faiss(n: int, n_queries: int, grid: list[tuple[int, int]], work: Path, log) -> dict:
    import faiss

    from rsvlm_edge.index import faiss_index

    gen = ClipLikeVectors()
    blocks = []
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, n, BLOCK)):
        path = work / f"block{b:04d}.npy"
        np.save(path, gen.draw(min(BLOCK, n - start), seed=1000 + b))
        blocks.append(path)
    queries = gen.draw(n_queries, seed=1)
    log(f"{n} vectors written in {time.perf_counter() - t0:.0f} s")

    def read_blocks():
        for p in blocks:
            yield np.load(p)

    exact_heap = faiss.ResultHeap(n_queries, K, keep_max=True)  # exact top-20 (inner product), streamed
    t0, offset = time.perf_counter(), 0
    flat_ms_per_100k = None
    for block in read_blocks():
        flat = faiss.IndexFlatIP(DIM)
        flat.add(block)
        scores, ids = flat.search(queries, K)
        exact_heap.add_result(scores, ids + offset)
        if flat_ms_per_100k is None:  # exact single-query latency, on the first block
            single = []
            for q in queries[:50]:
                s0 = time.perf_counter()
                flat.search(q[None], K)
                single.append(time.perf_counter() - s0)
            flat_ms_per_100k = float(np.median(single)) * 1e3 * 100_000 / len(block)
        offset += len(block)
    exact_heap.finalize()
    truth = exact_heap.I
    exact_s = time.perf_counter() - t0
    log(f"exact top-{K} of {n_queries} queries: {exact_s:.0f} s; flat single query {flat_ms_per_100k:.2f} ms / 100k vectors")

    spec = faiss_index.choose_spec(n, DIM)
    rss_before = _rss_mb()
    reset_peak_rss()
    t0 = time.perf_counter()
    index, trained = faiss_index.build(spec, DIM, n, read_blocks)
    build_s = time.perf_counter() - t0
    rss_after, peak = _rss_mb(), peak_rss_mb()
    faiss_index.write(index, work / "index.faiss")
    file_mb = (work / "index.faiss").stat().st_size / 2**20
    log(f"{spec.factory}: built in {build_s:.0f} s (trained on {trained}); RSS +{rss_after - rss_before:.0f} MiB")

    def recall(ids: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, truth)]))

    rows = []
    for nprobe, k_factor in grid:
        lat, ids = _latencies(index, spec, queries, nprobe, k_factor)
        rows.append({"nprobe": nprobe, "k_factor": k_factor, "recall_at_20": recall(ids),
                     "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                     "mean_ms": float(lat.mean())})
        log(f"nprobe {nprobe:3d} k_factor {k_factor:2d}: recall@20 {rows[-1]['recall_at_20']:.3f} "
            f"p50 {rows[-1]['p50_ms']:.2f} ms p99 {rows[-1]['p99_ms']:.2f} ms")
    ok = [r for r in rows if r["recall_at_20"] >= 0.95 and r["p99_ms"] <= 5.0]
    chosen = min(ok, key=lambda r: r["p99_ms"]) if ok else max(rows, key=lambda r: r["recall_at_20"])
    default = next((r for r in rows if (r["nprobe"], r["k_factor"]) == (spec.nprobe, spec.k_factor)), None)
    return {"vectors": n, "dim": DIM, "queries": n_queries, "k": K, "data": gen.params, "spec": spec.model_dump(),
            "build_s": build_s, "trained_on": trained, "rss_before_mb": rss_before, "rss_after_mb": rss_after,
            "index_rss_mb": rss_after - rss_before, "peak_rss_mb": peak, "index_file_mb": file_mb,
            "bytes_per_vector": file_mb * 2**20 / n, "exact_search_s": exact_s,
            "flat_single_query_ms_per_100k": flat_ms_per_100k, "omp_threads": faiss.omp_get_max_threads(),
            "rows": rows, "best_meeting_goal": chosen, "code_default": default}


# ---- the run -------------------------------------------------------------------------------------------

def sweep(a: argparse.Namespace) -> dict:
    def log(msg: str) -> None:
        print(f"[bench] {msg}", flush=True)

    grid = [tuple(int(v) for v in p.split("x")) for p in a.grid.split(",")]
    result = {"kind": "index", "model": "builtin:remoteclip-vit-b-32 (fp32)", "device": device_line(None),
              "date": datetime.date.today().isoformat(), "rsvlm_edge": __version__, "notes": [],
              "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-index-", dir=a.workdir) as tmp:
        work = Path(tmp)
        if not a.skip_embedding:
            result["embedding"] = bench_embedding(a.images, a.batch, a.repeats, work / "embed", log)
        if not a.skip_faiss:
            (work / "faiss").mkdir()
            result["faiss"] = bench_faiss(a.vectors, a.queries, grid, work / "faiss", log)
    result["load_average_end"] = os.getloadavg()
    result["notes"].append("load average (1, 5, 15 min) of this shared machine: "
                           f"{', '.join(f'{v:.1f}' for v in result['load_average_start'])} at the start, "
                           f"{', '.join(f'{v:.1f}' for v in result['load_average_end'])} at the end")
    emb, fx = result.get("embedding"), result.get("faiss")
    if emb:
        enc_ms = 1e3 / emb["rows"][0]["steady_images_per_s"]
        result["notes"].append(
            f"the encoder alone (ClipRuntime.encode_images on 64 prepared pixel arrays, batch {emb['batch']}, timed in "
            f"every round, best round) does {emb['encoder_only_images_per_s']:.1f} img/s: the in-process build runs at "
            f"{emb['rows'][0]['steady_images_per_s'] / emb['encoder_only_images_per_s']:.0%} of it.")
        result["notes"].append(
            f"decode + resize of one 256 px JPEG takes {emb['decode_ms_per_image_one_core']:.1f} ms on one core vs "
            f"{enc_ms:.1f} ms per image for the steady in-process build: the encoder bounds this CPU. On N GPU nodes "
            f"the encoder is no longer the limit (ViT-B/32 ~25,000 img/s per H100 at batch 256, design.md): at "
            f"{emb['decode_ms_per_image_one_core']:.1f} ms per image one GPU needs "
            f"~{25000 * emb['decode_ms_per_image_one_core'] / 1e3:.0f} decoding cores, so decode (and tiling I/O "
            "for GeoTIFFs) bounds it; Ray runs decoding as CPU tasks ahead of the GPU actors, so throughput scales "
            "with the nodes' cores until the shared storage's read bandwidth is the limit.")
        result["notes"].append(f"Ray start-up (local cluster) took {emb['ray_start_s']:.1f} s, not counted; the Ray "
                               "cluster's idle processes stay up during the in-process rows too.")
    if fx:
        result["notes"].append(f"exact single-query search costs {fx['flat_single_query_ms_per_100k']:.2f} ms per "
                               "100,000 vectors here: the flat (exact) index stays under 5 ms below "
                               f"~{5 / fx['flat_single_query_ms_per_100k'] * 100_000:,.0f} vectors (EXACT_MAX).")
    return result


def markdown(result: dict) -> str:
    lines = [f"{result['model']} on {result['device']}, {result['date']}, rsvlm-edge {result['rsvlm_edge']}.", ""]
    emb = result.get("embedding")
    if emb:
        lines += [f"(a) `index build` of {emb['images']} synthetic {emb['image_size']} px JPEGs in batches of "
                  f"{emb['batch']}, best of {emb['repeats']} round-robin rounds after a warm-up round:", "",
                  "| mode | layout | img/s end to end | img/s steady | vs in-process (steady) | identical index |",
                  "|---|---|---:|---:|---:|---|"]
        for r in emb["rows"]:
            lines.append(f"| {r['mode']} | {r['layout']} | {r['images_per_s']:.1f} | {r['steady_images_per_s']:.1f} | "
                         f"{r['vs_in_process']:.2f}x | {'yes' if r['identical_to_in_process'] else 'NO'} |")
        lines.append("")
    fx = result.get("faiss")
    if fx:
        lines += [f"(b) `{fx['spec']['factory']}` on {fx['vectors']:,} CLIP-like normalised {fx['dim']}-d vectors: "
                  f"build {fx['build_s']:.0f} s (trained on {fx['trained_on']:,}), index RSS {fx['index_rss_mb']:.0f} MiB "
                  f"({fx['bytes_per_vector']:.0f} B/vector on disk), peak RSS {fx['peak_rss_mb']:.0f} MiB; one query at a "
                  f"time, k={fx['k']}, {fx['queries']} queries, recall@{fx['k']} vs exact search:", "",
                  "| nprobe | k_factor | recall@20 | p50 ms | p99 ms |", "|---:|---:|---:|---:|---:|"]
        default = fx["code_default"]
        for r in fx["rows"]:
            mark = " (default)" if default and (r["nprobe"], r["k_factor"]) == (default["nprobe"], default["k_factor"]) else ""
            lines.append(f"| {r['nprobe']}{mark} | {r['k_factor']} | {r['recall_at_20']:.3f} | {r['p50_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} |")
    return with_notes(lines, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="synthetic images for (a)")
    ap.add_argument("--batch", type=int, default=16, help="images per batch (and per Ray block) in (a)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds of all configurations in (a)")
    ap.add_argument("--vectors", type=int, default=1_000_000, help="vectors for (b)")
    ap.add_argument("--queries", type=int, default=1000, help="queries for (b)")
    ap.add_argument("--grid", default="16x1,8x16,16x8,16x16,16x32,32x32", help="nprobe x k_factor pairs for (b)")
    ap.add_argument("--workdir", default=None, help="where the temporary images and vectors go (default: $TMPDIR)")
    ap.add_argument("--skip-embedding", action="store_true")
    ap.add_argument("--skip-faiss", action="store_true")
    add_output_args(ap)
    a = ap.parse_args()
    run_sweep(a, lambda: sweep(a), markdown)


if __name__ == "__main__":
    main()
