"""The embedding stage, as two functions on column batches, run in this process or as Ray Data
stages (``ray_pipeline``) — the same code either way:

* ``decode_batch`` (read -> decode/tile): item, path, window columns -> uint8 pixels at the model's
  resolution, a status per item (``ok``, ``nodata``, ``unreadable``) and the reason. Images are
  prepared as ``embed`` prepares them (``rsvlm_edge.images.clip_pixels``); scene tiles as
  ``classify-scene`` reads them (``rsvlm_edge.geo.Scene.read``: bands, percentile stretch computed
  once per scene, nodata black; bicubic resize when the tile is not the model's size).
* ``ClipEmbedder`` (one runtime per process or Ray actor): pixels -> L2-normalised float32
  embeddings of the ``ok`` items.

Batches are cut by ``chunk_ranges`` (never across a shard), so every item is encoded in the same
batch with and without Ray.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import BundleError, InputError
from .shards import STATUS_NODATA, STATUS_OK, STATUS_UNREADABLE
from .sources import SourceTable

OPEN_SCENES = 4  # scenes kept open per process (tiles arrive grouped by scene)


@dataclass(frozen=True)
class EmbedConfig:
    """Everything a decode task or an embedding actor needs (picklable, sent to Ray workers)."""

    bundle: str
    bundle_sha256: str
    image_size: int
    embed_dim: int
    batch_size: int
    backend: str = "auto"
    threads: int | None = None
    bands: tuple[int, ...] | None = None
    stretch: tuple[float, float] | None = (2.0, 98.0)
    max_nodata: float = 0.5
    max_pixels: int | None = None


def chunk_ranges(ranges: list[tuple[int, int]], batch_size: int) -> Iterator[tuple[int, int]]:
    """[start, stop) batches of at most ``batch_size`` items inside each range (shard)."""
    for a, b in ranges:
        for s in range(a, b, batch_size):
            yield s, min(s + batch_size, b)


_scenes: OrderedDict[tuple, object] = OrderedDict()


def _scene(path: str, config: EmbedConfig):
    """An open ``geo.Scene`` (or the ``InputError`` opening it raised), cached per process: the
    stretch limits are computed once per scene."""
    from ..geo import open_scene

    key = (path, config.bands, config.stretch)
    if key not in _scenes:
        try:
            _scenes[key] = open_scene(path, config.bands, config.stretch)
        except InputError as e:
            _scenes[key] = e
        while len(_scenes) > OPEN_SCENES:
            old = _scenes.popitem(last=False)[1]
            if not isinstance(old, InputError):
                old.close()
    _scenes.move_to_end(key)
    hit = _scenes[key]
    if isinstance(hit, InputError):
        raise hit
    return hit


def _tile_pixels(path: str, window: tuple[int, int, int, int], config: EmbedConfig) -> tuple[np.ndarray | None, float]:
    """(uint8 (S, S, 3) pixels or None when skipped for nodata, nodata fraction) of a scene tile."""
    from PIL import Image
    from rasterio.windows import Window

    from ..images import resize_square

    rgb, valid = _scene(path, config).read(Window(*window))
    nodata = float(1.0 - valid.mean())
    if nodata > config.max_nodata:
        return None, nodata
    s = config.image_size
    return (resize_square(Image.fromarray(rgb), s) if window[2] != s or window[3] != s else rgb), nodata


def decode_batch(batch: dict[str, np.ndarray], config: EmbedConfig) -> dict[str, np.ndarray]:
    """Read and prepare one batch of items (see the module docstring). An item that cannot be read
    gets status ``unreadable`` and the error's message as reason; it never raises for one file."""
    from ..images import clip_pixels, max_pixels, set_max_pixels

    if config.max_pixels is not None and max_pixels() != config.max_pixels:
        set_max_pixels(config.max_pixels)  # a Ray worker: the driver's --max-image-pixels
    n, s = len(batch["item"]), config.image_size
    pixels = np.zeros((n, s, s, 3), dtype=np.uint8)
    status, reason = [STATUS_OK] * n, [""] * n
    for i in range(n):
        path = str(batch["path"][i])
        window = tuple(int(batch[c][i]) for c in ("col_off", "row_off", "width", "height"))
        try:
            if window[2] < 0:
                pixels[i] = clip_pixels([path], s)[0]
                continue
            px, nodata = _tile_pixels(path, window, config)
        except InputError as e:
            status[i], reason[i] = STATUS_UNREADABLE, e.message
            continue
        if px is None:
            status[i], reason[i] = STATUS_NODATA, f"nodata fraction {nodata:.3f} > {config.max_nodata:g}"
        else:
            pixels[i] = px
    return {"item": np.asarray(batch["item"], dtype=np.int64), "pixels": pixels,
            "status": np.array(status, dtype=str), "reason": np.array(reason, dtype=str)}


class ClipEmbedder:
    """Embeds decoded batches with one ``ClipRuntime`` (constructed once per process / Ray actor).
    The bundle is checked to be the one the build was planned with (same content digest)."""

    def __init__(self, config: EmbedConfig, runtime=None) -> None:
        if runtime is None:
            from ..bundle import open_bundle
            from ..models.clip.runtime import ClipRuntime
            from .manifest import bundle_digest

            bundle = open_bundle(config.bundle, verify=False)
            if bundle_digest(bundle) != config.bundle_sha256:
                raise BundleError(f"bundle '{config.bundle}' on this worker differs from the one the build uses",
                                  "give every node of the Ray cluster the same copy of the bundle")
            runtime = ClipRuntime(bundle, backend=config.backend, threads=config.threads,
                                  max_batch=min(config.batch_size, bundle.manifest.max_batch))
        self.runtime = runtime
        self.embed_dim = config.embed_dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["status"]) == STATUS_OK
        emb = np.zeros((len(ok), self.embed_dim), dtype=np.float32)
        if ok.any():
            emb[ok] = self.runtime.encode_images(np.ascontiguousarray(batch["pixels"][ok]))
        return {"item": np.asarray(batch["item"], dtype=np.int64), "embedding": emb,
                "status": np.asarray(batch["status"]).astype(str), "reason": np.asarray(batch["reason"]).astype(str)}


def embed_in_process(plan: SourceTable, ranges: list[tuple[int, int]], config: EmbedConfig,
                     embedder: ClipEmbedder) -> Iterator[dict[str, np.ndarray]]:
    """The pipeline in this process: decode then embed each batch of the pending shards, in order."""
    for a, b in chunk_ranges(ranges, config.batch_size):
        yield embedder(decode_batch(plan.batch(a, b), config))


__all__ = ["ClipEmbedder", "EmbedConfig", "STATUS_NODATA", "STATUS_OK", "STATUS_UNREADABLE", "chunk_ranges",
           "decode_batch", "embed_in_process"]
