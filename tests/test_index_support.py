"""Shared by the archive-index tests (test_index*.py): a tiny CLIP bundle exported once per session,
synthetic image folders and GeoTIFF scenes, the CLI error contract, and a comparable dump of an
index's contents. Holds no tests itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CRS = "EPSG:32633"
SCENE_W, SCENE_H = 200, 150  # uint16, 4 bands; nodata (0) in the top 40 rows
NODATA_ROWS = 40


def tiny_bundle(tmp_path_factory, seed: int = 3) -> Path:
    """A 64 px / 64-d CLIP bundle (max batch 4), exported once per test session and seed."""
    from clip_models import save_bare, tiny_open_clip

    from rsvlm_edge.export.clip import export_clip

    root = tmp_path_factory.getbasetemp() / "index-bundles"
    out = root / f"tiny-{seed}.rsvlm"
    if not out.exists():
        root.mkdir(exist_ok=True)
        export_clip(save_bare(tiny_open_clip(seed=seed), root / f"tiny-{seed}.pt"), out, max_batch=4)
    return out


def write_images(folder: Path, n: int, seed: int = 0, size: tuple[int, int] = (72, 90)) -> list[Path]:
    """``n`` random RGB PNGs (distinct content) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def write_scene(path: Path, width: int = SCENE_W, height: int = SCENE_H, nodata_rows: int = NODATA_ROWS,
                seed: int = 7) -> Path:
    """A 4-band uint16 GeoTIFF (EPSG:32633, 10 m pixels) whose top ``nodata_rows`` rows are nodata."""
    import rasterio
    from rasterio.transform import from_origin

    from rsvlm_edge.export.clip import synthetic_rs_images

    side = max(width, height)
    rgb = synthetic_rs_images(1, side, seed=seed)[0][:height, :width].astype(np.uint16)
    yy, xx = np.mgrid[0:height, 0:width]
    data = np.stack([rgb[..., 0] * 37 + 300, rgb[..., 1] * 23 + 900, rgb[..., 2] * 51 + 50,
                     xx * 7 + yy * 3 + 2000]).astype(np.uint16)
    data[:, :nodata_rows, :] = 0
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=4, dtype="uint16", crs=CRS,
                       transform=from_origin(500000.0, 5000000.0, 10.0, 10.0), nodata=0) as dst:
        dst.write(data)
    return path


def index_contents(path: Path) -> dict:
    """Everything an index holds that must not depend on how it was built: the vectors (in id
    order), the ids -> source table, each shard's arrays, and the manifest without timestamps."""
    import faiss

    manifest = json.loads((path / "manifest.json").read_text())
    index = faiss.read_index(str(path / manifest["index_file"]))
    with np.load(path / manifest["table_file"]) as z:
        table = {k: z[k] for k in z.files}
    shards = {}
    for part in manifest["parts"]:
        for name in part["shards"]:
            with np.load(path / name) as z:
                shards[name] = {k: z[k] for k in z.files}
    for key in ("created", "updated"):
        manifest.pop(key)
    return {"vectors": index.reconstruct_n(0, index.ntotal) if manifest["index"]["type"] == "flat" else None,
            "table": table, "shards": shards, "manifest": manifest}


def assert_same_contents(a: dict, b: dict) -> None:
    assert a["manifest"] == b["manifest"]
    if a["vectors"] is not None:
        assert np.array_equal(a["vectors"], b["vectors"])
    assert a["table"].keys() == b["table"].keys()
    for k in a["table"]:
        assert np.array_equal(a["table"][k], b["table"][k], equal_nan=a["table"][k].dtype.kind == "f"), k
    assert a["shards"].keys() == b["shards"].keys()
    for name in a["shards"]:
        for k in a["shards"][name]:
            assert np.array_equal(a["shards"][name][k], b["shards"][name][k]), (name, k)
