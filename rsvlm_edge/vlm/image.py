"""LLaVA's ``process_images`` on the host: load, optional pad-to-square with the mean colour
(``image_aspect_ratio == "pad"``), shortest-side bicubic resize and centre crop to the model
resolution, as uint8 HWC. Normalisation happens inside vision.onnx."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..preprocess import ImageInput, load_image, pad_to_square, resize_shortest_center_crop

__all__ = ["ImageInput", "preprocess_images"]


def preprocess_images(images: Sequence[ImageInput], spec: dict[str, Any]) -> np.ndarray:
    """uint8 batch (B, S, S, 3) per the bundle's ``preprocess`` section."""
    if len(images) == 0:
        raise InputError("no images given", "pass at least one image")
    size = int(spec["image_size"])
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, src in enumerate(images):
        img = load_image(src)
        if spec.get("pad_to_square"):
            img = pad_to_square(img, spec.get("fill_rgb", (0, 0, 0)))
        out[i] = resize_shortest_center_crop(img, size)
    return out
