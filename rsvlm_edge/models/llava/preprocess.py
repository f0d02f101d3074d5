"""LLaVA's ``process_images`` on the host: load and convert to RGB first (LLaVA's ``load_image``),
optional pad-to-square with the mean colour (``image_aspect_ratio == "pad"``, LLaVA's
``expand2square`` filling with ``tuple(int(x * 255) for x in image_mean)``), then the processor's
shortest-side bicubic resize and centre crop to the model resolution (the bundle records the crop
rounding of the checkpoint's processor: ``floor`` for transformers' ``CLIPImageProcessor``), as uint8
HWC. Normalisation happens inside the vision graph. Pixel limits are checked from the file header
before decoding, including the size of the padded square."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...bundle.schema import Preprocess
from ...errors import InputError
from ...images import ImageInput, describe_image, load_image, pad_to_square, resize_shortest_center_crop

__all__ = ["ImageInput", "preprocess_images"]


def preprocess_images(images: Sequence[ImageInput], spec: Preprocess) -> np.ndarray:
    """uint8 batch (B, S, S, 3) per the bundle's ``preprocess`` section."""
    if isinstance(images, (str, bytes)) or not isinstance(images, (Sequence, np.ndarray)):
        images = [images]  # one path / PIL image
    if len(images) == 0:
        raise InputError("no images given", "pass at least one image")
    size = spec.image_size
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, src in enumerate(images):
        what = describe_image(src, i)
        img = load_image(src, convert_rgb=True, size=size, pad=spec.pad_to_square, index=i)
        if spec.pad_to_square:
            img = pad_to_square(img, spec.fill_rgb, what)
        out[i] = resize_shortest_center_crop(img, size, rounding=spec.crop_rounding, what=what)
    return out
