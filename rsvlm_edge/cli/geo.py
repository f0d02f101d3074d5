"""``rsvlm-edge classify-scene``: tile a georeferenced raster and classify every tile.

Registered on the main app by ``register(app)``; rasterio is imported only when the command runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .common import read_labels


def _parse_bands(s: Optional[str]) -> Optional[tuple[int, ...]]:
    if s is None:
        return None
    try:
        out = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--bands '{s}' is not a comma-separated list of band numbers",
                         "e.g. --bands 4,3,2 (1-based) or --bands 1 for one band repeated") from None
    if not out:
        raise InputError("--bands is empty", "e.g. --bands 4,3,2")
    if min(out) < 1:
        raise InputError(f"--bands {s}: band numbers start at 1", "e.g. --bands 4,3,2 (1-based, as in rasterio)")
    if len(out) not in (1, 3):
        raise InputError(f"--bands {s}: give three bands (R,G,B) or one band to repeat", "e.g. --bands 4,3,2 or --bands 1")
    return out


def _parse_stretch(s: str) -> Optional[tuple[float, float]]:
    if s.strip().lower() == "none":
        return None
    try:
        lo, hi = (float(x) for x in s.split(","))
    except ValueError:
        raise InputError(f"--stretch '{s}' is not LOW,HIGH percentiles or 'none'",
                         "e.g. --stretch 2,98, or --stretch none for data already in 0-255") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi <= 100):
        raise InputError(f"--stretch {s}: percentiles must satisfy 0 <= LOW < HIGH <= 100",
                         "e.g. --stretch 2,98, or --stretch none for data already in 0-255")
    return lo, hi


def classify_scene_cmd(
    bundle: Annotated[Path, typer.Argument(help="CLIP bundle (NAME.rsvlm)")],
    scene: Annotated[Path, typer.Argument(help="raster scene (GeoTIFF or any GDAL raster)")],
    labels: Annotated[str, typer.Option(help="comma-separated class names, or @file with one per line")],
    templates: Annotated[Optional[str], typer.Option(help="satellite | rs-ensemble | plain | a template with {}")] = None,
    tile: Annotated[Optional[int], typer.Option(help="tile side in scene pixels (default: the bundle's image size)")] = None,
    stride: Annotated[Optional[int], typer.Option(help="step between tiles in pixels (default: the tile size)")] = None,
    bands: Annotated[Optional[str], typer.Option(help="1-based bands as R,G,B, e.g. 4,3,2 (default: 1,2,3, or band 1 repeated)")] = None,
    stretch: Annotated[str, typer.Option(help="LOW,HIGH percentile stretch per band, or 'none' for 0-255 data")] = "2,98",
    max_nodata: Annotated[float, typer.Option(help="skip tiles whose nodata fraction exceeds this")] = 0.5,
    geojson: Annotated[Optional[Path], typer.Option(help="write tile polygons (EPSG:4326) with labels here")] = None,
    label_raster: Annotated[Optional[Path], typer.Option(help="write a uint8 class-index GeoTIFF (one pixel per tile) here")] = None,
    backend: Annotated[str, typer.Option(help="auto | ort | ort-cpu | ort-cuda (see `rsvlm-edge doctor`)")] = "auto",
) -> None:
    """Zero-shot classification of a large raster scene, tile by tile, with a per-class summary."""
    from rich.table import Table

    from ..atomic import check_output_path
    from ..geo import SKIPPED, classify_scene, require_rasterio
    from ..models.clip.prompts import check_labels, resolve_templates
    from ..progress import info, progress, table_console, warn
    from .clip import _clip_runtime

    require_rasterio()
    for name, value in (("--tile", tile), ("--stride", stride)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be >= 1 pixel (got {value})", f"e.g. {name} 224, or leave it out")
    if tile is not None and stride is not None and stride > tile:
        raise InputError(f"--stride {stride} is larger than --tile {tile}", "a larger stride would leave gaps between tiles")
    if not (math.isfinite(max_nodata) and 0 <= max_nodata <= 1):
        raise InputError(f"--max-nodata must be a fraction in 0..1 (got {max_nodata})", "e.g. --max-nodata 0.5")
    label_list = check_labels(read_labels(labels))
    if templates is not None:
        resolve_templates(templates)
    for opt, out in (("--geojson", geojson), ("--label-raster", label_raster)):
        if out is not None:
            check_output_path(out, f"{opt} output")
    if label_raster and len(label_list) >= SKIPPED:
        raise InputError(f"{len(label_list)} labels do not fit a uint8 label raster ({SKIPPED} marks skipped tiles)",
                         f"use at most {SKIPPED - 1} labels with --label-raster")
    band_sel, pct = _parse_bands(bands), _parse_stretch(stretch)
    rt = _clip_runtime(bundle, backend)
    with progress() as bar:
        task = bar.add_task("tiles", total=None)
        res = classify_scene(rt, scene, label_list, templates=templates, tile=tile, stride=stride, bands=band_sel,
                             stretch=pct, max_nodata=max_nodata,
                             on_tiles=lambda done, total: bar.update(task, completed=done, total=total))
    rows, cols = res.grid_shape
    table = Table("class", "tiles", "area fraction",
                  title=f"{scene.name}: {res.width}x{res.height} px, {rows}x{cols} tiles of {res.tile} px, stride {res.stride}")
    for name, n, frac in res.summary():
        if n or name in label_list:
            table.add_row(name, str(n), f"{frac:.3f}")
    table_console().print(table)
    if res.skipped:
        warn(f"{len(res.skipped)} of {len(res.tiles)} tiles skipped: nodata fraction above {max_nodata:g}")
    if geojson:
        info(f"wrote {res.write_geojson(geojson)}")
    if label_raster:
        info(f"wrote {res.write_label_raster(label_raster)}")


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    """Add ``classify-scene`` to the ``rsvlm-edge`` app."""
    app.command("classify-scene")(classify_scene_cmd)
