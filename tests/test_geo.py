"""Scene-level classification of georeferenced rasters: tiling, band selection, percentile stretch,
nodata, streaming/batching equivalence, GeoJSON (EPSG:4326) and label-raster outputs, CLI, errors."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

rasterio = pytest.importorskip("rasterio")
from clip_models import save_bare, tiny_open_clip  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.warp import transform_geom  # noqa: E402
from rasterio.windows import Window  # noqa: E402
from rasterio.windows import bounds as window_bounds  # noqa: E402
from util import package_env  # noqa: E402

import rsvlm_edge  # noqa: E402
from rsvlm_edge import geo  # noqa: E402
from rsvlm_edge.errors import InputError  # noqa: E402
from rsvlm_edge.export.clip import export_clip, synthetic_rs_images  # noqa: E402

LABELS = ["forest", "river", "airport", "farmland"]
W, H = 200, 150  # uint16 scene; nodata border: top 20 rows and left 40 columns
CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 5000000.0, 10.0, 10.0)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("geo")
    return export_clip(save_bare(tiny_open_clip(seed=3), d / "m.pt"), d / "m.rsvlm", max_batch=4).path


@pytest.fixture(scope="module")
def rt(bundle):
    return rsvlm_edge.load(bundle)


def _bands_u16() -> np.ndarray:
    """(4, H, W) uint16 with four visibly different bands (RGB content + an 'NIR' gradient), nodata 0."""
    rgb = synthetic_rs_images(1, 256, seed=7)[0][:H, :W].astype(np.uint16)
    yy, xx = np.mgrid[0:H, 0:W]
    data = np.stack([rgb[:, :, 0] * 37 + 300, rgb[:, :, 1] * 23 + 900, rgb[:, :, 2] * 51 + 50,
                     (xx * 97 + yy * 13 + 2000)]).astype(np.uint16)
    data[:, :20, :] = 0
    data[:, :, :40] = 0
    return data


@pytest.fixture(scope="module")
def u16_scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenes") / "s2_like.tif"
    data = _bands_u16()
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=4, dtype="uint16", crs=CRS,
                       transform=TRANSFORM, nodata=0) as dst:
        dst.write(data)
    return path, data


@pytest.fixture(scope="module")
def u8_scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenes") / "rgb.tif"
    data = synthetic_rs_images(1, 130, seed=11)[0][:, :130].transpose(2, 0, 1).copy()
    with rasterio.open(path, "w", driver="GTiff", width=130, height=130, count=3, dtype="uint8", crs="EPSG:3857",
                       transform=from_origin(1.0e6, 6.0e6, 2.0, 2.0)) as dst:
        dst.write(data)
    return path, data


def run_cli(*args: str):
    """``rsvlm-edge ARGS`` in a subprocess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "rsvlm_edge.cli", *args], capture_output=True, text=True,
                          env=package_env(), timeout=300)


def _stretch(band: np.ndarray, valid: np.ndarray, lo_p=2.0, hi_p=98.0) -> np.ndarray:
    """Independent per-band percentile stretch over the valid pixels of the whole scene."""
    lo, hi = np.percentile(band[valid].astype(np.float64), [lo_p, hi_p])
    return np.clip(np.rint((band.astype(np.float64) - lo) / (hi - lo) * 255.0), 0, 255)


def _expected_rgb(data: np.ndarray, bands, nodata=0) -> np.ndarray:
    valid = ~(data == nodata).any(axis=0)
    rgb = np.stack([_stretch(data[b - 1], valid) for b in bands], axis=-1)
    rgb[~valid] = 0
    return rgb.astype(np.uint8)


# --- tiling ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,tile,stride", [(200, 64, 64), (150, 64, 64), (64, 64, 64), (97, 32, 20),
                                           (130, 48, 7), (1297, 224, 224), (65, 64, 1)])
def test_tile_windows_cover_the_scene_exactly_with_edge_aligned_last_tile(n, tile, stride):
    offs = geo.tile_offsets(n, tile, stride)
    assert offs[0] == 0 and offs[-1] == n - tile  # last tile flush with the edge, none outside
    assert offs == sorted(set(offs))
    assert all(b - a == stride for a, b in zip(offs[:-2], offs[1:-1]))  # regular stride except the last step
    assert 0 < offs[-1] - offs[-2] <= stride if len(offs) > 1 else True
    covered = np.zeros(n, int)
    for o in offs:
        covered[o:o + tile] += 1
    assert covered.min() >= 1
    rows, cols = geo.tile_grid(W, H, 64, 64)
    assert rows == [0, 64, 86] and cols == [0, 64, 128, 136]
    with pytest.raises(InputError, match="smaller than the tile"):
        geo.tile_offsets(50, 64, 64)


# --- reading: bands, stretch, nodata ----------------------------------------------------------------

def test_band_selection_picks_the_requested_bands(u16_scene, u8_scene, tmp_path):
    path, data = u16_scene
    win = Window(40, 20, 100, 90)
    for bands in [(3, 2, 1), (4, 3, 2), (1, 2, 3), (4, 4, 4)]:
        with geo.open_scene(path, bands=bands) as scene:
            assert scene.bands == bands
            rgb, valid = scene.read(win)
        expect = _expected_rgb(data, bands)[20:110, 40:140]
        np.testing.assert_array_equal(rgb, expect)
        assert valid.all()
    with geo.open_scene(path) as scene:  # default: the first three bands
        assert scene.bands == (1, 2, 3)
    with geo.open_scene(path, bands=[2]) as scene:  # one band repeated
        rgb, _ = scene.read(win)
        assert scene.bands == (2, 2, 2)
        np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    one = tmp_path / "pan.tif"
    with rasterio.open(one, "w", driver="GTiff", width=70, height=70, count=1, dtype="uint8", crs=CRS,
                       transform=TRANSFORM) as dst:
        dst.write(np.arange(70 * 70, dtype=np.uint32).reshape(1, 70, 70).astype(np.uint8))
    with geo.open_scene(one, stretch=None) as scene:
        rgb, _ = scene.read(Window(0, 0, 70, 70))
        assert scene.bands == (1, 1, 1)
        np.testing.assert_array_equal(rgb, np.repeat((np.arange(4900) % 256).reshape(70, 70, 1), 3, 2))
    u8_path, u8 = u8_scene  # stretch=None passes 0-255 data through unchanged
    with geo.open_scene(u8_path, stretch=None) as scene:
        rgb, valid = scene.read(Window(10, 5, 64, 64))
        np.testing.assert_array_equal(rgb, u8[:, 5:69, 10:74].transpose(1, 2, 0))
        assert valid.all() and scene.limits is None


def test_percentile_stretch_maps_scene_p2_p98_to_0_and_255(u16_scene, monkeypatch):
    path, data = u16_scene
    valid = ~(data == 0).any(axis=0)
    with geo.open_scene(path, bands=(4, 3, 2), stretch=(2, 98)) as scene:
        expect = np.stack([np.percentile(data[b - 1][valid].astype(np.float64), [2, 98]) for b in (4, 3, 2)])
        np.testing.assert_allclose(scene.limits, expect)
        rgb, ok = scene.read(Window(0, 0, W, H))
    for c, b in enumerate((4, 3, 2)):
        band, (lo, hi) = data[b - 1].astype(np.float64), expect[c]
        assert (rgb[..., c][valid & (band <= lo)] == 0).all()
        assert (rgb[..., c][valid & (band >= hi)] == 255).all()
        mid = valid & (band > lo) & (band < hi)
        np.testing.assert_allclose(rgb[..., c][mid], (band[mid] - lo) / (hi - lo) * 255.0, atol=0.5)
    np.testing.assert_array_equal(ok, valid)
    assert (rgb[~valid] == 0).all()  # nodata is black
    # other percentiles
    with geo.open_scene(path, bands=(1, 2, 3), stretch=(10, 90)) as scene:
        np.testing.assert_allclose(scene.limits[0], np.percentile(data[0][valid].astype(np.float64), [10, 90]))
    # the limits come from a decimated overview read once per scene: close to the full-scene ones
    monkeypatch.setattr(geo, "OVERVIEW_MAX_SIDE", 50)
    with geo.open_scene(path, bands=(4, 3, 2)) as scene:
        span = expect[:, 1] - expect[:, 0]
        assert (np.abs(scene.limits - expect) <= 0.1 * span[:, None]).all()
        assert not np.allclose(scene.limits, expect)  # really computed on fewer pixels


# --- classification ------------------------------------------------------------------------------

def _nodata_fraction(data: np.ndarray, win: Window) -> float:
    sl = data[:, win.row_off:win.row_off + win.height, win.col_off:win.col_off + win.width]
    return float((sl == 0).any(axis=0).mean())


@pytest.mark.parametrize("tile,stride", [(64, 64), (48, 40)])
def test_streamed_tiles_equal_independent_encoding_and_nodata_tiles_are_skipped(rt, u16_scene, tile, stride):
    path, data = u16_scene
    res = geo.classify_scene(rt, path, LABELS, tile=tile, stride=stride, bands=(3, 2, 1))
    rows, cols = geo.tile_grid(W, H, tile, stride)
    assert res.grid_shape == (len(rows), len(cols)) and len(res.tiles) == len(rows) * len(cols)
    rgb = _expected_rgb(data, (3, 2, 1))
    done = []
    for t in res.tiles:
        assert (t.window.col_off, t.window.row_off) == (cols[t.col], rows[t.row])
        assert t.window.width == t.window.height == tile
        frac = _nodata_fraction(data, t.window)
        assert t.nodata_fraction == pytest.approx(frac)
        assert t.skipped == (frac > 0.5)
        if not t.skipped:
            done.append(t)
    assert res.skipped and done  # the border produces both kinds
    assert res.classified == done and res.embeddings.shape == (len(done), rt.embed_dim)
    # each tile read, stretched and resized independently, encoded one by one
    for i, t in enumerate(done):
        r0, c0 = t.window.row_off, t.window.col_off
        px = rgb[r0:r0 + tile, c0:c0 + tile]
        if tile != rt.image_size:
            px = np.asarray(Image.fromarray(px).resize((rt.image_size,) * 2, Image.Resampling.BICUBIC))
        np.testing.assert_allclose(res.embeddings[i], rt.encode_images(px[None])[0], atol=1e-5)
        probs = rt.classify(px[None], LABELS).probs[0]
        np.testing.assert_allclose(t.probs, probs, atol=1e-5)
        assert t.label == LABELS[int(np.argmax(t.probs))] and t.prob == pytest.approx(float(t.probs.max()))
        assert t.bounds == pytest.approx(window_bounds(t.window, TRANSFORM))
    # a looser threshold classifies the partly-nodata tiles too
    loose = geo.classify_scene(rt, path, LABELS, tile=tile, stride=stride, bands=(3, 2, 1), max_nodata=0.9)
    assert len(loose.classified) == sum(_nodata_fraction(data, t.window) <= 0.9 for t in res.tiles)
    # area fractions partition the scene
    summary = res.summary()
    assert sum(n for _, n, _ in summary) == len(res.tiles)
    assert sum(f for _, _, f in summary) == pytest.approx(1.0)
    assert dict((k, n) for k, n, _ in summary)["skipped (nodata)"] == len(res.skipped)


def test_scene_is_streamed_window_by_window_in_batches_of_max_batch(rt, u16_scene, monkeypatch):
    path, _ = u16_scene
    reads, batches = [], []
    real_read, real_encode = geo.Scene._read, rt.encode_images
    monkeypatch.setattr(geo.Scene, "_read", lambda self, **kw: reads.append(kw) or real_read(self, **kw))
    monkeypatch.setattr(rt, "encode_images", lambda px: batches.append(len(px)) or real_encode(px))
    monkeypatch.setattr(geo, "OVERVIEW_MAX_SIDE", 50)
    progress = []
    res = geo.classify_scene(rt, path, LABELS, on_tiles=lambda done, total: progress.append((done, total)))
    overview, tiles = reads[0], reads[1:]
    assert overview["out_shape"][1:] == (38, 50)  # one decimated read for the stretch (200x150 / 4)
    assert len(tiles) == len(res.tiles) and all(kw["window"].width == kw["window"].height == 64 for kw in tiles)
    assert batches and max(batches) <= rt.max_batch and sum(batches) == len(res.classified)
    assert progress[-1] == (len(res.tiles), len(res.tiles))
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_geojson_polygons_are_tile_bounds_reprojected_to_wgs84(rt, u16_scene, tmp_path):
    path, _ = u16_scene
    res = geo.classify_scene(rt, path, LABELS, bands=(4, 3, 2))
    out = res.write_geojson(tmp_path / "tiles.geojson")
    gj = json.loads(out.read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(res.tiles)
    assert gj["properties"]["source_crs"] == "EPSG:32633" and gj["properties"]["coordinates_crs"] == "EPSG:4326"
    assert "UTM zone 33N" in gj["properties"]["source_crs_wkt"]
    assert gj["properties"]["labels"] == LABELS
    for f, t in zip(gj["features"], res.tiles):
        left, bottom, right, top = t.bounds
        box = {"type": "Polygon", "coordinates": [[(left, bottom), (right, bottom), (right, top), (left, top),
                                                    (left, bottom)]]}
        expect = transform_geom(CRS, "EPSG:4326", box)
        np.testing.assert_allclose(np.array(f["geometry"]["coordinates"][0]), np.array(expect["coordinates"][0]),
                                   atol=1e-9)
        lon, lat = np.array(f["geometry"]["coordinates"][0]).T
        assert 14.99 < lon.min() < lon.max() < 15.05 and 45.1 < lat.min() < lat.max() < 45.2  # UTM 33N: 15°E, 5000 km N
        p = f["properties"]
        assert (p["row"], p["col"], p["skipped"], p["label"]) == (t.row, t.col, t.skipped, t.label)
        assert p["window"] == {"col_off": t.window.col_off, "row_off": t.window.row_off, "width": 64, "height": 64}
        if not t.skipped:
            assert p["prob"] == pytest.approx(t.prob) and list(p["probs"]) == LABELS
            assert p["probs"][t.label] == pytest.approx(t.prob)
        else:
            assert p["probs"] is None and p["nodata_fraction"] > 0.5


def test_label_raster_has_crs_transform_and_class_indices(rt, u16_scene, tmp_path):
    path, _ = u16_scene
    res = geo.classify_scene(rt, path, LABELS, bands=(3, 2, 1))
    out = res.write_label_raster(tmp_path / "labels.tif")
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32633 and src.count == 1 and src.dtypes[0] == "uint8"
        assert (src.height, src.width) == res.grid_shape == (3, 4)
        assert src.transform.almost_equals(rasterio.Affine(640.0, 0.0, 500000.0, 0.0, -640.0, 5000000.0))
        assert src.nodata == 255
        grid = src.read(1)
        assert json.loads(src.tags()["labels"]) == LABELS
        assert "0=forest" in src.descriptions[0] and "255=skipped" in src.descriptions[0]
    for t in res.tiles:
        assert grid[t.row, t.col] == (255 if t.skipped else LABELS.index(t.label))
    # overlapping tiles: cells of stride pixels centred on the tile centres
    res = geo.classify_scene(rt, path, LABELS, tile=64, stride=32)
    with rasterio.open(res.write_label_raster(tmp_path / "labels32.tif")) as src:
        assert src.transform.almost_equals(rasterio.Affine(320.0, 0.0, 500160.0, 0.0, -320.0, 4999840.0))
        assert (src.height, src.width) == res.grid_shape


def test_scene_without_crs_keeps_raster_coordinates(rt, tmp_path):
    path = tmp_path / "plain.tif"
    data = synthetic_rs_images(1, 96, seed=2)[0].transpose(2, 0, 1).copy()
    with rasterio.open(path, "w", driver="GTiff", width=96, height=96, count=3, dtype="uint8") as dst:
        dst.write(data)  # no CRS, identity transform
    res = geo.classify_scene(rt, path, LABELS, stretch=None)
    assert res.crs is None and res.grid_shape == (2, 2) and not res.skipped
    gj = res.to_geojson()
    assert gj["properties"]["coordinates_crs"] is None and gj["properties"]["source_crs"] is None
    last = gj["features"][-1]["geometry"]["coordinates"][0]  # tile (1, 1) = pixels 32..96
    assert sorted({tuple(c) for c in last}) == [(32.0, 32.0), (32.0, 96.0), (96.0, 32.0), (96.0, 96.0)]
    with rasterio.open(res.write_label_raster(tmp_path / "l.tif")) as src:
        assert src.crs is None and src.read(1).max() < len(LABELS)


def test_cli_classify_scene_end_to_end(bundle, rt, u16_scene, u8_scene, tmp_path):
    path, _ = u16_scene
    gj, lr = tmp_path / "out" / "t.geojson", tmp_path / "out" / "l.tif"
    r = run_cli("classify-scene", str(bundle), str(path), "--labels", ",".join(LABELS), "--bands", "4,3,2",
                "--stretch", "2,98", "--max-nodata", "0.5", "--geojson", str(gj), "--label-raster", str(lr))
    assert r.returncode == 0, r.stderr
    assert "area fraction" in r.stdout and "skipped (nodata)" in r.stdout
    api = geo.classify_scene(rt, path, LABELS, bands=(4, 3, 2))
    feats = json.loads(gj.read_text())["features"]
    assert [f["properties"]["label"] for f in feats] == [t.label for t in api.tiles]
    with rasterio.open(lr) as src:
        np.testing.assert_array_equal(src.read(1), api.class_grid())
    u8_path, _ = u8_scene
    r = run_cli("classify-scene", str(bundle), str(u8_path), "--labels", "forest,river", "--stretch", "none",
                "--tile", "40", "--stride", "30")
    assert r.returncode == 0, r.stderr
    assert "4x4 tiles of 40 px" in " ".join(r.stdout.split()) and "tiles skipped" not in r.stderr  # no nodata


# --- errors --------------------------------------------------------------------------------------

def test_errors_name_the_problem_and_the_fix(rt, u16_scene, tmp_path, monkeypatch):
    path, _ = u16_scene
    with pytest.raises(InputError, match=r"band 5 is out of range: .* has 4 bands"):
        geo.classify_scene(rt, path, LABELS, bands=(5, 3, 2))
    with pytest.raises(InputError, match="give three bands"):
        geo.open_scene(path, bands=(1, 2))
    junk = tmp_path / "notes.tif"
    junk.write_text("this is not a raster\n")
    with pytest.raises(InputError, match="not a raster GDAL can read"):
        geo.open_scene(junk)
    with pytest.raises(InputError, match="does not exist"):
        geo.open_scene(tmp_path / "missing.tif")
    with pytest.raises(InputError, match="outside 0..255"):
        geo.open_scene(path, stretch=None)
    with pytest.raises(InputError, match="stride 80 must be between 1 and the tile size 64"):
        geo.classify_scene(rt, path, LABELS, stride=80)
    with pytest.raises(InputError, match="smaller than the tile"):
        geo.classify_scene(rt, path, LABELS, tile=400)
    with pytest.raises(InputError, match="percentiles"):
        geo.open_scene(path, stretch=(98, 2))
    monkeypatch.setitem(sys.modules, "rasterio", None)  # as if rasterio were not installed
    with pytest.raises(InputError, match="needs rasterio") as e:
        geo.classify_scene(rt, path, LABELS)
    assert e.value.fix == "pip install 'rsvlm-edge[geo]'"


def test_cli_errors_exit_2_without_output(bundle, u16_scene, tmp_path):
    path, _ = u16_scene
    gj = tmp_path / "t.geojson"
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00garbage")
    for args, needle in [((str(path), "--bands", "4,3,9"), "has 4 bands"),
                         ((str(junk),), "not a raster GDAL can read"),
                         ((str(path), "--stretch", "abc"), "--stretch 'abc'")]:
        r = run_cli("classify-scene", str(bundle), *args, "--labels", "forest,river", "--geojson", str(gj))
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and "error:" in r.stderr and needle in " ".join(r.stderr.split())
        assert not gj.exists()
