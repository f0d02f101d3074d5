"""CLIP commands: ``export clip``, ``classify``, ``embed``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .common import ON_ERROR_HELP, OnError, read_labels

BACKEND_HELP = "auto | trt | ort | ort-tensorrt | ort-cuda | ort-cpu (see `rsvlm-edge doctor`)"


def export_clip_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="open_clip state dict (.pt/.bin/.safetensors), SkyCLIP training checkpoint, or transformers CLIPModel directory")],
    output: Annotated[Path, typer.Option("-o", "--output", help="bundle directory to write, NAME.rsvlm")],
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8 (static QDQ on the image encoder)")] = "fp32",
    calib: Annotated[Optional[Path], typer.Option(help="folder of calibration images for int8")] = None,
    max_batch: Annotated[int, typer.Option(help="largest batch the runtime sends at once")] = 64,
    activation: Annotated[Optional[str], typer.Option(help="gelu | quick_gelu: overrides --preset and the file name (see README)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
    preset: Annotated[Optional[str], typer.Option(help="remoteclip | georsclip | skyclip | openai | laion: load the checkpoint as its project does (activation); default: recognised from the released file name")] = None,
    calib_batch: Annotated[int, typer.Option(help="int8: calibration images decoded and run at once (1 keeps memory lowest: ViT-L/14-336 needs about 0.7 GB more per extra image; small models calibrate no faster in larger batches)")] = 1,
    engine: Annotated[bool, typer.Option(help="also build TensorRT engines for this GPU (see `rsvlm-edge build-engine`); needs TensorRT")] = False,
    native: Annotated[bool, typer.Option(help="also write the image tower's weights for the native-vit backend (image.native.safetensors; --no-native keeps the bundle smaller)")] = True,
) -> None:
    """Export an open_clip / RemoteCLIP / GeoRSCLIP / SkyCLIP / HF CLIP checkpoint.

    Prints the activation chosen and why; the reason is kept in the manifest (model.activation_reason).
    Order: --activation, --preset, a transformers config.json, the released file name, the family.

    --precision int8 writes image.onnx (U8S8, for onnxruntime on CPUs) and image.s8s8.onnx (S8S8, for TensorRT) from one calibration pass."""
    from ..export.clip_checkpoint import ACTIVATIONS, PRESETS
    from .common import positive

    if preset is not None and preset not in PRESETS:
        raise InputError(f"unknown --preset '{preset}'", f"choose one of {', '.join(PRESETS)}")
    if activation is not None and activation not in ACTIVATIONS:
        raise InputError(f"unknown --activation '{activation}'", f"choose one of {', '.join(ACTIVATIONS)}")
    positive(calib_batch, "--calib-batch", "8")
    if engine:
        from ..backends.graph_trt import require_trt

        require_trt()  # before the export, not after minutes of it
    from ..export.clip import export_clip

    bundle = export_clip(checkpoint, output, precision=precision, calib=calib, max_batch=max_batch,
                         activation=activation, overwrite=overwrite, preset=preset, calib_batch=calib_batch,
                         native=native)
    if engine:
        from ..backends.graph_trt import build_engines

        build_engines(bundle)


def _clip_runtime(bundle: Path, backend: str, batch_size: int | None = None):
    """A ``ClipRuntime``; a VLM bundle gets a clear error instead of a traceback. With ``batch_size``
    (images prepared at once) the memory that needs is checked first, before anything is loaded."""
    from ..bundle import open_bundle
    from ..models.clip.runtime import ClipRuntime, clip_batch_bytes
    from .common import check_memory, largest_fitting, smaller_batch_fix

    b = open_bundle(bundle)
    if b.architecture != "clip":
        raise InputError(f"'{bundle}' is a {b.architecture} bundle; this command needs a CLIP bundle",
                         "use `rsvlm-edge ask` / `caption` for VLM bundles, or export a CLIP with `rsvlm-edge export clip`")
    if batch_size is not None:
        fits = largest_fitting(lambda n: clip_batch_bytes(b, n))
        check_memory(clip_batch_bytes(b, batch_size), f"--batch-size {batch_size}",
                     smaller_batch_fix("--batch-size", fits, batch_size))
    return ClipRuntime(b, backend=backend)


def _strict_image_error(e: InputError) -> InputError:
    return InputError(e.message, f"{e.fix + '; or ' if e.fix else ''}pass --on-error skip to leave unreadable images out")


def _images_in_batches(rt, files: list[Path], batch: int, on_error, label: str):
    """Yield (embeddings (K, E), kept files, skipped [(file, reason)]) per batch of ``files``."""
    import numpy as np

    from ..progress import progress
    from .common import OnError

    skip = on_error == OnError.skip
    with progress() as bar:
        task = bar.add_task(label, total=len(files))
        for i in range(0, len(files), batch):
            part = files[i:i + batch]
            try:
                loaded = rt.load_pixels([str(f) for f in part], skip_errors=skip)
            except InputError as e:
                raise _strict_image_error(e) from None
            emb = rt.encode_images(loaded.pixels) if loaded.kept else np.zeros((0, rt.embed_dim), np.float32)
            yield emb, [part[k] for k in loaded.kept], [(part[k], why) for k, why in loaded.skipped]
            bar.advance(task, len(part))


def _warn_skipped(skipped: list[tuple[Path, str]], total: int, where: str) -> None:
    from ..progress import warn
    from .common import shown

    if not skipped:
        return
    warn(f"{len(skipped)} of {total} images skipped (could not be read); the list and reasons are in {where}")
    for f, why in skipped[:5]:
        warn(f"skipped {shown(f)}: {shown(why)}")
    if len(skipped) > 5:
        warn(f"... and {len(skipped) - 5} more")


def _none_readable(n: int) -> InputError:
    return InputError(f"none of the {n} images could be read (all skipped)",
                      "check the input files; run without --on-error skip to see the first error")


def classify(
    bundle: Annotated[Path, typer.Argument(help="CLIP bundle (NAME.rsvlm)")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    labels: Annotated[str, typer.Option(help="comma-separated class names, or @file with one per line (UTF-8)")],
    templates: Annotated[Optional[str], typer.Option(help="satellite | rs-ensemble | plain | a template with one {}")] = None,
    top_k: Annotated[int, typer.Option(help="labels shown per image")] = 3,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write results as JSON here (atomically)")] = None,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
    batch_size: Annotated[Optional[int], typer.Option(help="images prepared and encoded at once (default: the bundle's max batch; bounded by available memory)")] = None,
    on_error: Annotated[OnError, typer.Option(help=ON_ERROR_HELP)] = OnError.strict,
) -> None:
    """Zero-shot scene classification: a table on stdout, optional JSON.

    With --on-error skip, unreadable images are left out and listed with their reasons under "skipped" in the JSON (and counted in a warning)."""
    from contextlib import ExitStack

    from rich.table import Table

    from ..atomic import atomic_path
    from ..images import list_images
    from ..models.clip.prompts import check_labels, resolve_templates
    from ..progress import table_console
    from .common import positive, shown

    if top_k < 1:
        raise InputError(f"--top-k must be >= 1 (got {top_k})", "e.g. --top-k 3")
    positive(batch_size, "--batch-size", "32")
    label_list = check_labels(read_labels(labels))
    if templates is not None:
        resolve_templates(templates)  # a bad template fails before anything is loaded
    files = list_images(images)
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(json_out, what="--json output")) if json_out else None
        rt = _clip_runtime(bundle, backend, batch_size)
        rt.class_embeddings(label_list, templates)  # labels x templates encoded once, before the images
        results: list[dict] = []
        skipped: list[tuple[Path, str]] = []
        for emb, kept, bad in _images_in_batches(rt, files, batch_size or rt.max_batch, on_error, "classifying"):
            skipped += bad
            if not kept:
                continue
            res = rt.classify_embeddings(emb, label_list, templates)
            for f, top in zip(kept, res.top(top_k)):
                results.append({"image": str(f), "top": [{"label": lab, "prob": p} for lab, p in top]})
        if not results:
            raise _none_readable(len(files))
        table = Table("image", *[f"top-{i + 1}" for i in range(min(top_k, len(label_list)))])
        for r in results:
            table.add_row(shown(r["image"]), *[f"{t['label']} ({t['prob']:.3f})" for t in r["top"]])
        table_console().print(table)
        if tmp is not None:
            import json

            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"bundle": str(bundle), "labels": label_list, "results": results,
                           "skipped": [{"image": str(p), "reason": why} for p, why in skipped]}, f, indent=2)
                f.write("\n")
    _warn_skipped(skipped, len(files), "the JSON output (--json)" if json_out else "the messages above (add --json to keep them)")


def embed(
    bundle: Annotated[Path, typer.Argument(help="CLIP bundle (NAME.rsvlm)")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders (recursed, sorted)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="one .npz file holding embeddings (N, E) float32 and paths (N,) together; see the command help")],
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
    batch_size: Annotated[Optional[int], typer.Option(help="images prepared and encoded at once (default: the bundle's max batch; bounded by available memory)")] = None,
    on_error: Annotated[OnError, typer.Option(help=ON_ERROR_HELP)] = OnError.strict,
) -> None:
    """Embed images for retrieval into one .npz file, written atomically.

    Arrays in the file (read with numpy.load; no pickle needed):

    embeddings: (N, E) float32, L2-normalised; row i belongs to paths entry i.

    paths: (N,) str, each image as given or found (any character, newlines included).

    skipped, skipped_reasons: (M,) str, images left out with --on-error skip, and why.

    bundle: the bundle path.

    Embeddings and paths live in one file so that a failure can never leave one without the other (a .npy output with a .paths.txt beside it is refused for that reason).
    """
    import numpy as np

    from ..atomic import atomic_path
    from ..images import list_images
    from ..progress import info
    from .common import check_memory, human_bytes, positive, shown

    if output.suffix.lower() != ".npz":
        hint = output.with_suffix(".npz") if output.suffix else Path(f"{output}.npz")
        raise InputError(f"output '{output}' must be a .npz file (embeddings and their paths are kept together in one file)",
                         f"use -o {hint}; read it with numpy.load('{hint.name}')['embeddings'] and ['paths']")
    positive(batch_size, "--batch-size", "32")
    files = list_images(images)
    with atomic_path(output, what="embeddings file") as tmp:
        rt = _clip_runtime(bundle, backend, batch_size)
        keep_bytes = len(files) * rt.embed_dim * 4 * 2
        check_memory(keep_bytes, f"keeping {len(files)} embeddings of {rt.embed_dim} dims ({human_bytes(keep_bytes)})",
                     "embed the folder in parts (several runs, one per sub-folder)")
        chunks = []
        kept: list[Path] = []
        skipped: list[tuple[Path, str]] = []
        for emb, ok, bad in _images_in_batches(rt, files, batch_size or rt.max_batch, on_error, "embedding"):
            chunks.append(emb.astype(np.float32, copy=False))
            kept += ok
            skipped += bad
        if not kept:
            raise _none_readable(len(files))
        emb = np.concatenate(chunks)
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=emb, paths=np.array([str(p) for p in kept], dtype=str),
                     skipped=np.array([str(p) for p, _ in skipped], dtype=str),
                     skipped_reasons=np.array([why for _, why in skipped], dtype=str),
                     bundle=np.array(str(bundle)))
    info(f"wrote {shown(output)}: embeddings {emb.shape} float32 and their {len(kept)} paths")
    _warn_skipped(skipped, len(files), f"'skipped' and 'skipped_reasons' of {shown(output)}")


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    export_app.command("clip")(export_clip_cmd)
    app.command()(classify)
    app.command()(embed)
