"""Archive indexes (issue 11): building from folders, file lists and tiled GeoTIFF scenes, the shards,
search by text / image / embedding, GeoJSON footprints, ``index add`` and ``index info``, and the
FAISS index types. Error and fault cases are in test_index_hostile.py, Ray in test_index_ray.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("torch")
rasterio = pytest.importorskip("rasterio")

from test_index_support import (  # noqa: E402
    NODATA_ROWS,
    index_contents,
    tiny_bundle,
    write_images,
    write_scene,
)
from util import run_cli  # noqa: E402

import rsvlm_edge  # noqa: E402
import rsvlm_edge.index as rx  # noqa: E402
from rsvlm_edge import geo  # noqa: E402
from rsvlm_edge.index import faiss_index  # noqa: E402
from rsvlm_edge.index.builder import EmbedOptions, IndexOptions  # noqa: E402
from rsvlm_edge.index.manifest import TileOptions, bundle_digest  # noqa: E402

BANDS = TileOptions(bands=[3, 2, 1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def rt(bundle):
    return rsvlm_edge.load(bundle)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Images in a folder, two more named by a file list (one relative, one inside a listed folder),
    and a uint16 GeoTIFF scene with a nodata band along its top."""
    root = tmp_path_factory.mktemp("archive")
    images = write_images(root / "imgs", 7)
    extra = write_images(root / "extra", 2, seed=1)
    (root / "lists").mkdir()
    (root / "lists" / "more.txt").write_text(f"# extra images\n../extra/{extra[0].name}\n\n{extra[1]}\n")
    scene = write_scene(root / "scene.tif")
    return {"root": root, "images": images, "extra": extra, "list": root / "lists" / "more.txt", "scene": scene}


@pytest.fixture(scope="module")
def built(bundle, archive, tmp_path_factory):
    """The archive indexed with shards of 5 items."""
    out = tmp_path_factory.mktemp("built") / "archive.index"
    report = rx.build(bundle, [archive["root"] / "imgs", "@" + str(archive["list"]), archive["scene"]], out,
                      tiles=BANDS, shard_size=5)
    return out, report


def test_items_are_images_then_scene_tiles_as_classify_scene_cuts_them(built, archive, rt):
    out, report = built
    index = rx.open(out)
    res = geo.classify_scene(rt, archive["scene"], ["forest", "river"], bands=(3, 2, 1))
    kept_tiles = res.classified
    assert report.nodata_tiles == len(res.skipped) > 0  # the tiles of the nodata rows are left out
    assert report.embedded == index.count == 9 + len(kept_tiles)
    refs = [index.table.ref(i) for i in range(index.count)]
    assert [r.path for r in refs[:9]] == [str(p) for p in archive["images"] + archive["extra"]]
    assert all(r.window is None and r.bounds is None for r in refs[:9])
    tiles = refs[9:]
    assert [r.window for r in tiles] == [(int(t.window.col_off), int(t.window.row_off), int(t.window.width),
                                          int(t.window.height)) for t in kept_tiles]
    assert [r.bounds for r in tiles] == [t.bounds for t in kept_tiles]
    assert {r.crs for r in tiles} == {"EPSG:32633"}
    vectors = index._index.reconstruct_n(0, index.count)
    np.testing.assert_allclose(vectors[:9], rt.encode_images([str(p) for p in archive["images"] + archive["extra"]]),
                               atol=1e-6)
    np.testing.assert_allclose(vectors[9:], res.embeddings, atol=1e-6)


def test_embeddings_stream_to_shards_of_the_given_size(built):
    out, report = built
    manifest = json.loads((out / "manifest.json").read_text())
    part = manifest["parts"][0]
    assert report.shards_written == len(part["shards"]) == -(-part["items"] // 5)
    sizes = []
    for name in part["shards"]:
        with np.load(out / name) as z:
            covered = len(z["items"]) + len(z["nodata_items"]) + len(z["unreadable_items"])
            sizes.append(covered)
            assert z["embeddings"].shape == (len(z["items"]), 64) and z["embeddings"].dtype == np.float32
    assert sizes[:-1] == [5] * (len(sizes) - 1) and 1 <= sizes[-1] <= 5
    assert sorted(manifest["files"]) == sorted([manifest["index_file"], manifest["table_file"], part["plan"],
                                                *part["shards"]])
    assert not (out / "build.json").exists()


def test_search_ranks_like_exact_cosine_by_text_image_and_embedding(built, archive, rt):
    out, _ = built
    index = rx.open(out)
    vectors = index._index.reconstruct_n(0, index.count)
    text = "a satellite photo of a harbor."
    hits = index.search(text, k=6)
    exact = vectors @ rt.encode_texts([text])[0]
    assert [h.id for h in hits] == list(np.argsort(-exact)[:6])
    np.testing.assert_allclose([h.score for h in hits], np.sort(exact)[::-1][:6], atol=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5, 6]
    by_image = index.search(str(archive["images"][4]), k=3)
    assert by_image[0].id == 4 and by_image[0].score == pytest.approx(1.0, abs=1e-5)
    by_embedding = index.search(vectors[12] * 3.0, k=1)  # normalised before searching
    assert by_embedding[0].id == 12
    assert len(index.search(text, k=10_000)) == index.count  # k beyond the archive: every item once


def test_bundle_digest_ignores_when_the_bundle_was_written(bundle, tmp_path, built):
    import shutil

    from rsvlm_edge.bundle import open_bundle

    copy = tmp_path / "copy.rsvlm"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["created"] = "2000-01-01T00:00:00+00:00"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert bundle_digest(open_bundle(copy)) == bundle_digest(open_bundle(bundle))
    assert rx.open(built[0], bundle=copy).search("forest", k=1)  # the same model under another path


def test_geojson_footprints_are_the_tiles_of_classify_scene(built, archive, rt):
    out, _ = built
    index = rx.open(out)
    first_tile = next(i for i in range(index.count) if index.table.ref(i).is_tile)
    hits = index.search(index._index.reconstruct(first_tile), k=index.count)
    gj = rx.hits_geojson(hits, "q")
    tiles = [h for h in hits if h.source.is_tile]
    assert len(gj["features"]) == len(tiles) and gj["properties"]["without_footprint"] == 9
    scene_gj = geo.classify_scene(rt, archive["scene"], ["forest", "river"], bands=(3, 2, 1)).to_geojson()
    by_window = {tuple(f["properties"]["window"].values()): f["geometry"] for f in scene_gj["features"]}
    for f in gj["features"]:
        window = tuple(f["properties"]["window"].values())
        np.testing.assert_allclose(np.array(f["geometry"]["coordinates"]), np.array(by_window[window]["coordinates"]),
                                   atol=1e-9)
        assert f["properties"]["source_crs"] == "EPSG:32633"


def test_add_appends_new_sources_and_leaves_indexed_ones_out(bundle, archive, tmp_path):
    out = tmp_path / "grow.index"
    rx.build(bundle, [archive["root"] / "imgs"], out, tiles=BANDS, shard_size=4)
    before = rx.open(out)
    vectors_before = before._index.reconstruct_n(0, before.count)
    report = rx.add(out, [archive["root"] / "imgs", archive["scene"]])  # imgs/ is indexed already
    assert report.already_indexed == 7 and report.part == 1
    after = rx.open(out)
    assert after.count == 7 + report.embedded and after.manifest.generation == 2
    assert np.array_equal(after._index.reconstruct_n(0, 7), vectors_before)  # ids 0..6 unchanged
    assert after.table.ref(7).path == str(archive["scene"]) and after.manifest.parts[1].options == BANDS
    assert sorted(p.name for p in out.glob("index-*.faiss")) == ["index-000002.faiss"]
    again = rx.add(out, [archive["scene"]])
    assert again.part is None and rx.open(out).count == after.count


def test_add_past_the_exact_threshold_rebuilds_as_ivfpq(bundle, archive, tmp_path):
    big = write_scene(tmp_path / "big.tif", width=300, height=300, nodata_rows=0, seed=9)  # 16 x 16 tiles, stride 16
    out = tmp_path / "auto.index"
    rx.build(bundle, [archive["root"] / "imgs"], out, tiles=TileOptions(bands=[3, 2, 1], stride=16),
             index=IndexOptions(exact_max=260))
    assert rx.open(out).manifest.index.type == "flat"
    report = rx.add(out, [big])
    index = rx.open(out)
    spec = index.manifest.index
    assert report.rebuilt and index.count == 7 + 16 * 16 >= 260
    assert spec.type == "ivfpq" and spec.trained_on == index.count and spec.factory.endswith("Refine(SQ8)")
    exact = np.concatenate([np.load(out / name)["embeddings"] for p in index.manifest.parts for name in p.shards])
    queries = exact[::8]
    scores = queries @ exact.T  # overlapping tiles of a random-weight model: many near-ties, so compare scores
    found = np.array([hits[0].id for hits in index.search_embeddings(queries, k=1)])
    assert np.all(scores[np.arange(len(queries)), found] >= scores.max(axis=1) - 0.01)


@pytest.mark.parametrize("n,expected", [(10, "flat"), (24_999, "flat"), (25_000, "ivfpq"), (1_000_000, "ivfpq")])
def test_index_type_follows_the_archive_size(n, expected):
    spec = faiss_index.choose_spec(n, 512)
    assert spec.type == expected
    if expected == "ivfpq":
        assert spec.nlist == 2 ** round(np.log2(np.sqrt(n))) and spec.pq_m == 64 and spec.nprobe >= 1
        assert spec.factory == f"IVF{spec.nlist},PQ64x8,Refine(SQ8)"


def test_ivfpq_recall_against_exact_search():
    """IVF-PQ with SQ8 re-ranking, default parameters, on clustered normalised vectors."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 64)).astype(np.float32)
    x = centres[rng.integers(0, 200, 10_000)] + 0.3 * rng.standard_normal((10_000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:200] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    spec = faiss_index.choose_spec(len(x), 64, "ivfpq")
    index, trained = faiss_index.build(spec, 64, len(x), lambda: (x[i:i + 4096] for i in range(0, len(x), 4096)))
    _, approx = faiss_index.search(index, spec, q, 10)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert trained == min(len(x), spec.nlist * faiss_index.IVF_TRAIN_PER_LIST) and recall >= 0.9


def test_cli_build_info_and_search(bundle, archive, tmp_path):
    out = tmp_path / "cli.index"
    r = run_cli("index", "build", str(bundle), str(archive["root"] / "imgs"), f"@{archive['list']}", str(archive["scene"]),
                "-o", str(out), "--bands", "3,2,1", "--shard-size", "8")
    assert r.returncode == 0, r.stderr
    assert "flat index" in r.stderr and "nodata" in r.stderr
    info = run_cli("index", "info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["index"]["type"] == "flat" and data["images"] == 9 and data["tiles"] == data["count"] - 9
    assert data["model"]["bundle_sha256"] == bundle_digest(rsvlm_edge.load(bundle).bundle)
    table = run_cli("index", "info", str(out), "--verify")
    assert table.returncode == 0 and "verified" in table.stdout
    geojson = tmp_path / "hits.geojson"
    s = run_cli("search", str(out), "a harbor with container ships", "-k", "40", "--json", "--geojson", str(geojson))
    assert s.returncode == 0, s.stderr
    hits = json.loads(s.stdout)["hits"]
    assert [h["rank"] for h in hits] == list(range(1, min(40, data["count"]) + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    assert len(json.loads(geojson.read_text())["features"]) == sum(h["window"] is not None for h in hits)
    by_image = run_cli("search", str(out), str(archive["images"][2]), "-k", "2")
    assert by_image.returncode == 0, by_image.stderr
    rows = [ln.split("│")[1:4] for ln in by_image.stdout.splitlines() if ln.startswith("│")]
    assert rows[0][0].strip() == "1" and rows[0][2].strip().endswith("img002.png") and len(rows) == 2


def test_contents_do_not_depend_on_shard_size_or_batch(bundle, archive, tmp_path):
    sources = [archive["root"] / "imgs", archive["scene"]]
    a = rx.build(bundle, sources, tmp_path / "a", tiles=BANDS, shard_size=3, embed=EmbedOptions(batch_size=2))
    b = rx.build(bundle, sources, tmp_path / "b", tiles=BANDS, shard_size=100)
    va, vb = index_contents(tmp_path / "a")["vectors"], index_contents(tmp_path / "b")["vectors"]
    assert a.count == b.count and np.array_equal(va, vb)


def test_nodata_fraction_limit_is_honoured(bundle, archive, tmp_path):
    strict = rx.build(bundle, [archive["scene"]], tmp_path / "s", tiles=TileOptions(bands=[3, 2, 1], max_nodata=0.0))
    lax = rx.build(bundle, [archive["scene"]], tmp_path / "l", tiles=TileOptions(bands=[3, 2, 1], max_nodata=1.0))
    assert lax.nodata_tiles == 0 and lax.embedded == lax.items
    rows_with_nodata = {t.window[1] for t in (rx.open(tmp_path / "l").table.ref(i) for i in range(lax.count))
                        if t.window[1] < NODATA_ROWS}
    assert strict.nodata_tiles == sum(1 for i in range(lax.count) if rx.open(tmp_path / "l").table.ref(i).window[1]
                                      in rows_with_nodata)
