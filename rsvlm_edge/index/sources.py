"""Sources of an index: image folders, file lists and GeoTIFF scenes, expanded into items (one per
image, one per scene tile) and the ids -> source table.

* A source is an image file, a folder (recursed, sorted, as ``classify``/``embed`` read folders), or a
  file list: ``@list.txt`` or any ``*.txt`` file, one path per line (blank lines and lines starting
  with ``#`` ignored; relative paths are relative to the list's directory; a line may name a folder).
* A ``.tif``/``.tiff`` file that is georeferenced (has a CRS) or whose samples are not 8-bit is a
  scene: it is cut into tiles exactly as ``classify-scene`` cuts it (``rsvlm_edge.geo.tile_grid``:
  every ``stride`` pixels, last row/column aligned to the edge), each tile keeping its pixel window,
  its bounds and the scene's CRS. Every other file is embedded whole, as ``embed`` does. Without
  rasterio (the ``geo`` extra) TIFFs are images.

``SourceTable`` is columnar (numpy arrays, saved as an ``.npz`` without pickles): per source its path,
CRS and affine transform; per item its source, window and bounds. The same class holds the plan of a
build (every item to embed) and the index's table (the items embedded, in FAISS id order).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from ..images import list_images
from .manifest import SkippedSource, TileOptions

SCENE_SUFFIXES = (".tif", ".tiff")
LIST_SUFFIX = ".txt"
NO_WINDOW = (-1, -1, -1, -1)


@dataclass(frozen=True)
class SourceRef:
    """Where one embedding comes from: the file, and for a scene tile its pixel window (col_off,
    row_off, width, height), bounds (left, bottom, right, top) in the scene's CRS, the CRS (an
    ``EPSG:n`` code or WKT) and the scene's affine transform (a, b, c, d, e, f)."""

    path: str
    window: tuple[int, int, int, int] | None = None
    bounds: tuple[float, float, float, float] | None = None
    crs: str | None = None
    transform: tuple[float, ...] | None = None

    @property
    def is_tile(self) -> bool:
        return self.window is not None


@dataclass
class SourceTable:
    """Columnar table of items and their sources (see the module docstring)."""

    paths: np.ndarray  # (S,) str, absolute
    crs: np.ndarray  # (S,) str, "" when the source has none (a plain image, or a scene without CRS)
    transforms: np.ndarray  # (S, 6) float64 affine a..f; NaN for plain images
    source: np.ndarray  # (N,) int32 index into paths
    window: np.ndarray  # (N, 4) int32 col_off, row_off, width, height; -1 for whole images
    bounds: np.ndarray  # (N, 4) float64 left, bottom, right, top in the source CRS; NaN for whole images

    COLUMNS = ("paths", "crs", "transforms", "source", "window", "bounds")

    @classmethod
    def empty(cls) -> SourceTable:
        return cls(np.zeros(0, dtype=str), np.zeros(0, dtype=str), np.zeros((0, 6)), np.zeros(0, np.int32),
                   np.zeros((0, 4), np.int32), np.zeros((0, 4)))

    def __len__(self) -> int:
        return len(self.source)

    def take(self, rows: np.ndarray) -> SourceTable:
        """The items ``rows`` (in that order), with the same sources."""
        rows = np.asarray(rows, dtype=np.int64)
        return SourceTable(self.paths, self.crs, self.transforms, self.source[rows], self.window[rows], self.bounds[rows])

    def concat(self, other: SourceTable) -> SourceTable:
        """This table's items followed by ``other``'s."""
        return SourceTable(np.concatenate([self.paths, other.paths]), np.concatenate([self.crs, other.crs]),
                           np.concatenate([self.transforms, other.transforms]),
                           np.concatenate([self.source, other.source + len(self.paths)]).astype(np.int32),
                           np.concatenate([self.window, other.window]), np.concatenate([self.bounds, other.bounds]))

    def ref(self, item: int) -> SourceRef:
        s = int(self.source[item])
        path = str(self.paths[s])
        if self.window[item, 0] < 0:
            return SourceRef(path)
        return SourceRef(path, tuple(int(v) for v in self.window[item]), tuple(float(v) for v in self.bounds[item]),
                         str(self.crs[s]) or None, tuple(float(v) for v in self.transforms[s]))

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Items ``start:stop`` as the columns the embedding pipeline reads: item, path, col_off,
        row_off, width, height."""
        w = self.window[start:stop].astype(np.int64)
        return {"item": np.arange(start, stop, dtype=np.int64), "path": self.paths[self.source[start:stop]],
                "col_off": w[:, 0], "row_off": w[:, 1], "width": w[:, 2], "height": w[:, 3]}

    def indexed_paths(self) -> set[str]:
        """Paths of the sources that have at least one item in the table."""
        return {str(p) for p in self.paths[np.unique(self.source)]} if len(self) else set()

    def save(self, path: Path, what: str = "source table") -> None:
        """Write the table as an .npz (no pickles), atomically."""
        with atomic_path(path, what=what) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{name: getattr(self, name) for name in self.COLUMNS})

    @classmethod
    def load(cls, path: Path, what: str = "source table") -> SourceTable:
        """Read a table written by ``save``; anything else is an ``InputError`` naming the file."""
        fix = "the index is damaged; rebuild it with `rsvlm-edge index build` into a new directory"
        try:
            with np.load(path, allow_pickle=False) as z:
                cols = {name: z[name] for name in cls.COLUMNS}
        except FileNotFoundError:
            raise InputError(f"{what} '{path}' is missing", fix) from None
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise InputError(f"{what} '{path}' cannot be read ({e.__class__.__name__}: {str(e)[:120]})", fix) from None
        except Exception as e:  # zipfile.BadZipFile and other archive damage
            raise InputError(f"{what} '{path}' is corrupt ({e.__class__.__name__}: {str(e)[:120]})", fix) from None
        n, s = len(cols["source"]), len(cols["paths"])
        shapes_ok = (cols["crs"].shape == (s,) and cols["transforms"].shape == (s, 6) and cols["window"].shape == (n, 4)
                     and cols["bounds"].shape == (n, 4) and cols["source"].ndim == 1)
        if not shapes_ok or (n and (cols["source"].min() < 0 or cols["source"].max() >= s)):
            raise InputError(f"{what} '{path}' has inconsistent columns", fix)
        return cls(**cols)


# --- expanding sources ---------------------------------------------------------------------------

def _list_file(source: str) -> Path | None:
    """The list file a source names (``@FILE`` or ``*.txt``), else None."""
    if source.startswith("@"):
        return Path(source[1:])
    return Path(source) if source.lower().endswith(LIST_SUFFIX) else None


def _read_list(path: Path) -> list[tuple[int, Path]]:
    """(line number, path) entries of a file list; relative paths are relative to its directory."""
    if not path.is_file():
        raise InputError(f"file list '{path}' {'is not a file' if path.exists() else 'does not exist'}",
                         "pass @LIST.txt with one image, scene or folder path per line")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise InputError(f"file list '{path}' cannot be read ({e.strerror})", "check its permissions") from None
    except UnicodeDecodeError as e:
        raise InputError(f"file list '{path}' is not UTF-8 text (byte {e.start})", "save it as UTF-8, one path per line") from None
    if "\x00" in text:
        raise InputError(f"file list '{path}' contains NUL bytes (binary, or UTF-16)", "save it as UTF-8, one path per line")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            p = Path(entry)
            out.append((n, p if p.is_absolute() else path.parent / p))
    return out


def expand_sources(sources: Sequence[str | os.PathLike[str]], skip_missing: bool = False
                   ) -> tuple[list[Path], list[SkippedSource]]:
    """Absolute paths of every image/scene the sources name (first occurrence kept, in order), and
    the entries of file lists that do not exist when ``skip_missing`` (otherwise they raise).
    Command-line paths that do not exist always raise, as in ``classify``."""
    files: list[Path] = []
    missing: list[SkippedSource] = []
    seen: set[Path] = set()

    def add(paths: Iterable[Path]) -> None:
        for p in paths:
            r = p.resolve()
            if r not in seen:
                seen.add(r)
                files.append(r)

    for source in map(os.fspath, sources):
        listed = _list_file(source)
        if listed is None:
            add(list_images([source]))
            continue
        for line, entry in _read_list(listed):
            if entry.exists():
                add(list_images([entry]))
            elif skip_missing:
                missing.append(SkippedSource(path=str(entry), reason=f"does not exist (line {line} of '{listed}')"))
            else:
                raise InputError(f"'{entry}' (line {line} of file list '{listed}') does not exist",
                                 "fix the list, or pass --on-error skip to leave missing files out")
    if not files:
        raise InputError("no images found in " + ", ".join(map(os.fspath, sources)),
                         "pass image files, GeoTIFF scenes, folders or @file lists")
    return files, missing


# --- planning ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneHeader:
    """What planning needs from a scene's header: size, band count, CRS text and transform."""

    width: int
    height: int
    count: int
    crs: str
    transform: tuple[float, float, float, float, float, float]


_warned_no_rasterio = False


def probe_scene(path: Path) -> SceneHeader | None:
    """The header of ``path`` if it is a scene to tile (a TIFF with a CRS, or with samples other than
    8-bit), else None (an image: embedded whole). A TIFF rasterio cannot open is an image here; its
    decoding error is reported when it is embedded."""
    global _warned_no_rasterio
    if path.suffix.lower() not in SCENE_SUFFIXES:
        return None
    try:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning
    except ImportError:
        if not _warned_no_rasterio:
            from ..progress import warn

            warn("rasterio is not installed: TIFFs are embedded as whole images, not tiled as scenes "
                 "(pip install 'rsvlm-edge[geo]')")
            _warned_no_rasterio = True
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                if ds.crs is None and all(dt == "uint8" for dt in ds.dtypes):
                    return None
                crs = ""
                if ds.crs is not None:
                    epsg = ds.crs.to_epsg()
                    crs = f"EPSG:{epsg}" if epsg else ds.crs.to_wkt()
                t = ds.transform
                return SceneHeader(int(ds.width), int(ds.height), int(ds.count), crs, (t.a, t.b, t.c, t.d, t.e, t.f))
    except Exception:  # not a raster GDAL reads: treated as an image, whose decoding reports the error
        return None


def scene_tiling(options: TileOptions, header: SceneHeader, image_size: int) -> tuple[int, int]:
    """(tile, stride) for a scene, as ``classify-scene`` chooses them: the model's image size shrunk
    to fit the scene, and a stride equal to the tile, unless given."""
    tile = options.tile if options.tile is not None else min(image_size, header.width, header.height)
    stride = options.stride if options.stride is not None else tile
    if not 1 <= stride <= tile:
        raise InputError(f"--stride {stride} must be between 1 and the tile size {tile}",
                         "a stride larger than the tile would leave gaps between tiles")
    return tile, stride


def plan_items(files: Sequence[Path], options: TileOptions, image_size: int, skip_errors: bool = False
               ) -> tuple[SourceTable, list[SkippedSource]]:
    """The items to embed, in order: one per image, one per tile of each scene (row-major). A scene
    that cannot be tiled (smaller than the tile, bands out of range) raises, or with ``skip_errors``
    is left out and returned with its reason."""
    from ..geo import _parse_bands, _window_bounds, tile_grid

    paths, crs, transforms, source, windows, bounds = [], [], [], [], [], []
    skipped: list[SkippedSource] = []
    for f in files:
        header = probe_scene(f)
        if header is None:
            s = len(paths)
            paths.append(str(f))
            crs.append("")
            transforms.append((math.nan,) * 6)
            source.append(s)
            windows.append(NO_WINDOW)
            bounds.append((math.nan,) * 4)
            continue
        try:
            _parse_bands(options.bands, header.count, f)
            tile, stride = scene_tiling(options, header, image_size)
            rows, cols = tile_grid(header.width, header.height, tile, stride)
        except InputError as e:
            if not skip_errors:
                raise InputError(f"scene '{f}': {e.message}", e.fix) from None
            skipped.append(SkippedSource(path=str(f), reason=e.message))
            continue
        from affine import Affine
        from rasterio.windows import Window

        affine = Affine(*header.transform)
        s = len(paths)
        paths.append(str(f))
        crs.append(header.crs)
        transforms.append(header.transform)
        for r in rows:
            for c in cols:
                source.append(s)
                windows.append((c, r, tile, tile))
                bounds.append(_window_bounds(affine, Window(c, r, tile, tile)))
    table = SourceTable(np.array(paths, dtype=str), np.array(crs, dtype=str),
                        np.array(transforms, dtype=np.float64).reshape(-1, 6), np.array(source, dtype=np.int32),
                        np.array(windows, dtype=np.int32).reshape(-1, 4), np.array(bounds, dtype=np.float64).reshape(-1, 4))
    return table, skipped
