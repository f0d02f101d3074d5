"""Image loading and resizing, matching open_clip / torchvision eval transforms on PIL images.

The ONNX graphs take uint8 (B, H, W, 3) at model resolution and normalise inside the graph, so the
host side only decodes, converts to RGB, resizes and crops. No torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(src: ImageInput) -> Image.Image:
    """Decode one image into an RGB PIL image.

    Accepts a file path, a PIL image, or a uint8 numpy array (H, W, 3) / (H, W) in RGB order.
    """
    if isinstance(src, Image.Image):
        return src.convert("RGB")
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8:
            raise InputError(
                f"image array has dtype {src.dtype}, expected uint8 (H, W, 3) RGB",
                "scale it to 0..255 and cast with .astype(np.uint8) (e.g. a per-band percentile stretch for 16-bit rasters)",
            )
        if src.ndim == 2:
            src = np.repeat(src[:, :, None], 3, axis=2)
        if src.ndim != 3 or src.shape[2] not in (3, 4):
            raise InputError(
                f"image array has shape {tuple(src.shape)}, expected (H, W, 3) RGB",
                "pass channels last; select 3 bands for multispectral rasters",
            )
        return Image.fromarray(np.ascontiguousarray(src[:, :, :3]), mode="RGB")
    path = Path(src)
    if not path.is_file():
        raise InputError(f"image '{path}' does not exist", "check the path")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"image '{path}' could not be decoded ({e.__class__.__name__}: {e})",
                         "check that the file is a complete JPEG/PNG/TIFF image") from None


def resize_shortest(img: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the shorter side is ``size`` (torchvision ``Resize(size)`` on PIL)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Center crop to ``size`` x ``size`` (torchvision ``CenterCrop`` rounding)."""
    w, h = img.size
    if w < size or h < size:
        raise InputError(f"image of {w}x{h} is smaller than the crop {size}x{size}")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def resize_shortest_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """open_clip's eval transform without normalisation: uint8 (size, size, 3)."""
    return np.asarray(center_crop(resize_shortest(img, size), size), dtype=np.uint8)


def pad_to_square(img: Image.Image, fill_rgb: Sequence[int]) -> Image.Image:
    """LLaVA's ``expand2square``: pad the short side symmetrically with ``fill_rgb``."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new("RGB", (side, side), tuple(int(c) for c in fill_rgb))
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Bicubic resize to exactly ``size`` x ``size``: uint8 (size, size, 3)."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def clip_pixels(images: Iterable[ImageInput], size: int) -> np.ndarray:
    """Decode and resize a batch for a CLIP bundle: uint8 (B, size, size, 3)."""
    out = [resize_shortest_center_crop(load_image(x), size) for x in images]
    if not out:
        raise InputError("no images given", "pass at least one image")
    return np.stack(out)


def list_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories (recursively, sorted) into a list of image files."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        elif p.exists():
            found.append(p)
        else:
            raise InputError(f"'{p}' does not exist", "check the path")
    if not found:
        raise InputError("no images found in " + ", ".join(map(str, paths)),
                         f"pass image files or folders containing {', '.join(IMAGE_SUFFIXES)}")
    return found
