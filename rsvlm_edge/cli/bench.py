"""``rsvlm-edge bench``: CLIP image encoding or VLM decoding, with the torch peer in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .common import csv, fmt, ints


def bench(
    target: Annotated[str, typer.Argument(help="bundle path, builtin:remoteclip-vit-b-32 or builtin:tinyllava-1b")] = "builtin:remoteclip-vit-b-32",
    batch: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1,8,32",
    precision: Annotated[str, typer.Option(help="built-in CLIP only: comma-separated fp32,fp16,int8")] = "fp32,int8",
    backend: Annotated[str, typer.Option(help="auto, a backend or graph=NAME,decoder=NAME (see `rsvlm-edge doctor`)")] = "auto",
    warmup: Annotated[int, typer.Option(help="untimed iterations per point")] = 3,
    iters: Annotated[int, typer.Option(help="timed iterations per point")] = 10,
    peer: Annotated[bool, typer.Option(help="also time the torch reference (open_clip / transformers) in this run")] = True,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: all)")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="VLM only: decode steps timed")] = 32,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the result JSON here")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="draw throughput vs batch to this PNG")] = None,
) -> None:
    """Latency (p50/p90/p99), throughput and peak memory per batch size, with the torch peer."""
    from rich.table import Table

    from ..atomic import check_output_path
    from ..bench.timing import write_outputs
    from ..progress import table_console

    if iters < 1:
        raise InputError(f"--iters must be >= 1 (got {iters}): nothing would be timed", "e.g. --iters 10")
    if warmup < 0:
        raise InputError(f"--warmup must be >= 0 (got {warmup})", "e.g. --warmup 3")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1 (got {threads})", "e.g. --threads 2, or leave it out for all cores")
    batches = ints(batch)
    precisions = csv(precision)
    bad = [p for p in precisions if p not in PRECISIONS]
    if not precisions or bad:
        raise InputError(f"--precision '{precision}' is not a list of {', '.join(PRECISIONS)}",
                         "e.g. --precision fp32,int8")
    if json_out is not None:
        check_output_path(json_out, "--json output")
    if plot is not None:
        check_output_path(plot, "--plot output")
    vlm = _is_vlm_target(target)
    if vlm and max_new_tokens < 2:
        raise InputError(f"--max-new-tokens must be >= 2 for a VLM bench (got {max_new_tokens}): the first token "
                         "comes from the prefill, the rest are the timed decode steps", "e.g. --max-new-tokens 32")
    _check_bench_memory(target, max(batches), vlm, max_new_tokens)
    if vlm:
        from ..bench.llava import bench_vlm

        result = bench_vlm(target, batches, warmup=warmup, iters=iters, max_new_tokens=max_new_tokens,
                           backend=backend, peer=peer, threads=threads)
    else:
        from ..bench.clip import bench_clip

        result = bench_clip(target, batches, precisions, backend=backend, warmup=warmup, iters=iters,
                            peer=peer, threads=threads)
    rows = result["rows"]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = Table(*cols, title=f"{result['model']} — {result['device']}")
    for r in rows:
        table.add_row(*[fmt(r.get(c)) for c in cols])
    con = table_console()
    con.print(table)
    for n in result.get("notes", []):
        con.print(f"[yellow]note:[/yellow] {n}")
    write_outputs(result, json_out, plot)


PRECISIONS = ("fp32", "fp16", "int8")
# Built-in CLIP shapes for the memory estimate: image size, patch, width, head width, max batch.
_BUILTIN_CLIP_SHAPES = {"remoteclip-vit-b-32": (224, 32, 768, 64, 64)}


def _check_bench_memory(target: str, batch: int, vlm: bool, max_new_tokens: int) -> None:
    """Refuse a batch size whose memory (estimated from the bundle's shapes) is not available,
    before any model is loaded or any input allocated."""
    from ..builtin import builtin_name, is_builtin
    from .common import check_memory, largest_fitting

    if is_builtin(target):
        shape = _BUILTIN_CLIP_SHAPES.get(builtin_name(target))
        if shape is None:
            return  # built-in VLM: the KV cache check of the runtime applies
        s, patch, width, head, cap = shape
        tokens = (s // patch) ** 2 + 1

        def need(n: int) -> int:
            return n * 3 * s * s + min(n, cap) * 4 * (3 * s * s + 12 * tokens * width + width // head * tokens ** 2)
    else:
        from ..bundle import open_bundle

        b = open_bundle(target, verify=False)
        if vlm:
            from ..models.llava.config import VlmConfig
            from ..models.llava.runtime import generation_bytes

            cfg = VlmConfig.from_dict(b.manifest.model.model_dump())
            positions = min(cfg.decoder.max_position_embeddings, cfg.vision.num_tokens + 64 + max_new_tokens)

            def need(n: int) -> int:
                return generation_bytes(cfg, n, positions)
        else:
            from ..models.clip.runtime import clip_batch_bytes

            def need(n: int) -> int:
                return clip_batch_bytes(b, n)
    fits = largest_fitting(need)
    check_memory(need(batch), f"--batch {batch}",
                 f"use batch sizes up to {fits}" if 1 < batch and fits < batch else "free some memory, or use a smaller model")


def _is_vlm_target(target: str) -> bool:
    from ..builtin import BUILTIN_VLM, builtin_name, is_builtin
    from ..bundle import open_bundle

    if is_builtin(target):
        return builtin_name(target) in BUILTIN_VLM
    return open_bundle(target, verify=False).architecture == "llava"


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    app.command()(bench)
