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

    from ..bench.timing import write_outputs
    from ..progress import table_console

    if iters < 1 or warmup < 0:
        raise InputError(f"bench needs --iters >= 1 and --warmup >= 0 (got {iters}, {warmup})", "e.g. --iters 10")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1 (got {threads})", "e.g. --threads 2")
    batches = ints(batch)
    if _is_vlm_target(target):
        from ..bench.llava import bench_vlm

        result = bench_vlm(target, batches, warmup=warmup, iters=iters, max_new_tokens=max_new_tokens,
                           backend=backend, peer=peer, threads=threads)
    else:
        from ..bench.clip import bench_clip

        result = bench_clip(target, batches, csv(precision), backend=backend, warmup=warmup, iters=iters,
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


def _is_vlm_target(target: str) -> bool:
    from ..builtin import BUILTIN_VLM, builtin_name, is_builtin
    from ..bundle import open_bundle

    if is_builtin(target):
        return builtin_name(target) in BUILTIN_VLM
    return open_bundle(target, verify=False).architecture == "llava"


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    app.command()(bench)
