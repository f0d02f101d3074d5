"""VLM commands: ``rsvlm-edge ask``, ``rsvlm-edge caption`` and ``rsvlm-edge export vlm``.

``register(app, export_app)`` is called by ``rsvlm_edge.cli``. Errors are ``RsvlmError``s, which
the main CLI prints as one line (exit code 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError

EXPORT_STEPS = 7  # progress steps reported by export_vlm (see rsvlm_edge/export/llava.py)


PROMPT_ALLOWANCE = 64  # text tokens of a typical prompt, for the memory estimate


def _load_vlm(bundle: Path, backend: str, batch: int | None = None, max_new_tokens: int | None = None, **kwargs):
    """A ``VlmRuntime`` for ``bundle``; a CLIP bundle gets a clear error instead of a traceback.
    With ``batch``, the memory a batch of that size needs is checked first (before allocating)."""
    from ..bundle import open_bundle
    from ..models.llava.config import VlmConfig
    from ..models.llava.runtime import VlmRuntime, generation_bytes
    from .common import check_memory, largest_fitting, smaller_batch_fix

    b = open_bundle(bundle)
    if b.architecture != "llava":
        raise InputError(
            f"'{bundle}' is a {b.architecture} bundle; ask, caption and compare need a VLM bundle",
            "use `rsvlm-edge classify` / `embed` for CLIP bundles, or export a VLM with `rsvlm-edge export vlm`",
        )
    if batch is not None:
        cfg = VlmConfig.from_dict(b.manifest.model.model_dump())
        positions = min(cfg.decoder.max_position_embeddings,
                        cfg.vision.num_tokens + PROMPT_ALLOWANCE + (max_new_tokens or 0))
        fits = largest_fitting(lambda n: generation_bytes(cfg, n, positions))
        check_memory(generation_bytes(cfg, batch, positions), f"--batch-size {batch}",
                     smaller_batch_fix("--batch-size", fits, batch))
    return VlmRuntime(b, backend=backend, **kwargs)


def _write_json(tmp: str, obj) -> None:
    import json

    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def export_vlm_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="LLaVA repo checkpoint dir (GeoChat, RS-LLaVA, VHM) or transformers Llava dir")],
    output: Annotated[Path, typer.Option("-o", "--output", help="bundle directory to write, NAME.rsvlm")],
    weights: Annotated[str, typer.Option(help="decoder weights: fp16 | w8 (INT8 per channel) | w4 (INT4, groups of 128) | fp32; w8/w4 are weight-only")] = "fp16",
    image_size: Annotated[Optional[int], typer.Option(help="vision resolution (position embeddings interpolated); GeoChat defaults to 504")] = None,
    template: Annotated[Optional[str], typer.Option(help="chat template: llava_v1 | vicuna_v1 | llama_2 (default llava_v1)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
    verify: Annotated[bool, typer.Option(help="compare vision.onnx with torch after export")] = True,
    vision_tower: Annotated[Optional[Path], typer.Option(help="CLIP model dir for checkpoints saved without vision weights")] = None,
    w4_method: Annotated[str, typer.Option(help="w4 only: rtn (round to nearest, seconds) | gptq (error-compensating; the most accurate with the default rotation) | awq (activation-aware scales) | awq-gptq (both; the most accurate with --no-rotate); all but rtn calibrate on text, minutes")] = "rtn",
    calib_text: Annotated[Optional[Path], typer.Option(help="w4 gptq/awq/awq-gptq: UTF-8 text the model will see (default: a built-in remote-sensing text, topped up with random tokens)")] = None,
    rotate: Annotated[Optional[bool], typer.Option("--rotate/--no-rotate", help="carry the decoder in a seeded orthogonal basis folded into its weights (QuaRot-style Hadamard rotations): the same model, less int4/int8 error [default: on for w8 and w4, off for fp16 and fp32]", show_default=False)] = None,
) -> None:
    """Export a LLaVA-class VLM: vision tower + projector to ONNX, decoder weights to safetensors."""
    from ..export.llava import export_vlm
    from ..progress import info, progress

    with progress() as bar:
        task = bar.add_task("export vlm", total=EXPORT_STEPS)

        def step(msg: str) -> None:  # calibration's per-layer lines ("calibrating w4 ...") count within one step
            bar.update(task, description=msg, advance=0 if msg.startswith("calibrating w4") else 1)

        bundle = export_vlm(checkpoint, output, weights=weights, overwrite=overwrite, image_size=image_size,
                            template=template, verify=verify, progress=step, vision_tower=vision_tower,
                            w4_method=w4_method, calib_text=calib_text, rotate=rotate)
        bar.update(task, completed=EXPORT_STEPS)
    for note in bundle.manifest.notes:
        info(f"note: {note}")
    info(f"wrote {bundle.path}")


def ask(
    bundle: Annotated[Path, typer.Argument(help="VLM bundle (NAME.rsvlm)")],
    image: Annotated[Path, typer.Argument(help="image file")],
    question: Annotated[str, typer.Argument(help="the question")],
    task: Annotated[Optional[str], typer.Option(help="GeoChat task prefix: grounding | refer | identify")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="most tokens to generate")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass (with temperature > 0)")] = 1.0,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    template: Annotated[Optional[str], typer.Option(help="override the bundle's chat template")] = None,
    boxes: Annotated[bool, typer.Option(help="also print GeoChat boxes {<x1><y1><x2><y2>|<θ>} in pixels")] = False,
    stream: Annotated[bool, typer.Option(help="print the answer as it is generated")] = True,
    backend: Annotated[str, typer.Option(help="auto, a backend (native, numpy, ort-cpu, ...) or graph=NAME,decoder=NAME; see `rsvlm-edge doctor`")] = "auto",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the answer as JSON here")] = None,
) -> None:
    """Ask one question about one image."""
    from contextlib import ExitStack

    from ..atomic import atomic_path
    from ..images import load_image
    from ..models.llava.prompts import TEMPLATES, build_prompt, geochat_question, parse_geochat_boxes
    from .common import check_generation_options

    check_generation_options(max_new_tokens, temperature, top_p, seed)
    if not question.strip():
        raise InputError("the question is empty", 'e.g. rsvlm-edge ask BUNDLE IMAGE "What is in this image?"')
    q = geochat_question(task, question)
    build_prompt(template or next(iter(TEMPLATES)), q)  # unknown template, '<image>' in the text: fail before loading
    width, height = load_image(image).size  # fails early, with one message, on a bad image
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(json_out, what="--json output")) if json_out else None
        rt = _load_vlm(bundle, backend)

        def on_piece(_i: int, piece: str) -> None:
            typer.echo(piece, nl=False)

        answer = rt.generate([str(image)], [q], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             template=template, seed=seed, stream=on_piece if stream else None)[0]
        typer.echo("" if stream else answer)
        found = parse_geochat_boxes(answer, width, height, padded=rt.preprocess.pad_to_square)
        if boxes:
            for b in found:
                typer.echo(f"box: x1={b.x1:.1f} y1={b.y1:.1f} x2={b.x2:.1f} y2={b.y2:.1f} angle={b.angle:g}")
        if tmp is not None:
            _write_json(tmp, {
                "bundle": str(bundle), "image": str(image), "question": q, "answer": answer,
                "boxes": [b.__dict__ for b in found],
            })


def caption(
    bundle: Annotated[Path, typer.Argument(help="VLM bundle (NAME.rsvlm)")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders (recursed, sorted)")],
    prompt: Annotated[str, typer.Option(help="the captioning question")] = "Describe the image in detail.",
    batch_size: Annotated[int, typer.Option(help="images per batch")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="most tokens per caption")] = 128,
    backend: Annotated[str, typer.Option(help="auto, a backend (native, numpy, ort-cpu, ...) or graph=NAME,decoder=NAME; see `rsvlm-edge doctor`")] = "auto",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write [{image, caption}] JSON here")] = None,
) -> None:
    """Caption images in batches; prints one `path<TAB>caption` line per image."""
    from contextlib import ExitStack

    from ..atomic import atomic_path
    from ..images import list_images
    from ..models.llava.prompts import TEMPLATES, build_prompt
    from ..progress import progress
    from .common import check_generation_options, positive, shown

    positive(batch_size, "--batch-size", "8")
    check_generation_options(max_new_tokens)
    if not prompt.strip():
        raise InputError("--prompt is empty", "e.g. --prompt 'Describe the image in detail.'")
    build_prompt(next(iter(TEMPLATES)), prompt)  # e.g. a prompt holding '<image>' fails before loading
    files = list_images(images)
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(json_out, what="--json output")) if json_out else None
        rt = _load_vlm(bundle, backend, batch=batch_size, max_new_tokens=max_new_tokens,
                       max_batch=min(batch_size, len(files)))
        results: list[dict[str, str]] = []
        with progress() as bar:
            task = bar.add_task("captioning", total=len(files))
            for start in range(0, len(files), batch_size):
                part = [str(f) for f in files[start : start + batch_size]]
                texts = rt.generate(part, [prompt] * len(part), max_new_tokens=max_new_tokens)
                for f, text in zip(part, texts):
                    results.append({"image": f, "caption": text})
                    typer.echo(f"{shown(f)}\t{' '.join(text.split())}")
                bar.advance(task, len(part))
        if tmp is not None:
            _write_json(tmp, {"bundle": str(bundle), "prompt": prompt, "captions": results})


COMPARE_BATCH = 4  # image / question pairs compared at once


def compare(
    reference: Annotated[Path, typer.Argument(help="reference VLM bundle (e.g. the fp16 export)")],
    candidate: Annotated[Path, typer.Argument(help="bundle to check: another export of the same checkpoint (e.g. w4)")],
    images: Annotated[list[Path], typer.Argument(help="image files")],
    question: Annotated[str, typer.Option(help="the question asked about every image")] = "Describe the image in detail.",
    steps: Annotated[int, typer.Option(help="greedy tokens of the reference compared (issue 12's measure: 32)")] = 32,
    backend: Annotated[str, typer.Option(help="auto, a backend (native, numpy, ...) or graph=NAME,decoder=NAME; both bundles")] = "auto",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the comparison as JSON here")] = None,
) -> None:
    """Compare two bundles of one VLM step by step: the reference answers greedily, both are teacher-forced on
    its tokens; prints each image's worst and mean logits cosine and top-1 agreement."""
    from contextlib import ExitStack

    from ..atomic import atomic_path
    from ..images import load_image
    from ..models.llava.compare import check_steps, compare_runtimes

    if not question.strip():
        raise InputError("the question is empty", 'e.g. --question "Describe the image in detail."')
    check_steps(steps)  # before loading anything
    for image in images:
        load_image(image)  # fails early, with one message, on a bad image
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(json_out, what="--json output")) if json_out else None
        batch = min(len(images), COMPARE_BATCH)
        ref = _load_vlm(reference, backend, max_batch=batch)
        cand = _load_vlm(candidate, backend, max_batch=batch)
        rows = []
        for i in range(0, len(images), batch):
            part = [str(p) for p in images[i:i + batch]]
            rows += compare_runtimes(ref, cand, part, [question] * len(part), steps)
        typer.echo("image\tsteps\tworst_cosine\tmean_cosine\ttop1_agreement")
        for r in rows:
            typer.echo(f"{r.image}\t{r.steps}\t{r.worst_cosine:.4f}\t{r.mean_cosine:.4f}\t{r.top1_agreement:.3f}")
        worst = min(r.worst_cosine for r in rows)
        typer.echo(f"worst step cosine over {len(rows)} image(s): {worst:.4f} (issue 12's w4 goal: >= 0.98)")
        if tmp is not None:
            _write_json(tmp, {"reference": str(reference), "candidate": str(candidate), "question": question,
                              "steps": steps, "worst_cosine": worst, "images": [r.to_dict() for r in rows]})


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    """Add ``ask`` and ``caption`` to ``app`` and ``vlm`` to the ``export`` sub-app."""
    export_app.command("vlm")(export_vlm_cmd)
    app.command("ask")(ask)
    app.command("caption")(caption)
    app.command("compare")(compare)
