"""Scene-level zero-shot classification of georeferenced rasters (GeoTIFF and any GDAL raster).

A scene is cut into square tiles (default: the bundle's image size, edge-aligned last row/column),
each tile is read with a rasterio window (the scene is never loaded whole), its selected bands are
contrast-stretched to uint8 RGB with limits computed once per scene, and the tiles are classified in
batches of the bundle's ``max_batch``. Results carry each tile's window and bounds in the raster CRS
and can be written as GeoJSON (EPSG:4326) or as a class-index GeoTIFF at tile resolution.

rasterio is an optional dependency (``pip install 'rsvlm-edge[geo]'``), imported lazily.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .atomic import atomic_path
from .errors import InputError
from .images import resize_square
from .models.clip.prompts import check_labels

if TYPE_CHECKING:
    from .models.clip.runtime import ClipRuntime

DEFAULT_STRETCH = (2.0, 98.0)
DEFAULT_MAX_NODATA = 0.5
OVERVIEW_MAX_SIDE = 1024  # the percentile stretch is computed on a read decimated to this size
SKIPPED = 255  # label-raster value of tiles skipped for nodata


def require_rasterio():
    """Import rasterio, or say how to install it."""
    try:
        import rasterio
        import rasterio.warp
        import rasterio.windows
    except ImportError:
        raise InputError("reading georeferenced scenes needs rasterio, which is not installed",
                         "pip install 'rsvlm-edge[geo]'") from None
    return rasterio


# --- tiling -------------------------------------------------------------------------------------

def tile_offsets(n: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one axis of length ``n``: every ``stride`` pixels, plus a last tile
    aligned to the edge, so the tiles cover ``[0, n)`` exactly and none leaves the scene."""
    if n < tile:
        raise InputError(f"scene side of {n} px is smaller than the tile of {tile} px",
                         f"pass --tile {n} or smaller")
    offs = list(range(0, n - tile + 1, stride))
    if offs[-1] + tile < n:
        offs.append(n - tile)
    return offs


def tile_grid(width: int, height: int, tile: int, stride: int) -> tuple[list[int], list[int]]:
    """(row offsets, column offsets) of the tile grid over a ``width`` x ``height`` scene."""
    return tile_offsets(height, tile, stride), tile_offsets(width, tile, stride)


def _nearest_cell_sizes(n: int, offsets: list[int], tile: int) -> np.ndarray:
    """Per tile along one axis, the number of pixels whose centre is nearest that tile's centre
    (ties to the earlier tile). The sizes sum to ``n``; used for area fractions."""
    centres = np.asarray(offsets, dtype=np.float64) + tile / 2
    px = np.arange(n) + 0.5
    return np.bincount(np.abs(px[:, None] - centres[None, :]).argmin(axis=1), minlength=len(offsets))


# --- reading ------------------------------------------------------------------------------------

def _parse_bands(bands: Sequence[int] | None, count: int, path: Path) -> tuple[int, int, int]:
    if bands is None:
        if count >= 3:
            return (1, 2, 3)
        if count == 1:
            return (1, 1, 1)
        raise InputError(f"'{path}' has {count} bands; which three make the RGB image is ambiguous",
                         "choose them with bands=(r, g, b) / --bands R,G,B (1-based), or one band to repeat")
    bands = tuple(int(b) for b in bands)
    if len(bands) == 1:
        bands = bands * 3
    if len(bands) != 3:
        raise InputError(f"bands={list(bands)}: give three bands (R,G,B) or one band to repeat",
                         "e.g. --bands 4,3,2 (1-based, as in rasterio)")
    for b in bands:
        if not 1 <= b <= count:
            raise InputError(f"band {b} is out of range: '{path}' has {count} band{'s' * (count != 1)} (1..{count})",
                             f"choose bands between 1 and {count} (1-based, as in rasterio)")
    return bands


def _check_stretch(stretch: Sequence[float] | None) -> tuple[float, float] | None:
    if stretch is None:
        return None
    lo, hi = (float(x) for x in stretch)
    if not 0.0 <= lo < hi <= 100.0:
        raise InputError(f"stretch percentiles {lo:g},{hi:g} are invalid",
                         "give LOW,HIGH with 0 <= LOW < HIGH <= 100 (e.g. 2,98), or none for 0-255 data")
    return lo, hi


class Scene:
    """An open raster with a band selection and a contrast stretch, read one window at a time.

    ``read(window)`` returns uint8 RGB (h, w, 3) and a bool validity mask (h, w); nodata pixels
    (masked in any selected band, or non-finite) are black. ``limits`` is (3, 2) float64 stretch
    limits per output channel (from the valid pixels of a decimated overview read), or None when
    ``stretch=None`` (values are used as they are and must lie in 0..255).
    """

    def __init__(self, path: str | os.PathLike[str], bands: Sequence[int] | None = None,
                 stretch: Sequence[float] | None = DEFAULT_STRETCH) -> None:
        rasterio = require_rasterio()
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"scene '{self.path}' {'is not a file' if self.path.exists() else 'does not exist'}",
                             "pass the path of a raster file")
        percentiles = _check_stretch(stretch)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self.path)
        except RasterioIOError as e:
            raise InputError(f"'{self.path}' is not a raster GDAL can read ({e})",
                             "pass a GeoTIFF (or another GDAL-readable raster)") from None
        try:
            self.bands = _parse_bands(bands, self._ds.count, self.path)
            self._unique = sorted(set(self.bands))
            self._pick = [self._unique.index(b) for b in self.bands]
            self.limits = self._stretch_limits(percentiles)
        except BaseException:
            self._ds.close()
            raise

    # properties of the underlying dataset
    @property
    def width(self) -> int:
        return int(self._ds.width)

    @property
    def height(self) -> int:
        return int(self._ds.height)

    @property
    def count(self) -> int:
        return int(self._ds.count)

    @property
    def crs(self):
        """rasterio ``CRS`` or None for a raster without one."""
        return self._ds.crs

    @property
    def transform(self):
        """Affine pixel -> raster-CRS transform."""
        return self._ds.transform

    def close(self) -> None:
        self._ds.close()

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        """(values (3, h, w) float64 in output-channel order, valid (h, w) bool)."""
        from rasterio.errors import RasterioIOError

        try:
            arr = self._ds.read(self._unique, masked=True, **kw)
        except RasterioIOError as e:
            where = f" window {kw['window']}" if "window" in kw else ""
            raise InputError(f"'{self.path}' could not be read{where} ({e})",
                             "check that the file is complete (gdalinfo -checksum)") from None
        vals = np.asarray(arr.data, dtype=np.float64)[self._pick]
        valid = ~np.ma.getmaskarray(arr)[self._pick].any(axis=0) & np.isfinite(vals).all(axis=0)
        return vals, valid

    def _stretch_limits(self, percentiles: tuple[float, float] | None) -> np.ndarray | None:
        from rasterio.enums import Resampling

        f = max(1, math.ceil(max(self.width, self.height) / OVERVIEW_MAX_SIDE))
        if f == 1:
            vals, valid = self._read()
        else:  # decimated read: uses the file's overviews when it has them
            shape = (len(self._unique), math.ceil(self.height / f), math.ceil(self.width / f))
            vals, valid = self._read(out_shape=shape, resampling=Resampling.nearest)
        if not valid.any():
            raise InputError(f"'{self.path}' has no valid pixels in bands {list(self.bands)} (all nodata)",
                             "check the nodata value / mask, or choose other bands")
        sample = vals[:, valid]
        if percentiles is None:
            dtype = self._ds.dtypes[self.bands[0] - 1]
            if sample.min() < 0 or sample.max() > 255:
                raise InputError(f"'{self.path}' has {dtype} values in {sample.min():g}..{sample.max():g}, "
                                 "outside 0..255, and stretch is none",
                                 "use a percentile stretch (e.g. --stretch 2,98)")
            return None
        return np.percentile(sample, percentiles, axis=1).T  # (3, 2)

    def to_uint8(self, vals: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Stretch (3, h, w) values to uint8 (h, w, 3); invalid pixels become 0."""
        if self.limits is None:
            out = np.clip(np.rint(vals), 0, 255)
        else:
            lo, hi = self.limits[:, 0, None, None], self.limits[:, 1, None, None]
            span = np.where(hi > lo, hi - lo, 1.0)  # a constant band maps to 0 (<= lo) / 255 (> lo)
            out = np.clip(np.rint((vals - lo) / span * 255.0), 0, 255)
            out = np.where(hi > lo, out, np.where(vals > lo, 255.0, 0.0))
        out = np.where(valid[None], out, 0.0)
        return np.ascontiguousarray(out.astype(np.uint8).transpose(1, 2, 0))

    def read(self, window) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB (h, w, 3) and valid mask (h, w) of a rasterio ``Window``."""
        vals, valid = self._read(window=window)
        return self.to_uint8(vals, valid), valid


def open_scene(path: str | os.PathLike[str], bands: Sequence[int] | None = None,
               stretch: Sequence[float] | None = DEFAULT_STRETCH) -> Scene:
    """Open ``path`` for tiled reading (see ``Scene``); use it as a context manager."""
    return Scene(path, bands, stretch)


# --- results ------------------------------------------------------------------------------------

@dataclass
class Tile:
    """One tile: grid position, pixel window, bounds (left, bottom, right, top) in the raster CRS,
    nodata fraction, and — unless skipped — top label, its probability and all probabilities."""

    row: int
    col: int
    window: Any  # rasterio.windows.Window
    bounds: tuple[float, float, float, float]
    nodata_fraction: float
    label: str | None = None
    prob: float | None = None
    probs: np.ndarray | None = None

    @property
    def skipped(self) -> bool:
        return self.label is None


@dataclass
class SceneResult:
    """Per-tile zero-shot classification of a scene. ``tiles`` is row-major over the grid;
    ``embeddings`` (K, E) are the L2-normalised image embeddings of the classified tiles, in order."""

    path: Path
    labels: list[str]
    width: int
    height: int
    crs: Any  # rasterio CRS or None
    transform: Any  # affine.Affine
    tile: int
    stride: int
    bands: tuple[int, int, int]
    limits: np.ndarray | None
    max_nodata: float
    row_offsets: list[int]
    col_offsets: list[int]
    tiles: list[Tile] = field(default_factory=list)
    embeddings: np.ndarray | None = None

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.row_offsets), len(self.col_offsets)

    @property
    def classified(self) -> list[Tile]:
        return [t for t in self.tiles if not t.skipped]

    @property
    def skipped(self) -> list[Tile]:
        return [t for t in self.tiles if t.skipped]

    def class_grid(self) -> np.ndarray:
        """uint8 (rows, cols): class index per tile, ``SKIPPED`` (255) for skipped tiles."""
        if len(self.labels) >= SKIPPED:
            raise InputError(f"{len(self.labels)} labels do not fit a uint8 class raster (255 is 'skipped')",
                             "use at most 254 labels")
        grid = np.full(self.grid_shape, SKIPPED, dtype=np.uint8)
        index = {lab: i for i, lab in enumerate(self.labels)}
        for t in self.classified:
            grid[t.row, t.col] = index[t.label]
        return grid

    def summary(self) -> list[tuple[str, int, float]]:
        """(class, tiles, area fraction) per label and for 'skipped (nodata)'. Area fraction: share of
        the scene's pixels whose nearest tile centre is a tile of that class (overlaps counted once)."""
        area = np.outer(_nearest_cell_sizes(self.height, self.row_offsets, self.tile),
                        _nearest_cell_sizes(self.width, self.col_offsets, self.tile)) / (self.width * self.height)
        rows: dict[str, list] = {lab: [lab, 0, 0.0] for lab in self.labels}
        rows["skipped (nodata)"] = ["skipped (nodata)", 0, 0.0]
        for t in self.tiles:
            r = rows[t.label if t.label is not None else "skipped (nodata)"]
            r[1] += 1
            r[2] += float(area[t.row, t.col])
        return [tuple(r) for r in rows.values()]

    def crs_note(self) -> dict[str, Any]:
        """The raster's CRS as an EPSG code (when it has one) and WKT."""
        if self.crs is None:
            return {"source_crs": None, "source_crs_wkt": None}
        epsg = self.crs.to_epsg()
        return {"source_crs": f"EPSG:{epsg}" if epsg else self.crs.to_wkt(), "source_crs_wkt": self.crs.to_wkt()}

    def tile_polygon(self, t: Tile) -> dict[str, Any]:
        """GeoJSON Polygon of a tile's corners in the raster CRS (counter-clockwise exterior ring)."""
        x0, y0 = t.window.col_off, t.window.row_off
        x1, y1 = x0 + t.window.width, y0 + t.window.height
        ring = [_apply(self.transform, x, y) for x, y in ((x0, y1), (x1, y1), (x1, y0), (x0, y0))]
        if _signed_area(ring) < 0:
            ring.reverse()
        ring = [(float(x), float(y)) for x, y in ring]
        return {"type": "Polygon", "coordinates": [ring + ring[:1]]}

    def to_geojson(self) -> dict[str, Any]:
        """FeatureCollection of tile polygons in EPSG:4326 (RFC 7946) with label/prob properties.
        A raster without a CRS keeps its own coordinates (``coordinates_crs`` is then null)."""
        from rasterio.warp import transform_geom

        note = self.crs_note()
        features = []
        for t in self.tiles:
            geom = self.tile_polygon(t)
            if self.crs is not None:
                geom = transform_geom(self.crs, "EPSG:4326", geom)
            props: dict[str, Any] = {
                "row": t.row, "col": t.col,
                "window": {"col_off": int(t.window.col_off), "row_off": int(t.window.row_off),
                           "width": int(t.window.width), "height": int(t.window.height)},
                "bounds": list(t.bounds), "nodata_fraction": t.nodata_fraction, "skipped": t.skipped,
                "label": t.label, "prob": t.prob,
                "probs": None if t.probs is None else {lab: float(p) for lab, p in zip(self.labels, t.probs)},
            }
            features.append({"type": "Feature", "geometry": geom, "properties": props})
        return {
            "type": "FeatureCollection",
            "properties": {
                "scene": str(self.path), "labels": self.labels, "tile": self.tile, "stride": self.stride,
                "bands": list(self.bands), "max_nodata": self.max_nodata,
                "coordinates_crs": "EPSG:4326" if self.crs is not None else None,
                **note, "note": "bounds are in source_crs; geometries are reprojected to EPSG:4326 (RFC 7946)",
            },
            "features": features,
        }

    def write_geojson(self, path: str | os.PathLike[str]) -> Path:
        """Write ``to_geojson()`` atomically (temp file in the same directory, then rename)."""
        path = Path(path)
        gj = self.to_geojson()
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(gj, indent=1) + "\n")
        return path

    def label_transform(self):
        """Affine of the label raster: cells of ``stride`` x ``stride`` scene pixels, centred on the
        regular grid's tile centres (for stride == tile: exactly the tiles). The edge-aligned last
        row/column of tiles sits less than one stride from its cell."""
        from affine import Affine

        t, s, half = self.transform, self.stride, (self.tile - self.stride) / 2
        c, f = _apply(t, half, half)
        return Affine(t.a * s, t.b * s, c, t.d * s, t.e * s, f)

    def write_label_raster(self, path: str | os.PathLike[str]) -> Path:
        """uint8 GeoTIFF, one pixel per tile (``class_grid``), 255 = skipped, with the scene's CRS,
        ``label_transform()``, and the label names in the band description and metadata."""
        rasterio = require_rasterio()
        grid = self.class_grid()
        path = Path(path)
        names = ", ".join(f"{i}={lab}" for i, lab in enumerate(self.labels))
        with atomic_path(path) as tmp:
            with rasterio.open(tmp, "w", driver="GTiff", width=grid.shape[1], height=grid.shape[0], count=1,
                               dtype="uint8", crs=self.crs, transform=self.label_transform(), nodata=SKIPPED) as dst:
                dst.write(grid, 1)
                dst.set_band_description(1, f"class index: {names}; {SKIPPED}=skipped (nodata)")
                dst.update_tags(labels=json.dumps(self.labels), skipped=str(SKIPPED), scene=str(self.path),
                                tile=str(self.tile), stride=str(self.stride),
                                **{f"class_{i}": lab for i, lab in enumerate(self.labels)})
        return path


def _apply(t, x: float, y: float) -> tuple[float, float]:
    """Pixel (x=col, y=row) -> raster CRS through an Affine (spelled out: affine 2.x and 3.x agree)."""
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


def _window_bounds(transform, win) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a window's four corners in the raster CRS."""
    xs, ys = zip(*(_apply(transform, x, y) for x in (win.col_off, win.col_off + win.width)
                   for y in (win.row_off, win.row_off + win.height)))
    return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


def _signed_area(ring: Sequence[tuple[float, float]]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, [*ring[1:], ring[0]]))


# --- classification -----------------------------------------------------------------------------

def _check_tiling(tile: int | None, stride: int | None, scene: Scene, image_size: int) -> tuple[int, int]:
    if tile is None:  # the model's resolution, shrunk to fit a small scene
        tile = min(image_size, scene.width, scene.height)
    if tile < 1:
        raise InputError(f"tile must be >= 1 pixel, got {tile}")
    stride = tile if stride is None else stride
    if not 1 <= stride <= tile:
        raise InputError(f"stride {stride} must be between 1 and the tile size {tile}",
                         "a stride larger than the tile would leave gaps between tiles")
    return tile, stride


def classify_scene(runtime: ClipRuntime, path: str | os.PathLike[str], labels: Sequence[str],
                   templates: str | Sequence[str] | None = None, tile: int | None = None,
                   stride: int | None = None, bands: Sequence[int] | None = None,
                   stretch: Sequence[float] | None = DEFAULT_STRETCH, max_nodata: float = DEFAULT_MAX_NODATA,
                   on_tiles: Callable[[int, int], None] | None = None) -> SceneResult:
    """Zero-shot classification of every tile of a raster scene.

    ``tile``/``stride`` in scene pixels (default: the bundle's image size / the tile); tiles are
    resized to the model resolution (bicubic) when they differ. ``bands`` are 1-based. ``stretch``
    is (low, high) percentiles or None for data already in 0..255. Tiles with a nodata fraction
    above ``max_nodata`` are skipped. ``on_tiles(done, total)`` reports progress in tiles.
    """
    rasterio = require_rasterio()
    labels = check_labels(labels)
    if not 0.0 <= max_nodata <= 1.0:
        raise InputError(f"max_nodata must be a fraction in 0..1, got {max_nodata}")
    runtime.class_embeddings(labels, templates)  # bad labels/templates fail before reading the scene
    size = runtime.image_size
    with open_scene(path, bands, stretch) as scene:
        tile, stride = _check_tiling(tile, stride, scene, size)
        rows, cols = tile_grid(scene.width, scene.height, tile, stride)
        res = SceneResult(scene.path, labels, scene.width, scene.height, scene.crs, scene.transform, tile, stride,
                          scene.bands, scene.limits, max_nodata, rows, cols)
        positions = [(r, c) for r in range(len(rows)) for c in range(len(cols))]
        embeddings, pending, pixels = [], [], []

        def flush() -> None:
            if not pending:
                return
            emb = runtime.encode_images(np.stack(pixels))
            cls = runtime.classify_embeddings(emb, labels, templates)
            for t, p in zip(pending, cls.probs):
                k = int(p.argmax())
                t.label, t.prob, t.probs = labels[k], float(p[k]), p
            embeddings.append(emb)
            pending.clear()
            pixels.clear()

        for r, c in positions:
            win = rasterio.windows.Window(cols[c], rows[r], tile, tile)
            rgb, valid = scene.read(win)
            t = Tile(r, c, win, _window_bounds(scene.transform, win), float(1.0 - valid.mean()))
            res.tiles.append(t)
            if t.nodata_fraction <= max_nodata:
                pending.append(t)
                pixels.append(resize_square(Image.fromarray(rgb), size) if tile != size else rgb)
            if len(pending) == runtime.max_batch or len(res.tiles) == len(positions):
                flush()
            if on_tiles:
                on_tiles(len(res.tiles) - len(pending), len(positions))
    res.embeddings = np.concatenate(embeddings) if embeddings else np.zeros((0, runtime.embed_dim), np.float32)
    return res
