"""LLaVA's ``process_images`` on the host: load, optional pad-to-square with the mean colour
(``image_aspect_ratio == "pad"``, LLaVA's ``expand2square``), shortest-side bicubic resize and centre
crop to the model resolution (the bundle records the crop rounding of the checkpoint's processor),
as uint8 HWC. Normalisation happens inside the vision graph."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...bundle.schema import Preprocess
from ...errors import InputError
from ...images import ImageInput, load_image, pad_to_square, resize_shortest_center_crop

__all__ = ["ImageInput", "preprocess_images"]


def preprocess_images(images: Sequence[ImageInput], spec: Preprocess) -> np.ndarray:
    """uint8 batch (B, S, S, 3) per the bundle's ``preprocess`` section."""
    if len(images) == 0:
        raise InputError("no images given", "pass at least one image")
    size = spec.image_size
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, src in enumerate(images):
        img = load_image(src)
        if spec.pad_to_square:
            img = pad_to_square(img, spec.fill_rgb)
        out[i] = resize_shortest_center_crop(img, size, rounding=spec.crop_rounding)
    return out
