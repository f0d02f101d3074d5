"""Image preparation for the vision tower: load, optional pad-to-square, shortest-side resize and
centre crop to the model resolution, as uint8 HWC (normalisation happens inside vision.onnx).

Mirrors LLaVA's ``process_images``: with ``image_aspect_ratio == "pad"`` the image is first
padded to a square with the mean colour, then CLIPImageProcessor resizes (bicubic) and crops.
"""

from __future__ import annotations

import os
from typing import Any, Sequence, Union

import numpy as np

from ..errors import InputError

ImageInput = Union[str, "os.PathLike[str]", np.ndarray, Any]  # path, uint8 HWC array, or PIL image


def load_image(src: ImageInput):
    """A PIL RGB image from a path, a PIL image or a uint8 HWC (RGB) array."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, Image.Image):
        return src.convert("RGB")
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
            raise InputError(
                f"image array has dtype {src.dtype} and shape {src.shape}", "pass a uint8 (H, W, 3) RGB array"
            )
        return Image.fromarray(src, "RGB")
    if isinstance(src, (str, os.PathLike)):
        try:
            with Image.open(src) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise InputError(f"image '{src}' does not exist", "check the path") from None
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"cannot decode image '{src}' ({e})", "pass a PNG, JPEG or TIFF RGB image") from None
    raise InputError(f"cannot use a {type(src).__name__} as an image", "pass a path, a PIL image or a uint8 HWC array")


def pad_to_square(img, fill_rgb: Sequence[int]):
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new("RGB", (side, side), tuple(int(c) for c in fill_rgb))
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def resize_shortest_center_crop(img, size: int) -> np.ndarray:
    """Shortest side to ``size`` (bicubic), centre crop to ``size x size``; uint8 (size, size, 3)."""
    from PIL import Image

    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        new_w, new_h = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
        img = img.resize((new_w, new_h), Image.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def preprocess_images(images: Sequence[ImageInput], spec: dict[str, Any]) -> np.ndarray:
    """uint8 batch (B, S, S, 3) per the bundle's ``preprocess`` section."""
    size = int(spec["image_size"])
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, src in enumerate(images):
        img = load_image(src)
        if spec.get("pad_to_square"):
            img = pad_to_square(img, spec.get("fill_rgb", (0, 0, 0)))
        out[i] = resize_shortest_center_crop(img, size)
    return out
