"""Image loading, resizing and cropping on PIL images, as the models' own preprocessing does it (no torch).

* CLIP bundles (open_clip's eval transform): bicubic ``Resize(shortest side)`` and ``CenterCrop``
  on the image *as decoded*, and ``convert("RGB")`` last (open_clip's ``MaybeConvertMode``). PIL
  premultiplies alpha when resizing RGBA/LA and resizes P and ``1`` images with nearest neighbour,
  so the order matters for transparent, palette and bilevel images.
* LLaVA bundles: ``convert("RGB")`` first (LLaVA's ``load_image``), optional ``expand2square``,
  then the processor's resize and crop (``crop_rounding``: ``round`` as torchvision's CenterCrop,
  ``floor`` as transformers' ``CLIPImageProcessor``).

16-bit and floating-point images (PIL modes I, I;16*, F) are refused: clipping them to 0..255 would
saturate almost every pixel. Decoded size is bounded by ``max_pixels`` (decompression bombs, and
extreme aspect ratios whose shortest-side resize would explode).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own bomb limit (2 x Image.MAX_IMAGE_PIXELS)
HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
CropRounding = str  # "round" | "floor"

_max_pixels = DEFAULT_MAX_PIXELS


def set_max_pixels(n: int) -> None:
    """Raise (or lower) the largest image, in pixels, that will be decoded (``--max-image-pixels``)."""
    global _max_pixels
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"the image pixel limit must be a positive integer (got {n!r})", "e.g. --max-image-pixels 400000000")
    _max_pixels = n


def max_pixels() -> int:
    return _max_pixels


def _name(src: object) -> str:
    return f"image '{src}'" if isinstance(src, (str, os.PathLike)) else "image"


def _check_image(img: Image.Image, what: str) -> Image.Image:
    w, h = img.size
    if w < 1 or h < 1:
        raise InputError(f"{what} is empty ({w}x{h} pixels)", "pass an image with at least one pixel")
    if w * h > _max_pixels:
        raise InputError(f"{what} has {w}x{h} = {w * h:,} pixels, above the limit of {_max_pixels:,}",
                         "tile it (rsvlm-edge classify-scene) or raise the limit with --max-image-pixels")
    if img.mode in HIGH_BIT_MODES:
        raise InputError(f"{what} is a {img.mode} (16-bit or floating-point) image; clipping it to 8 bits would "
                         "saturate it", "use `rsvlm-edge classify-scene` (per-band percentile stretch), or convert it "
                         "to 8-bit RGB yourself")
    return img


def load_image(src: ImageInput, convert_rgb: bool = True) -> Image.Image:
    """Decode one image into a PIL image (RGB when ``convert_rgb``, else as decoded).

    Accepts a file path, a PIL image, or a uint8 numpy array (H, W), (H, W, 3) RGB or (H, W, 4) RGBA.
    """
    if isinstance(src, Image.Image):
        img = _check_image(src, _name(src))
    elif isinstance(src, np.ndarray):
        img = _check_image(_from_array(src), "image array")
    else:
        img = _open_file(Path(src))
    return img.convert("RGB") if convert_rgb and img.mode != "RGB" else img


def _from_array(src: np.ndarray) -> Image.Image:
    if src.dtype != np.uint8:
        raise InputError(
            f"image array has dtype {src.dtype}, expected uint8 (H, W, 3) RGB",
            "scale it to 0..255 and cast with .astype(np.uint8) (e.g. a per-band percentile stretch for 16-bit rasters)",
        )
    if src.ndim not in (2, 3) or (src.ndim == 3 and src.shape[2] not in (3, 4)) or 0 in src.shape:
        raise InputError(f"image array has shape {tuple(src.shape)}, expected (H, W, 3) RGB",
                         "pass channels last; select 3 bands for multispectral rasters")
    if src.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(src), mode="L")
    return Image.fromarray(np.ascontiguousarray(src), mode="RGB" if src.shape[2] == 3 else "RGBA")


def _open_file(path: Path) -> Image.Image:
    if not path.is_file():
        raise InputError(f"image '{path}' does not exist", "check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            try:
                Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, before decoding
                with Image.open(path) as im:
                    _check_image(im, f"image '{path}'")
                    im.load()
                    return im.copy()
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, MemoryError) as e:
        raise InputError(f"image '{path}' could not be decoded ({e.__class__.__name__}: {str(e)[:200]})",
                         "check that the file is a complete JPEG/PNG/TIFF image") from None


def resized_shortest_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(new_w, new_h) of torchvision's ``Resize(size)``: shortest side to ``size``, the long side
    ``int(size * long / short)``."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def resize_shortest(img: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the shorter side is ``size`` (torchvision ``Resize(size)`` on PIL)."""
    w, h = img.size
    new_w, new_h = resized_shortest_size(w, h, size)
    if (new_w, new_h) == (w, h):
        return img
    if new_w * new_h > _max_pixels:
        raise InputError(f"an image of {w}x{h} would be resized to {new_w}x{new_h} (aspect ratio too extreme)",
                         "crop or tile it first (rsvlm-edge classify-scene)")
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int, rounding: CropRounding = "round") -> Image.Image:
    """Centre crop to ``size`` x ``size``: offsets ``round(margin / 2)`` (torchvision) or
    ``margin // 2`` (transformers)."""
    w, h = img.size
    if w < size or h < size:
        raise InputError(f"image of {w}x{h} is smaller than the crop {size}x{size}")
    if rounding == "floor":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def resize_shortest_center_crop(img: Image.Image, size: int, rounding: CropRounding = "round") -> np.ndarray:
    """Resize, crop, then convert to RGB: uint8 (size, size, 3)."""
    out = center_crop(resize_shortest(img, size), size, rounding)
    return np.asarray(out if out.mode == "RGB" else out.convert("RGB"), dtype=np.uint8)


def pad_to_square(img: Image.Image, fill_rgb: Sequence[int]) -> Image.Image:
    """LLaVA's ``expand2square``: paste centred (offset ``(side - w) // 2``) on a ``fill_rgb`` square."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new("RGB", (side, side), tuple(int(c) for c in fill_rgb))
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Bicubic resize to exactly ``size`` x ``size``: uint8 (size, size, 3) (scene tiles)."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def clip_pixels(images: Iterable[ImageInput], size: int) -> np.ndarray:
    """Decode and prepare a batch for a CLIP bundle (open_clip order): uint8 (B, size, size, 3)."""
    out = [resize_shortest_center_crop(load_image(x, convert_rgb=False), size) for x in images]
    if not out:
        raise InputError("no images given", "pass at least one image")
    return np.stack(out)


def list_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories (recursively, sorted) into a list of image files."""
    found: list[Path] = []
    paths = list(paths)
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
