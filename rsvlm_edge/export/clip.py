"""``rsvlm-edge export clip``: open_clip / HF CLIP checkpoint -> CLIP bundle (image.onnx, text.onnx)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from ..bundle import Bundle, BundleWriter
from ..errors import InputError
from ..preprocess import OPENAI_MEAN, OPENAI_STD, clip_pixels, list_images
from ..progress import info, progress, warn
from ..prompts import DEFAULT_TEMPLATES, TEMPLATES
from . import require_export_deps
from .clip_checkpoint import ClipCheckpoint, build_open_clip, load_clip_checkpoint
from .clip_tokenizer import write_clip_tokenizer
from .onnx_utils import cosine_rows, export_onnx, quantize_int8_qdq, to_fp16

PRECISIONS = ("fp32", "fp16", "int8")
CALIB_LABELS = ("airport", "bare land", "beach", "bridge", "dense residential area", "desert", "farmland",
                "forest", "harbor", "industrial area", "meadow", "mountain", "parking lot", "river",
                "storage tanks", "stadium")


def synthetic_rs_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Deterministic synthetic overhead-like scenes, uint8 (n, size, size, 3): smooth colour fields
    (fields, water, vegetation) with roads and rectangular blocks. For calibration/tests only."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = rng.uniform(30, 200, size=3)
        img = np.empty((size, size, 3))
        for c in range(3):
            f = rng.uniform(1, 6, size=2)
            ph = rng.uniform(0, 2 * np.pi, size=2)
            img[:, :, c] = base[c] + 40 * np.sin(2 * np.pi * f[0] * xx + ph[0]) * np.cos(2 * np.pi * f[1] * yy + ph[1])
        for _ in range(rng.integers(0, 12)):  # buildings / fields
            x0, y0 = rng.integers(0, size, size=2)
            w, h = rng.integers(size // 16, size // 3, size=2)
            img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, size=3)
        for _ in range(rng.integers(0, 3)):  # roads
            if rng.random() < 0.5:
                r = rng.integers(0, size)
                img[r:r + max(1, size // 40), :] = 90
            else:
                c0 = rng.integers(0, size)
                img[:, c0:c0 + max(1, size // 40)] = 90
        img += rng.normal(0, 8, size=img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _wrappers(model, cfg):
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


def _calibration_pixels(calib: Path | None, size: int, n_synthetic: int) -> np.ndarray:
    if calib is None:
        warn(f"no --calib folder given: calibrating INT8 on {n_synthetic} built-in synthetic images; "
             "accuracy on real imagery is better with ~100-500 of your own images (--calib DIR)")
        return synthetic_rs_images(n_synthetic, size, seed=1234)
    files = list_images([calib])
    if len(files) < 8:
        raise InputError(f"calibration folder '{calib}' has only {len(files)} images",
                         "give at least 8 (ideally 100-500) representative images")
    return clip_pixels(files[:512], size)


def export_clip(checkpoint: str | Path, out: str | Path, precision: str = "fp32", calib: str | Path | None = None,
                max_batch: int = 64, activation: str | None = None, overwrite: bool = False,
                calib_batch: int = 8, n_synthetic_calib: int = 64) -> Bundle:
    """Export a CLIP checkpoint to a bundle and report per-output cosine vs the torch fp32 model."""
    require_export_deps()
    import torch

    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}'", f"choose one of {', '.join(PRECISIONS)}")
    if max_batch < 1:
        raise InputError(f"--max-batch must be >= 1, got {max_batch}")
    with progress() as bar:
        task = bar.add_task("loading checkpoint", total=6)
        ckpt: ClipCheckpoint = load_clip_checkpoint(checkpoint, activation=activation)
        cfg = ckpt.config
        model = build_open_clip(ckpt)
        image_enc, text_enc = _wrappers(model, cfg)
        info(f"{ckpt.source}: layout {ckpt.layout}, architecture {cfg.name} ({cfg.vision_layers}x{cfg.vision_width} "
             f"vision @ {cfg.image_size}px/{cfg.patch_size}, {cfg.text_layers}x{cfg.text_width} text, "
             f"embed {cfg.embed_dim}, {cfg.activation})")
        writer = BundleWriter(out, overwrite=overwrite)
        with writer, tempfile.TemporaryDirectory() as tmp_s:
            tmp = Path(tmp_s)
            s = cfg.image_size
            ex_pixels = torch.from_numpy(synthetic_rs_images(2, s, seed=7))
            ex_ids = torch.zeros(2, cfg.context_length, dtype=torch.long)
            ex_ids[:, 0], ex_ids[:, 1], ex_ids[:, 2] = 49406, 320, 49407
            bar.update(task, advance=1, description="exporting image encoder to ONNX")
            img32, txt32 = tmp / "image.fp32.onnx", tmp / "text.fp32.onnx"
            export_onnx(image_enc, (ex_pixels,), img32, ["pixels"], ["image_embeds"])
            bar.update(task, advance=1, description="exporting text encoder to ONNX")
            export_onnx(text_enc, (ex_ids,), txt32, ["input_ids"], ["text_embeds"])

            img_out, txt_out = writer.path("image.onnx"), writer.path("text.onnx")
            parts = {"image": "fp32", "text": "fp32"}
            if precision == "fp16":
                bar.update(task, advance=1, description="converting to fp16")
                to_fp16(img32, img_out)
                to_fp16(txt32, txt_out)
                parts = {"image": "fp16", "text": "fp16"}
            elif precision == "int8":
                bar.update(task, advance=1, description="calibrating INT8 (image encoder)")
                pixels = _calibration_pixels(Path(calib) if calib else None, s, n_synthetic_calib)
                feeds = [{"pixels": pixels[i:i + calib_batch]} for i in range(0, len(pixels), calib_batch)]
                quantize_int8_qdq(img32, img_out, feeds, tmp)
                txt32.replace(txt_out)
                parts = {"image": "int8-qdq", "text": "fp32"}
            else:
                bar.update(task, advance=1)
                img32.replace(img_out)
                txt32.replace(txt_out)
            bar.update(task, advance=1, description="validating against torch")
            write_clip_tokenizer(writer.path("tokenizer.json"))
            validation = _validate(image_enc, text_enc, img_out, txt_out, writer.path("tokenizer.json"), s,
                                   fp16=precision == "fp16")
            bar.update(task, advance=1, description="writing bundle")
            manifest = {
                "architecture": "clip",
                "name": Path(out).stem,
                "source": {"checkpoint": str(ckpt.source), "layout": ckpt.layout},
                "model": cfg.to_dict(),
                "preprocess": {"input": "uint8 (B, H, W, 3) RGB", "resize": "shortest-side", "crop": "center",
                               "interpolation": "bicubic", "image_size": s,
                               "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "normalize": "in-graph"},
                "tokenizer": {"file": "tokenizer.json", "context_length": cfg.context_length,
                              "sot_id": 49406, "eot_id": 49407},
                "prompts": {"default": DEFAULT_TEMPLATES, "sets": {k: list(v) for k, v in TEMPLATES.items()}},
                "precision": parts,
                "max_batch": max_batch,
                "logit_scale": float(math.exp(float(ckpt.state_dict["logit_scale"]))) if "logit_scale" in ckpt.state_dict else 100.0,
                "graphs": {
                    "image": {"file": "image.onnx", "input": "pixels", "output": "image_embeds"},
                    "text": {"file": "text.onnx", "input": "input_ids", "output": "text_embeds"},
                },
                "validation": validation,
            }
            bundle = writer.commit(manifest)
            bar.update(task, advance=1, description="done")
    info(f"wrote {bundle.path} ({precision}); cosine vs torch fp32: image min {validation['image_cosine_min']:.6f} "
         f"mean {validation['image_cosine_mean']:.6f}, text min {validation['text_cosine_min']:.6f} "
         f"mean {validation['text_cosine_mean']:.6f} on {validation['n_images']} images / {validation['n_texts']} texts")
    return bundle


def _validate(image_enc, text_enc, img_onnx: Path, txt_onnx: Path, tokenizer: Path, size: int,
              fp16: bool) -> dict[str, float]:
    """Per-output cosine of the exported graphs vs the torch fp32 model on held-out inputs."""
    import torch

    from ..backends.ort import OrtModel
    from ..tokenizer import ClipTokenizer

    pixels = synthetic_rs_images(16, size, seed=99)
    ids = ClipTokenizer(tokenizer)([TEMPLATES["satellite"][0].format(c) for c in CALIB_LABELS])
    with torch.no_grad():
        ref_i = image_enc(torch.from_numpy(pixels)).numpy()
        ref_t = text_enc(torch.from_numpy(ids)).numpy()
    cpu = ["CPUExecutionProvider"]
    got_i = OrtModel(img_onnx, providers=cpu, fp16=fp16).run({"pixels": pixels})[0]
    got_t = OrtModel(txt_onnx, providers=cpu, fp16=fp16).run({"input_ids": ids})[0]
    ci, ct = cosine_rows(got_i, ref_i), cosine_rows(got_t, ref_t)
    return {"vs": "torch fp32 (open_clip)", "n_images": len(pixels), "n_texts": len(ids),
            "image_cosine_min": float(ci.min()), "image_cosine_mean": float(ci.mean()),
            "text_cosine_min": float(ct.min()), "text_cosine_mean": float(ct.mean())}
