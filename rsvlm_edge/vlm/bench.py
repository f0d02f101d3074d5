"""VLM timing: vision encode, time to first token, decode tokens/s, peak memory.

``bench_vlm(target, ...)`` takes a bundle path or ``builtin:tinyllava-1b`` (TinyLlama-1.1B decoder
shape + CLIP ViT-L/14-336 vision tower with seeded random weights, exported once into
``~/.cache/rsvlm-edge/builtin/``; random weights: timing only). The lead's generic
``rsvlm-edge bench`` renders the rows.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError

BUILTIN_PREFIX = "builtin:"
BUILTINS = ("tinyllava-1b",)
BENCH_QUESTION = "Describe this satellite image in detail."


def builtin_cache_dir() -> Path:
    base = os.environ.get("RSVLM_EDGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rsvlm-edge")
    return Path(base) / "builtin"


def resolve_target(target: str, progress: Callable[[str], None] | None = None) -> Path:
    """Bundle path for ``target``; builds a builtin model once (needs the [export] extras)."""
    if not target.startswith(BUILTIN_PREFIX):
        return Path(target)
    name = target[len(BUILTIN_PREFIX) :]
    if name not in BUILTINS:
        raise InputError(f"unknown builtin model '{name}'", f"use one of {', '.join(BUILTIN_PREFIX + b for b in BUILTINS)}")
    bundle = builtin_cache_dir() / f"{name}.rsvlm"
    if (bundle / "manifest.json").is_file():
        return bundle
    try:
        from ..export.vlm import export_vlm
        from .testing import TINYLLAVA_1B, make_tiny_llava
    except ImportError as e:
        raise InputError(
            f"building {target} needs the export extras ({e})", "pip install 'rsvlm-edge[export]'"
        ) from None
    import tempfile

    step = progress or (lambda _msg: None)
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=bundle.parent) as tmp:
        step(f"building {target} (seeded random weights)")
        make_tiny_llava(Path(tmp) / "ckpt", layout="hf", spec=TINYLLAVA_1B, dtype="float16")
        export_vlm(Path(tmp) / "ckpt", bundle, weights="fp16", overwrite=True, verify=False, progress=step)
    return bundle


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def bench_vlm(
    target: str,
    batches: list[int] = [1, 8],  # noqa: B006 - read only
    warmup: int = 1,
    iters: int = 3,
    max_new_tokens: int = 32,
    backend: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time ``target`` at each batch size; median over ``iters`` runs after ``warmup`` runs."""
    from .runtime import VlmRuntime

    if not batches or min(batches) < 1:
        raise InputError(f"batch sizes {batches} must be >= 1", "e.g. --batch 1 --batch 8")
    if iters < 1 or warmup < 0 or max_new_tokens < 2:
        raise InputError("need iters >= 1, warmup >= 0 and max_new_tokens >= 2")
    path = resolve_target(target, progress)
    runtime = VlmRuntime(path, backend=backend, max_batch=max(batches))
    size = runtime.config.vision.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(max(batches), size, size, 3), dtype=np.uint8)
    chunks = runtime.tokenize(runtime.build_prompt(BENCH_QUESTION))
    notes = [f"decoder ops: {runtime.backends['decoder']}, vision: {runtime.backends['vision']}"]
    if target.startswith(BUILTIN_PREFIX):
        notes.insert(0, "random weights: timing only")
    notes.append("bandwidth_floor_pct needs the device's peak memory bandwidth; not known on CPU")
    rows = []
    for batch in batches:
        if progress:
            progress(f"batch {batch}")
        imgs = images[:batch]
        samples: list[tuple[float, float, float, int]] = []
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            feats = runtime.encode_images(imgs)
            vision_s = time.perf_counter() - t0
            runtime.generate_tokens(feats, [chunks] * batch, max_new_tokens=max_new_tokens, ignore_eos=True)
            st = runtime.stats
            if i >= warmup:
                samples.append((vision_s, st.prefill_s, st.decode_s, st.decode_steps))
        vision_ms = float(np.median([s[0] for s in samples]) * 1e3)
        prefill_ms = float(np.median([s[1] for s in samples]) * 1e3)
        decode_s = float(np.median([s[2] for s in samples]))
        steps = samples[0][3]
        tok_s = batch * steps / decode_s if decode_s > 0 else float("nan")
        rows.append(
            {
                "batch": batch,
                "prompt_tokens": len(chunks[0]) + len(chunks[1]) + runtime.num_image_tokens,
                "new_tokens": max_new_tokens,
                "vision_ms": vision_ms,
                "prefill_ms": prefill_ms,
                "ttft_ms": vision_ms + prefill_ms,
                "decode_tok_s": tok_s,
                "decode_ms_per_step": decode_s / steps * 1e3 if steps else float("nan"),
                "weight_gb_s": runtime.decoder.weight_bytes * steps / decode_s / 1e9 if decode_s > 0 else float("nan"),
                "peak_rss_mb": _peak_rss_mb(),
                "bandwidth_floor_pct": None,
            }
        )
    return {
        "model": target,
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "precision": runtime.bundle.manifest.get("precision", {}),
        "notes": notes,
        "rows": rows,
    }
