"""CLIP commands: ``export clip``, ``classify``, ``embed``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .common import read_labels

BACKEND_HELP = "auto | ort | ort-cpu | ort-cuda (see `rsvlm-edge doctor`)"


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
    from ..export.clip import export_clip

    export_clip(checkpoint, output, precision=precision, calib=calib, max_batch=max_batch,
                activation=activation, overwrite=overwrite)


def _clip_runtime(bundle: Path, backend: str):
    """A ``ClipRuntime``; a VLM bundle gets a clear error instead of a traceback."""
    from ..bundle import open_bundle
    from ..models.clip.runtime import ClipRuntime

    b = open_bundle(bundle)
    if b.architecture != "clip":
        raise InputError(f"'{bundle}' is a {b.architecture} bundle; this command needs a CLIP bundle",
                         "use `rsvlm-edge ask` / `caption` for VLM bundles, or export a CLIP with `rsvlm-edge export clip`")
    return ClipRuntime(b, backend=backend)


def classify(
    bundle: Annotated[Path, typer.Argument(help="CLIP bundle (NAME.rsvlm)")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    labels: Annotated[str, typer.Option(help="comma-separated class names, or @file with one per line")],
    templates: Annotated[Optional[str], typer.Option(help="satellite | rs-ensemble | plain | a template with {}")] = None,
    top_k: Annotated[int, typer.Option(help="labels shown per image")] = 3,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write results as JSON here")] = None,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
) -> None:
    """Zero-shot scene classification: a table on stdout, optional JSON."""
    from rich.table import Table

    from ..atomic import write_json_atomic
    from ..images import list_images
    from ..models.clip.prompts import check_labels
    from ..progress import table_console

    if top_k < 1:
        raise InputError(f"--top-k must be >= 1 (got {top_k})", "e.g. --top-k 3")
    label_list = check_labels(read_labels(labels))
    files = list_images(images)
    rt = _clip_runtime(bundle, backend)
    res = rt.classify([str(f) for f in files], label_list, templates=templates)
    table = Table("image", *[f"top-{i + 1}" for i in range(min(top_k, len(label_list)))])
    results = []
    for f, top in zip(files, res.top(top_k)):
        table.add_row(str(f), *[f"{lab} ({p:.3f})" for lab, p in top])
        results.append({"image": str(f), "top": [{"label": lab, "prob": p} for lab, p in top]})
    table_console().print(table)
    if json_out:
        write_json_atomic(json_out, {"bundle": str(bundle), "labels": label_list, "results": results})


def embed(
    bundle: Annotated[Path, typer.Argument(help="CLIP bundle (NAME.rsvlm)")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders (recursed, sorted)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="embeddings .npy (N, E) float32; paths go to OUTPUT.paths.txt")],
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
) -> None:
    """Embed images for retrieval: L2-normalised float32 (N, E) .npy plus the list of paths."""
    import numpy as np

    from ..atomic import atomic_path
    from ..images import list_images
    from ..progress import info, progress

    if output.suffix != ".npy":
        raise InputError(f"output '{output}' must end in .npy", "e.g. -o archive.npy")
    files = list_images(images)
    rt = _clip_runtime(bundle, backend)
    chunks = []
    with progress() as bar:
        task = bar.add_task("embedding", total=len(files))
        for i in range(0, len(files), rt.max_batch):
            part = files[i:i + rt.max_batch]
            chunks.append(rt.encode_images([str(f) for f in part]))
            bar.advance(task, len(part))
    emb = np.concatenate(chunks).astype(np.float32)
    with atomic_path(output) as tmp:
        np.save(tmp, emb)
    paths_file = output.with_suffix(".paths.txt")
    with atomic_path(paths_file) as tmp:
        Path(tmp).write_text("".join(f"{f}\n" for f in files))
    info(f"wrote {output} {emb.shape} and {paths_file}")


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    export_app.command("clip")(export_clip_cmd)
    app.command()(classify)
    app.command()(embed)
