"""VLM timing: vision encode, time to first token, decode tokens/s, peak memory.

``bench_vlm(target, ...)`` takes a bundle path or ``builtin:tinyllava-1b`` (TinyLlama-1.1B decoder
shape + CLIP ViT-L/14-336 vision tower with seeded random weights, built once into the builtin
cache; random weights: timing only). With ``peer=True`` transformers' ``generate`` is timed on the
same weights in the same process (needs the export extras and the transformers checkpoint the
bundle was exported from). The lead's generic ``rsvlm-edge bench`` renders the rows.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..builtin import builtin_name, builtin_vlm_paths, is_builtin, resolve_target
from ..bundle import open_bundle
from ..errors import InputError
from .timing import measure_read_gb_s, median, peak_rss_mb, reset_peak_rss

BENCH_QUESTION = "Describe this satellite image in detail."
Progress = Callable[[str], None]


def bench_vlm(
    target: str,
    batches: list[int],
    warmup: int = 1,
    iters: int = 3,
    max_new_tokens: int = 32,
    backend: str = "auto",
    peer: bool = False,
    progress: Progress | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Time ``target`` at each batch size (median over ``iters`` runs after ``warmup`` runs).
    ``threads``: onnxruntime intra-op threads for the vision tower (default: onnxruntime's)."""
    from ..models.llava.runtime import VlmRuntime

    if not batches or min(batches) < 1:
        raise InputError(f"batch sizes {batches} must be >= 1", "e.g. --batch 1,8")
    if iters < 1 or warmup < 0 or max_new_tokens < 2:
        raise InputError("bench needs iters >= 1, warmup >= 0 and max_new_tokens >= 2")
    path = resolve_target(target, progress)
    runtime = VlmRuntime(open_bundle(path, verify=False), backend=backend, max_batch=max(batches), threads=threads)
    size = runtime.config.vision.image_size
    images = np.random.default_rng(0).integers(0, 256, size=(max(batches), size, size, 3), dtype=np.uint8)
    chunks = runtime.tokenize(runtime.build_prompt(BENCH_QUESTION))
    prompt_tokens = sum(len(c) for c in chunks) + runtime.num_image_tokens
    notes = [f"decoder: {runtime.backends['decoder']} ops, vision: {runtime.backends['vision']}"]
    if is_builtin(target):
        notes.insert(0, "random weights: timing only")
    read_gb_s = measure_read_gb_s()
    notes.append(
        f"bandwidth_floor_pct: time to stream the decoder weights once at this machine's measured GEMV "
        f"read bandwidth ({read_gb_s:.1f} GB/s) / measured decode step time"
    )
    rows: list[dict[str, Any]] = []
    for batch in batches:
        if progress:
            progress(f"rsvlm-edge batch {batch}")
        reset_peak_rss()  # peak of this point: the loaded model plus this batch's activations
        vision, prefill, decode = [], [], []
        steps = 0
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            feats = runtime.encode_images(images[:batch])
            vision_s = time.perf_counter() - t0
            stats = runtime.generate_result(feats, [chunks] * batch, max_new_tokens=max_new_tokens,
                                            ignore_eos=True).stats
            if i >= warmup:
                vision.append(vision_s)
                prefill.append(stats.prefill_s)
                decode.append(stats.decode_s)
                steps = stats.decode_steps
        decode_s = median(decode)
        rows.append(
            {
                "backend": f"rsvlm-edge ({runtime.backends['decoder']})",
                "precision": runtime.bundle.manifest.parts["decoder"].precision,
                "batch": batch,
                "prompt_tokens": prompt_tokens,
                "vision_ms": median(vision) * 1e3,
                "prefill_ms": median(prefill) * 1e3,
                "ttft_ms": (median(vision) + median(prefill)) * 1e3,
                "decode_tok_s": batch * steps / decode_s,
                "weights_gb_s": runtime.decoder.weight_bytes * steps / decode_s / 1e9,
                "peak_rss_mb": peak_rss_mb(),
                "bandwidth_floor_pct": 100.0 * runtime.decoder.weight_bytes * steps / decode_s / 1e9 / read_gb_s,
            }
        )
    precision = {name: part.precision for name, part in runtime.bundle.manifest.parts.items()}
    ckpt = _peer_checkpoint(target, runtime) if peer else None
    preprocess, num_image_tokens = runtime.preprocess, runtime.num_image_tokens
    del runtime  # free the decoder weights and KV cache before the peer loads its own copy
    if peer:
        if ckpt is None:
            notes.append("peer skipped: the transformers checkpoint this bundle came from is not available")
        else:
            peer_rows = _bench_transformers(ckpt, preprocess, num_image_tokens, images, chunks, batches, warmup,
                                            iters, max_new_tokens, progress)
            for ours, theirs in zip(rows, peer_rows):
                ours["decode_vs_peer"] = ours["decode_tok_s"] / theirs["decode_tok_s"]
                ours["ttft_vs_peer"] = theirs["ttft_ms"] / ours["ttft_ms"]
            rows += peer_rows
            notes.append("peer: transformers LlavaForConditionalGeneration.generate, fp32 eager, same weights, same process")
    return {
        "kind": "vlm",
        "model": target,
        "device": f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rsvlm_edge": __version__,
        "warmup": warmup,
        "iters": iters,
        "max_new_tokens": max_new_tokens,
        "precision": precision,
        "read_gb_s": read_gb_s,
        "notes": notes,
        "rows": rows,
    }


def _peer_checkpoint(target: str, runtime) -> Path | None:
    if is_builtin(target):
        ckpt = builtin_vlm_paths(builtin_name(target))[0]
    else:
        src = runtime.bundle.manifest.source.checkpoint
        ckpt = Path(src) if src else None
    layout = runtime.bundle.model.source_layout
    if ckpt is None or layout != "hf" or not (ckpt / "config.json").is_file():
        return None
    return ckpt


class _TokenClock:
    """A transformers streamer that timestamps each generated token (the prompt is skipped)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def _bench_transformers(
    ckpt: Path,
    preprocess: Any,
    num_image_tokens: int,
    images: np.ndarray,
    chunks: list[list[int]],
    batches: list[int],
    warmup: int,
    iters: int,
    max_new_tokens: int,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    """transformers generate (greedy, fp32) on the same weights, prompt and images."""
    import torch
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    image_token = int(model.config.image_token_index)
    ids = chunks[0] + [image_token] * num_image_tokens + chunks[1]
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    rows = []
    for batch in batches:
        if progress:
            progress(f"transformers batch {batch}")
        reset_peak_rss()
        pixels = (torch.from_numpy(images[:batch]).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        input_ids = torch.tensor([ids] * batch)

        ttft, decode = [], []
        for i in range(warmup + iters):
            stamps = _TokenClock()
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(input_ids=input_ids, pixel_values=pixels, do_sample=False, streamer=stamps,
                               max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=0)
            if i >= warmup:
                ttft.append(stamps.times[0] - t0)
                decode.append(stamps.times[-1] - stamps.times[0])
        rows.append(
            {
                "backend": "transformers",
                "precision": "fp32",
                "batch": batch,
                "prompt_tokens": len(ids),
                "ttft_ms": median(ttft) * 1e3,
                "decode_tok_s": batch * (max_new_tokens - 1) / median(decode),
                "peak_rss_mb": peak_rss_mb(),
                "bandwidth_floor_pct": None,
            }
        )
    return rows
