"""``rsvlm-edge export clip``: open_clip / HF CLIP checkpoint -> CLIP bundle (image.onnx, text.onnx)."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import Bundle, BundleWriter
from ..bundle.schema import S8S8
from ..errors import CheckpointError, InputError
from ..images import OPENAI_MEAN, OPENAI_STD, clip_pixels, list_images
from ..models.clip.prompts import DEFAULT_TEMPLATES, TEMPLATES
from ..progress import info, progress, warn
from ..synthetic import synthetic_rs_images  # noqa: F401  (re-exported for callers of the exporter)
from . import require_export_deps
from .clip_checkpoint import ClipCheckpoint, build_open_clip, load_clip_checkpoint
from .clip_native import (
    NATIVE_ARCHITECTURE,
    NATIVE_FILE,
    NATIVE_PRECISION,
    native_entries,
    unsupported_reason,
    write_safetensors,
)
from .clip_tokenizer import write_clip_tokenizer
from .onnx_utils import cosine_rows, export_onnx, move_graph, quantize_int8_qdq, release_memory, to_fp16

PRECISIONS = ("fp32", "fp16", "int8")
IMAGE_IO = ("pixels", "image_embeds")  # graph input, output names (recorded in the manifest's parts)
TEXT_IO = ("input_ids", "text_embeds")
IMAGE_S8S8_FILE = "image.s8s8.onnx"  # the image part's S8S8 (TensorRT) variant of an int8 bundle
CALIB_LABELS = ("airport", "bare land", "beach", "bridge", "dense residential area", "desert", "farmland",
                "forest", "harbor", "industrial area", "meadow", "mountain", "parking lot", "river",
                "storage tanks", "stadium")


def torch_encoders(model, cfg):
    import torch

    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)

    class ImageEncoder(torch.nn.Module):
        """uint8 (B, H, W, 3) RGB at model resolution -> image_embeds (B, E), normalisation in-graph."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, pixels):
            x = pixels.permute(0, 3, 1, 2).float() / 255.0
            return self.model.encode_image((x - self.mean) / self.std)

    class TextEncoder(torch.nn.Module):
        """int64 (B, context) token ids -> text_embeds (B, E) (feature at the EOT token)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model.encode_text(input_ids)

    return ImageEncoder().eval(), TextEncoder().eval()


CALIB_MAX_IMAGES = 512


def calibration_batches(calib: Path | None, size: int, n_synthetic: int, batch: int) -> tuple[int, Iterator[np.ndarray]]:
    """(number of batches, generator of uint8 (B, size, size, 3) batches) for INT8 calibration.

    Images are decoded lazily, one batch at a time, so memory holds one batch, never the whole set.
    Without ``calib``: ``n_synthetic`` built-in synthetic scenes (seeded per batch). With ``calib``: up
    to ``CALIB_MAX_IMAGES`` images of the folder, in sorted order."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise InputError(f"--calib-batch must be a positive integer (got {batch!r})", "e.g. --calib-batch 8")
    if calib is None:
        warn(f"no --calib folder given: calibrating INT8 on {n_synthetic} built-in synthetic images; "
             "accuracy on real imagery is better with ~100-500 of your own images (--calib DIR)")
        starts = range(0, n_synthetic, batch)
        return len(starts), (synthetic_rs_images(min(batch, n_synthetic - i), size, seed=1234 + i) for i in starts)
    files = list_images([calib])
    if len(files) < 8:
        raise InputError(f"calibration folder '{calib}' has only {len(files)} images",
                         "give at least 8 (ideally 100-500) representative images")
    files = files[:CALIB_MAX_IMAGES]
    starts = range(0, len(files), batch)
    return len(starts), (clip_pixels(files[i:i + batch], size) for i in starts)


def export_clip(checkpoint: str | Path, out: str | Path, precision: str = "fp32", calib: str | Path | None = None,
                max_batch: int = 64, activation: str | None = None, overwrite: bool = False,
                calib_batch: int = 1, n_synthetic_calib: int = 64, preset: str | None = None,
                native: bool = True) -> Bundle:
    """Export a CLIP checkpoint to a bundle and report per-output cosine vs the torch fp32 model.

    ``preset`` (remoteclip | georsclip | skyclip | openai | laion) picks the activation the way the
    released project loads its checkpoint; ``activation`` overrides it (see ``load_clip_checkpoint``).
    ``native``: also write the image tower's weights for the ``native-vit`` backend (``clip_native``).

    ``int8``: the image encoder is quantised twice from one calibration pass (``calib_batch`` images
    at a time, decoded lazily): ``image.onnx`` with uint8 asymmetric activations (U8S8, onnxruntime's
    CPU kernels) and ``image.s8s8.onnx`` with int8 symmetric activations (S8S8, what TensorRT runs),
    recorded as the image part's ``s8s8`` variant. The torch model is freed (after computing its
    validation outputs) before calibration, and calibration holds one batch and one lean onnxruntime
    session at a time; the ONNX export itself is lean (``export_onnx``): measured peak of a
    ViT-L/14-336 int8 export with the defaults 4.6-4.8 GB, at building the torch model beside the loaded checkpoint."""
    require_export_deps()

    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}'", f"choose one of {', '.join(PRECISIONS)}")
    if max_batch < 1:
        raise InputError(f"--max-batch must be >= 1, got {max_batch}")
    if precision == "int8" and (not isinstance(calib_batch, int) or isinstance(calib_batch, bool) or calib_batch < 1):
        raise InputError(f"--calib-batch must be a positive integer (got {calib_batch!r})", "e.g. --calib-batch 8")
    with progress() as bar:
        task = bar.add_task("loading checkpoint", total=6)
        ckpt: ClipCheckpoint = load_clip_checkpoint(checkpoint, activation=activation, preset=preset)
        cfg = ckpt.config
        info(f"{ckpt.source}: layout {ckpt.layout}, architecture {cfg.name} ({cfg.vision_layers}x{cfg.vision_width} "
             f"vision @ {cfg.image_size}px/{cfg.patch_size}, {cfg.text_layers}x{cfg.text_width} text, "
             f"embed {cfg.embed_dim}, {cfg.activation})")
        info(f"activation {cfg.activation}: {ckpt.activation_reason}")
        writer = BundleWriter(out, overwrite=overwrite)
        with writer, tempfile.TemporaryDirectory() as tmp_s:
            tmp = Path(tmp_s)
            s = cfg.image_size
            img32, txt32 = tmp / "image.fp32.onnx", tmp / "text.fp32.onnx"
            write_clip_tokenizer(writer.path("tokenizer.json"))
            logit_scale = _logit_scale(ckpt)
            tower = (writer.path(NATIVE_FILE), NATIVE_PRECISION[precision]) if native else None
            checks = _torch_export(ckpt, img32, txt32, writer.path("tokenizer.json"), bar, task, tower)  # frees torch

            img_out, txt_out = writer.path("image.onnx"), writer.path("text.onnx")
            parts = {"image": "fp32", "text": "fp32"}
            variants: dict[str, dict[str, str]] = {}
            if precision == "fp16":
                bar.update(task, advance=1, description="converting to fp16")
                to_fp16(img32, img_out)
                to_fp16(txt32, txt_out)
                parts = {"image": "fp16", "text": "fp16"}
            elif precision == "int8":
                bar.update(task, advance=1, description="calibrating INT8 (image encoder)")
                n_batches, batches = calibration_batches(Path(calib) if calib else None, s, n_synthetic_calib,
                                                         calib_batch)
                calib_task = bar.add_task(f"calibration batches of {calib_batch}", total=n_batches)
                feeds = ({IMAGE_IO[0]: px} for px in batches)
                s8_out = writer.path(IMAGE_S8S8_FILE)
                quantize_int8_qdq(img32, {"u8s8": img_out, "s8s8": s8_out}, feeds, tmp,
                                  on_batch=lambda: bar.advance(calib_task))
                move_graph(txt32, txt_out)
                parts = {"image": "int8-qdq", "text": "fp32"}
                variants = {"image": {S8S8: IMAGE_S8S8_FILE}}
            else:
                bar.update(task, advance=1)
                move_graph(img32, img_out)
                move_graph(txt32, txt_out)
            bar.update(task, advance=1, description="validating against torch")
            validation = _validate(checks, img_out, txt_out, fp16=precision == "fp16")
            if variants:
                validation.update(_validate_image(checks, writer.path(IMAGE_S8S8_FILE), "image_s8s8"))
            bar.update(task, advance=1, description="writing bundle")
            manifest = {
                "architecture": "clip",
                "name": Path(out).stem,
                "source": {"checkpoint": str(ckpt.source), "layout": ckpt.layout},
                "model": {**cfg.to_dict(), "logit_scale": logit_scale,
                          "activation_reason": ckpt.activation_reason or None},
                "parts": clip_parts(cfg, parts, variants,
                                    native_precision=NATIVE_PRECISION[precision] if checks.native else None),
                "preprocess": {"image_size": s, "crop_rounding": "round",
                               "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)},
                "tokenizer": {"file": "tokenizer.json", "kind": "clip-bpe", "context_length": cfg.context_length,
                              "sot_id": 49406, "eot_id": 49407},
                "prompts": {"default": DEFAULT_TEMPLATES, "sets": {k: list(v) for k, v in TEMPLATES.items()}},
                "max_batch": max_batch,
                "validation": validation,
            }
            bundle = writer.commit(manifest)
            bar.update(task, advance=1, description="done")
    info(f"wrote {bundle.path} ({precision}); cosine vs torch fp32: image min {validation['image_cosine_min']:.6f} "
         f"mean {validation['image_cosine_mean']:.6f}, text min {validation['text_cosine_min']:.6f} "
         f"mean {validation['text_cosine_mean']:.6f} on {validation['n_images']} images / {validation['n_texts']} texts")
    if variants:
        info(f"S8S8 variant ({IMAGE_S8S8_FILE}, for TensorRT): image cosine min {validation['image_s8s8_cosine_min']:.6f} "
             f"mean {validation['image_s8s8_cosine_mean']:.6f}")
    return bundle


@dataclass
class _Checks:
    """Held-out validation inputs and the torch fp32 model's outputs on them."""

    pixels: np.ndarray
    ids: np.ndarray
    ref_image: np.ndarray
    ref_text: np.ndarray
    native: bool = False  # the native tower's weights were written (NATIVE_FILE)


def _torch_export(ckpt: ClipCheckpoint, img32: Path, txt32: Path, tokenizer: Path, bar, task,
                  native: tuple[Path, str] | None = None) -> _Checks:
    """Build the torch model, export both encoders to fp32 ONNX, compute the validation references, and
    release the model and the checkpoint's tensors (the rest of the export needs neither). ``native``:
    (file, precision) for the image tower's weights for the ``native`` backend, written when the tower
    is one it runs (else a note says why not)."""
    import torch

    from ..models.clip.tokenizer import ClipTokenizer

    cfg = ckpt.config
    model = build_open_clip(ckpt)
    ckpt.state_dict.clear()  # the model holds its own copy
    image_enc, text_enc = torch_encoders(model, cfg)
    s = cfg.image_size
    ex_pixels = torch.from_numpy(synthetic_rs_images(2, s, seed=7))
    ex_ids = torch.zeros(2, cfg.context_length, dtype=torch.long)
    ex_ids[:, 0], ex_ids[:, 1], ex_ids[:, 2] = 49406, 320, 49407
    bar.update(task, advance=1, description="exporting image encoder to ONNX")
    export_onnx(image_enc, (ex_pixels,), img32, [IMAGE_IO[0]], [IMAGE_IO[1]])
    bar.update(task, advance=1, description="exporting text encoder to ONNX")
    export_onnx(text_enc, (ex_ids,), txt32, [TEXT_IO[0]], [TEXT_IO[1]])
    pixels = synthetic_rs_images(16, s, seed=99)
    ids = ClipTokenizer(tokenizer)([TEMPLATES["satellite"][0].format(c) for c in CALIB_LABELS])
    with torch.no_grad():
        checks = _Checks(pixels, ids, image_enc(torch.from_numpy(pixels)).numpy(), text_enc(torch.from_numpy(ids)).numpy())
    if native is not None:
        visual = model.visual.state_dict()
        why_not = unsupported_reason(visual)
        if why_not is None:
            bar.update(task, description="writing the native image tower")
            write_safetensors(native[0], native_entries(visual, native[1]))
            checks.native = True
        else:
            info(f"no native image tower in this bundle ({why_not}): the image part runs on onnxruntime/TensorRT only")
        del visual
    del model, image_enc, text_enc, ex_pixels, ex_ids
    release_memory()
    return checks


def _logit_scale(ckpt: ClipCheckpoint) -> float:
    if "logit_scale" not in ckpt.state_dict:
        return 100.0
    value = float(math.exp(float(ckpt.state_dict["logit_scale"])))
    if not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"'{ckpt.source}': logit_scale is not finite (exp = {value})",
                              "the checkpoint is corrupt; restore it from its source")
    return value


def clip_parts(cfg, precision: dict[str, str], variants: dict[str, dict[str, str]] | None = None,
               native_precision: str | None = None) -> dict[str, dict]:
    """The manifest's ``parts`` of a CLIP bundle: the two graphs with their I/O names and shapes.
    ``variants``: per part, variant key -> file (``s8s8``: the symmetric int8 QDQ graph).
    ``native_precision``: the image tower's weights for the ``native`` backend are in the bundle."""
    s = cfg.image_size
    parts = {
        "image": {"kind": "graph", "file": "image.onnx", "precision": precision["image"],
                  "inputs": [{"name": IMAGE_IO[0], "dtype": "uint8", "shape": ["batch", s, s, 3]}],
                  "outputs": [{"name": IMAGE_IO[1], "dtype": "float32", "shape": ["batch", cfg.embed_dim]}]},
        "text": {"kind": "graph", "file": "text.onnx", "precision": precision["text"],
                 "inputs": [{"name": TEXT_IO[0], "dtype": "int64", "shape": ["batch", cfg.context_length]}],
                 "outputs": [{"name": TEXT_IO[1], "dtype": "float32", "shape": ["batch", cfg.embed_dim]}]},
    }
    for name, by_key in (variants or {}).items():
        parts[name]["variants"] = {key: {"file": file, "precision": "int8-qdq", "activations": "int8-symmetric",
                                         "weights": "int8-symmetric-per-channel"} for key, file in by_key.items()}
    if native_precision is not None:
        parts["image"]["native"] = {"architecture": NATIVE_ARCHITECTURE, "file": NATIVE_FILE,
                                    "precision": native_precision, "heads": cfg.vision_heads,
                                    "activation": cfg.activation}
    return parts


def _validate(checks: _Checks, img_onnx: Path, txt_onnx: Path, fp16: bool) -> dict[str, float]:
    """Per-output cosine of the exported graphs vs the torch fp32 model on held-out inputs."""
    got_t = _ort_session(txt_onnx, fp16).run(None, {TEXT_IO[0]: checks.ids})[0]
    ct = cosine_rows(got_t, checks.ref_text)
    return {"vs": "torch fp32 (open_clip)", "n_images": len(checks.pixels), "n_texts": len(checks.ids),
            **_validate_image(checks, img_onnx, "image", fp16),
            "text_cosine_min": float(ct.min()), "text_cosine_mean": float(ct.mean())}


def _validate_image(checks: _Checks, img_onnx: Path, key: str, fp16: bool = False) -> dict[str, float]:
    """``{key}_cosine_min`` / ``_mean`` of an image graph (onnxruntime CPU) vs the torch fp32 model."""
    got = _ort_session(img_onnx, fp16).run(None, {IMAGE_IO[0]: checks.pixels})[0]
    c = cosine_rows(got, checks.ref_image)
    return {f"{key}_cosine_min": float(c.min()), f"{key}_cosine_mean": float(c.mean())}


def _ort_session(path: Path, fp16: bool):
    """A CPU onnxruntime session for export-time checks (fp16 graphs: ORT_ENABLE_EXTENDED)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if fp16:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
