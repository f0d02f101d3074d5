"""``rsvlm-edge`` command line: export, classify, embed, bench, info (and ask/caption for VLMs).

Every user error prints one line (plus its fix) and exits with code 2, without a traceback and
without leaving a partial output file behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .atomic import atomic_path, write_json_atomic
from .errors import InputError, RsvlmError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run remote-sensing vision-language models (CLIP, LLaVA-class) from compiled bundles.")
export_app = typer.Typer(no_args_is_help=True, help="Export a checkpoint to a NAME.rsvlm bundle.")
app.add_typer(export_app, name="export")


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    try:
        out = [int(x) for x in _csv(s)]
    except ValueError:
        raise InputError(f"'{s}' is not a comma-separated list of integers", "e.g. --batch 1,8,32") from None
    if not out or min(out) < 1:
        raise InputError(f"batch sizes must be >= 1, got '{s}'")
    return out


@export_app.command("clip")
def export_clip_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="open_clip state dict (.pt/.bin/.safetensors), SkyCLIP training checkpoint, or transformers CLIPModel directory")],
    output: Annotated[Path, typer.Option("-o", "--output", help="bundle directory to write, NAME.rsvlm")],
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8 (static QDQ on the image encoder)")] = "fp32",
    calib: Annotated[Optional[Path], typer.Option(help="folder of calibration images for int8")] = None,
    max_batch: Annotated[int, typer.Option(help="largest batch the runtime sends at once")] = 64,
    activation: Annotated[Optional[str], typer.Option(help="gelu | quick_gelu (default: by family; see README)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
) -> None:
    """Export an open_clip / RemoteCLIP / GeoRSCLIP / SkyCLIP / HF CLIP checkpoint."""
    from .export.clip import export_clip

    export_clip(checkpoint, output, precision=precision, calib=calib, max_batch=max_batch,
                activation=activation, overwrite=overwrite)


@app.command()
def classify(
    bundle: Annotated[Path, typer.Argument(help="CLIP bundle (NAME.rsvlm)")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    labels: Annotated[str, typer.Option(help="comma-separated class names, or @file with one per line")],
    templates: Annotated[Optional[str], typer.Option(help="satellite | rs-ensemble | plain | a template with {}")] = None,
    top_k: Annotated[int, typer.Option(help="labels shown per image")] = 3,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write results as JSON here")] = None,
    backend: Annotated[str, typer.Option(help="auto | ort | native | trt")] = "auto",
) -> None:
    """Zero-shot scene classification: a table on stdout, optional JSON."""
    import rsvlm_edge
    from .progress import table_console
    from rich.table import Table

    from .preprocess import list_images
    from .prompts import check_labels

    label_list = check_labels(_read_labels(labels))
    files = list_images(images)
    rt = rsvlm_edge.load(bundle, backend=backend)
    res = rt.classify([str(f) for f in files], label_list, templates=templates)
    table = Table("image", *[f"top-{i + 1}" for i in range(min(top_k, len(label_list)))])
    results = []
    for f, top in zip(files, res.top(top_k)):
        table.add_row(str(f), *[f"{lab} ({p:.3f})" for lab, p in top])
        results.append({"image": str(f), "top": [{"label": lab, "prob": p} for lab, p in top]})
    table_console().print(table)
    if json_out:
        write_json_atomic(json_out, {"bundle": str(bundle), "labels": label_list, "results": results})


def _read_labels(labels: str) -> list[str]:
    if labels.startswith("@"):
        p = Path(labels[1:])
        if not p.is_file():
            raise InputError(f"label file '{p}' does not exist")
        return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    return _csv(labels) if labels.strip() else []


@app.command()
def embed(
    bundle: Annotated[Path, typer.Argument(help="CLIP bundle (NAME.rsvlm)")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders (recursed, sorted)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="embeddings .npy (N, E) float32; paths go to OUTPUT.paths.txt")],
    backend: Annotated[str, typer.Option(help="auto | ort | native | trt")] = "auto",
) -> None:
    """Embed images for retrieval: L2-normalised float32 (N, E) .npy plus the list of paths."""
    import numpy as np

    import rsvlm_edge

    from .preprocess import list_images
    from .progress import info, progress

    files = list_images(images)
    rt = rsvlm_edge.load(bundle, backend=backend)
    chunks = []
    with progress() as bar:
        task = bar.add_task("embedding", total=len(files))
        for i in range(0, len(files), rt.max_batch):
            part = files[i:i + rt.max_batch]
            chunks.append(rt.encode_images([str(f) for f in part]))
            bar.advance(task, len(part))
    emb = np.concatenate(chunks).astype(np.float32)
    if output.suffix != ".npy":
        raise InputError(f"output '{output}' must end in .npy")
    with atomic_path(output) as tmp:
        np.save(tmp, emb)
    paths_file = output.with_suffix(".paths.txt")
    with atomic_path(paths_file) as tmp:
        Path(tmp).write_text("".join(f"{f}\n" for f in files))
    info(f"wrote {output} {emb.shape} and {paths_file}")


@app.command()
def bench(
    target: Annotated[str, typer.Argument(help="bundle path, builtin:remoteclip-vit-b-32 or builtin:tinyllava-1b")] = "builtin:remoteclip-vit-b-32",
    batch: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1,8,32",
    precision: Annotated[str, typer.Option(help="built-in CLIP only: comma-separated fp32,fp16,int8")] = "fp32,int8",
    backend: Annotated[str, typer.Option(help="auto | ort | native | trt")] = "auto",
    warmup: Annotated[int, typer.Option(help="untimed iterations per point")] = 3,
    iters: Annotated[int, typer.Option(help="timed iterations per point")] = 10,
    peer: Annotated[bool, typer.Option(help="also time the torch reference (open_clip / transformers) in this run")] = True,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: all)")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="VLM only: decode steps timed")] = 32,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the result JSON here")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="draw throughput vs batch to this PNG")] = None,
) -> None:
    """Latency (p50/p90/p99), throughput and peak memory per batch size, with the torch peer."""
    from .progress import table_console
    from rich.table import Table

    from .bench import bench_clip, write_outputs

    batches = _ints(batch)
    if _is_vlm_target(target):
        from .vlm.bench import bench_vlm

        result = bench_vlm(target, batches, warmup=warmup, iters=iters, max_new_tokens=max_new_tokens,
                           backend=backend, peer=peer, threads=threads)
        result.setdefault("kind", "vlm")
    else:
        result = bench_clip(target, batches, _csv(precision), backend=backend, warmup=warmup, iters=iters,
                            peer=peer, threads=threads)
    rows = result["rows"]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = Table(*cols, title=f"{result['model']} — {result['device']}")
    for r in rows:
        table.add_row(*[_fmt(r.get(c)) for c in cols])
    con = table_console()
    con.print(table)
    for n in result.get("notes", []):
        con.print(f"[yellow]note:[/yellow] {n}")
    write_outputs(result, json_out, plot)


def _is_vlm_target(target: str) -> bool:
    from .builtin import BUILTIN_VLM

    if target.startswith("builtin:"):
        return target.removeprefix("builtin:") in BUILTIN_VLM
    from .bundle import open_bundle

    return open_bundle(target, verify=False).architecture == "llava"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)


@app.command()
def info(bundle: Annotated[Path, typer.Argument(help="bundle directory")]) -> None:
    """Verify a bundle (sha256 of every file) and print its manifest summary."""
    from .bundle import open_bundle

    b = open_bundle(bundle)
    m = b.manifest
    summary = {k: m.get(k) for k in ("name", "architecture", "format_version", "created_by", "precision",
                                      "max_batch", "source", "validation")}
    summary["files"] = {k: v["size"] for k, v in m["files"].items()}
    typer.echo(json.dumps(summary, indent=2))


def _register_vlm() -> None:
    try:
        from .cli_vlm import register
    except ImportError:
        return
    register(app, export_app)


_register_vlm()

from .cli_geo import register as _register_geo  # noqa: E402

_register_geo(app)


def main() -> None:
    import click

    from .progress import console

    try:
        app(standalone_mode=False)
    except RsvlmError as e:
        console.print(f"[bold red]error:[/bold red] {e.message}", highlight=False)
        if e.fix:
            console.print(f"  [bold]fix:[/bold] {e.fix}", highlight=False)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
