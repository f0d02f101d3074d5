"""Image loading, resizing and cropping on PIL images, as the models' own preprocessing does it (no torch).

* CLIP bundles (open_clip's eval transform): bicubic ``Resize(shortest side)`` and ``CenterCrop``
  on the image *as decoded*, and ``convert("RGB")`` last (open_clip's ``MaybeConvertMode``). PIL
  premultiplies alpha when resizing RGBA/LA and resizes P and ``1`` images with nearest neighbour,
  so the order matters for transparent, palette and bilevel images.
* LLaVA bundles: ``convert("RGB")`` first (LLaVA's ``load_image``), optional ``expand2square``,
  then the processor's resize and crop (``crop_rounding``: ``round`` as torchvision's CenterCrop,
  ``floor`` as transformers' ``CLIPImageProcessor``).

Like open_clip and LLaVA, the EXIF orientation tag is not applied: pixels are used as stored.

16-bit and floating-point images (PIL modes I, I;16*, F) are refused: clipping them to 0..255 would
saturate almost every pixel. Sizes are checked against ``max_pixels`` from the file header, before
anything is decoded: the decoded image (decompression bombs), the square an image is padded to, and
the image after its shortest side is resized (extreme aspect ratios).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from .errors import InputError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own bomb limit (2 x Image.MAX_IMAGE_PIXELS)
HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;32", "I;32L", "I;32B", "F")
CropRounding = str  # "round" | "floor"
_LIMIT_FIX = "tile it (rsvlm-edge classify-scene) or raise the limit: rsvlm-edge --max-image-pixels N ..."

_max_pixels = DEFAULT_MAX_PIXELS


def set_max_pixels(n: int) -> None:
    """Raise (or lower) the largest image, in pixels, that will be decoded (``--max-image-pixels``)."""
    global _max_pixels
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"the image pixel limit must be a positive integer (got {n!r})", "e.g. --max-image-pixels 400000000")
    _max_pixels = n


def max_pixels() -> int:
    return _max_pixels


def is_high_bit(mode: str) -> bool:
    """16/32-bit integer or floating-point PIL modes (I, I;16, I;16B, F, ...)."""
    return mode in ("I", "F") or mode.startswith("I;") or mode.startswith("F;")


def describe_image(src: object, index: int | None = None) -> str:
    if isinstance(src, (str, os.PathLike)):
        return f"image '{src}'"
    if isinstance(src, Image.Image) and getattr(src, "filename", ""):
        return f"image '{src.filename}'"
    kind = "image array" if isinstance(src, np.ndarray) else "image"
    return kind if index is None else f"{kind} #{index}"


def _check_image(img: Image.Image, what: str, size: int | None = None, pad: bool = False) -> Image.Image:
    """Refuse, from the header alone: empty, above ``max_pixels``, 16-bit/float, and (when ``size``)
    what padding to a square and resizing the shortest side to ``size`` would make."""
    w, h = img.size
    if w < 1 or h < 1:
        raise InputError(f"{what} is empty ({w}x{h} pixels)", "pass an image with at least one pixel")
    if w * h > _max_pixels:
        raise InputError(f"{what} has {w}x{h} = {w * h:,} pixels, above the limit of {_max_pixels:,}", _LIMIT_FIX)
    if is_high_bit(img.mode):
        raise InputError(f"{what} is a {img.mode} (16-bit or floating-point) image; clipping it to 8 bits would "
                         "saturate it", "use `rsvlm-edge classify-scene` (per-band percentile stretch), or convert it "
                         "to 8-bit RGB yourself")
    if pad and w != h and max(w, h) ** 2 > _max_pixels:
        side = max(w, h)
        raise InputError(f"{what} ({w}x{h}) would be padded to a {side}x{side} square = {side * side:,} pixels, "
                         f"above the limit of {_max_pixels:,} (aspect ratio too extreme)",
                         "crop or tile it first (rsvlm-edge classify-scene), or raise the limit: rsvlm-edge --max-image-pixels N ...")
    if size is not None:
        sw, sh = (max(w, h),) * 2 if pad else (w, h)
        nw, nh = resized_shortest_size(sw, sh, size)
        if nw * nh > _max_pixels:
            raise InputError(f"{what} ({w}x{h}, aspect ratio {max(w, h) / min(w, h):,.0f}:1) would be resized to "
                             f"{nw}x{nh} = {nw * nh:,} pixels, above the limit of {_max_pixels:,} (aspect ratio too "
                             "extreme)", "crop or tile it first (rsvlm-edge classify-scene)")
    return img


def load_image(src: ImageInput, convert_rgb: bool = True, size: int | None = None, pad: bool = False,
               index: int | None = None) -> Image.Image:
    """Decode one image into a PIL image (RGB when ``convert_rgb``, else as decoded).

    Accepts a file path, a PIL image, or a uint8 numpy array (H, W), (H, W, 3) RGB or (H, W, 4) RGBA.
    With ``size`` (and ``pad``), also refuses, before decoding, an image whose padded square or
    shortest-side resize to ``size`` would exceed the pixel limit. ``index`` names in-memory inputs.
    """
    what = describe_image(src, index)
    if isinstance(src, Image.Image):
        img = _check_image(src, what, size, pad)
    elif isinstance(src, np.ndarray):
        img = _check_image(_from_array(src, what), what, size, pad)
    elif isinstance(src, (str, os.PathLike)):
        img = _open_file(Path(src), size, pad)
    else:
        raise InputError(f"{what} is a {type(src).__name__}; expected a file path, a PIL image or a uint8 array",
                         "pass paths, PIL images or numpy arrays")
    if convert_rgb and img.mode != "RGB":
        img = _guard(lambda: img.convert("RGB"), what)
    return img


def _from_array(src: np.ndarray, what: str = "image array") -> Image.Image:
    if src.dtype != np.uint8:
        raise InputError(
            f"{what} has dtype {src.dtype}, expected uint8 (H, W, 3) RGB",
            "scale it to 0..255 and cast with .astype(np.uint8) (e.g. a per-band percentile stretch for 16-bit rasters)",
        )
    if src.ndim not in (2, 3) or (src.ndim == 3 and src.shape[2] not in (3, 4)):
        raise InputError(f"{what} has shape {tuple(src.shape)}, expected (H, W, 3) RGB",
                         "pass channels last; select 3 bands for multispectral rasters")
    if 0 in src.shape:
        raise InputError(f"{what} is empty (shape {tuple(src.shape)})", "pass an image with at least one pixel")
    if src.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(src), mode="L")
    return Image.fromarray(np.ascontiguousarray(src), mode="RGB" if src.shape[2] == 3 else "RGBA")


_pil_lock = threading.Lock()
_pil_users = 0
_pil_saved_limit: int | None = None


@contextmanager
def _pil_bomb_check_off() -> Iterator[None]:
    """PIL's own decompression-bomb check off while we open and decode (ours ran on the header, against
    ``max_pixels``, which may be above PIL's). Counted, so that concurrent decodes never restore the
    global ``Image.MAX_IMAGE_PIXELS`` while another is still inside, and it is restored by the last."""
    global _pil_users, _pil_saved_limit
    with _pil_lock:
        if _pil_users == 0:
            _pil_saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pil_users += 1
    try:
        yield
    finally:
        with _pil_lock:
            _pil_users -= 1
            if _pil_users == 0:
                Image.MAX_IMAGE_PIXELS = _pil_saved_limit


def _open_file(path: Path, size: int | None = None, pad: bool = False) -> Image.Image:
    what = f"image '{path}'"
    if not path.is_file():
        raise InputError(f"{what} does not exist" if not path.exists() else f"{what} is not a file", "check the path")
    try:
        with _pil_bomb_check_off(), open(path, "rb") as f:
            im = Image.open(f)
            _check_image(im, what, size, pad)  # header only: nothing decoded yet
            im.load()
            _check_image(im, what, size, pad)  # some formats settle size/mode on load
            return im
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{what} is too large to decode in the memory available", _LIMIT_FIX) from None
    except Exception as e:  # PIL plugins raise many types (OSError, ValueError, SyntaxError, struct.error, ...)
        raise InputError(f"{what} could not be decoded ({e.__class__.__name__}: {str(e)[:200]})",
                         "check that the file is a complete JPEG/PNG/TIFF image") from None


def _guard(fn, what: str):
    """Run a PIL operation; a failure (a mode PIL cannot resize or convert, a lazily loaded file that
    turns out truncated) becomes an ``InputError`` naming the image."""
    try:
        return fn()
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{what} is too large to process in the memory available", _LIMIT_FIX) from None
    except Exception as e:
        raise InputError(f"{what} could not be processed ({e.__class__.__name__}: {str(e)[:200]})",
                         "convert it to an 8-bit RGB PNG or JPEG") from None


def resized_shortest_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(new_w, new_h) of torchvision's ``Resize(size)``: shortest side to ``size``, the long side
    ``int(size * long / short)``."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def resize_shortest(img: Image.Image, size: int, what: str = "image") -> Image.Image:
    """Bicubic resize so the shorter side is ``size`` (torchvision ``Resize(size)`` on PIL)."""
    w, h = img.size
    new_w, new_h = resized_shortest_size(w, h, size)
    if (new_w, new_h) == (w, h):
        return img
    if new_w * new_h > _max_pixels:
        raise InputError(f"{what} of {w}x{h} would be resized to {new_w}x{new_h} = {new_w * new_h:,} pixels, above "
                         f"the limit of {_max_pixels:,} (aspect ratio too extreme)",
                         "crop or tile it first (rsvlm-edge classify-scene)")
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int, rounding: CropRounding = "round") -> Image.Image:
    """Centre crop to ``size`` x ``size``: offsets ``int(round(margin / 2))`` (torchvision's
    ``CenterCrop``, Python's half-to-even ``round``) or ``margin // 2`` (transformers)."""
    w, h = img.size
    if w < size or h < size:
        raise InputError(f"image of {w}x{h} is smaller than the crop {size}x{size}")
    if rounding == "floor":
        top, left = (h - size) // 2, (w - size) // 2
    elif rounding == "round":
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    else:
        raise InputError(f"unknown crop rounding '{rounding}'", "round (torchvision) or floor (transformers)")
    return img.crop((left, top, left + size, top + size))


def resize_shortest_center_crop(img: Image.Image, size: int, rounding: CropRounding = "round",
                                what: str = "image") -> np.ndarray:
    """Resize, crop, then convert to RGB: uint8 (size, size, 3)."""
    def run() -> np.ndarray:
        out = center_crop(resize_shortest(img, size, what), size, rounding)
        return np.asarray(out if out.mode == "RGB" else out.convert("RGB"), dtype=np.uint8)

    return _guard(run, what)


def pad_to_square(img: Image.Image, fill_rgb: Sequence[int], what: str = "image") -> Image.Image:
    """LLaVA's ``expand2square`` on an RGB image: paste centred (offset ``(side - w) // 2``) on a
    ``fill_rgb`` square."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    if side * side > _max_pixels:
        raise InputError(f"{what} ({w}x{h}) would be padded to a {side}x{side} square = {side * side:,} pixels, "
                         f"above the limit of {_max_pixels:,} (aspect ratio too extreme)",
                         "crop or tile it first (rsvlm-edge classify-scene)")
    out = Image.new("RGB", (side, side), tuple(int(c) for c in fill_rgb))
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Bicubic resize to exactly ``size`` x ``size``: uint8 (size, size, 3) (scene tiles)."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def clip_pixels(images: Iterable[ImageInput], size: int) -> np.ndarray:
    """Decode and prepare a batch for a CLIP bundle (open_clip order: resize, crop, then RGB):
    uint8 (B, size, size, 3)."""
    images = list(images)
    if not images:
        raise InputError("no images given", "pass at least one image")
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, x in enumerate(images):
        img = load_image(x, convert_rgb=False, size=size, index=i)
        out[i] = resize_shortest_center_crop(img, size, what=describe_image(x, i))
    return out


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
