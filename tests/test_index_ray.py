"""Archive indexes embedded on Ray (issue 11): the Ray Data pipeline writes exactly the shards, table,
vectors and manifest of the in-process pipeline, with unreadable files, from the API and from the CLI
joining the cluster by address.

RAY: one local cluster (``ray.init(num_cpus=2)``) is started for this whole module by the
``ray_cluster`` fixture (start-up takes seconds) and shut down after its last test."""

from __future__ import annotations

import pytest

pytest.importorskip("faiss")
pytest.importorskip("torch")
pytest.importorskip("rasterio")
ray = pytest.importorskip("ray")

from test_index_support import (  # noqa: E402
    assert_same_contents,
    index_contents,
    tiny_bundle,
    write_images,
    write_scene,
)
from util import run_cli  # noqa: E402

import rsvlm_edge.index as rx  # noqa: E402
from rsvlm_edge.errors import InputError  # noqa: E402
from rsvlm_edge.index.builder import EmbedOptions  # noqa: E402
from rsvlm_edge.index.manifest import TileOptions  # noqa: E402

TILES = TileOptions(bands=[3, 2, 1], stride=40)


@pytest.fixture(scope="module")
def ray_cluster():
    """RAY: a local two-CPU Ray cluster for this module; yields its GCS address."""
    import logging

    if ray.is_initialized():
        pytest.skip("another Ray session is already running in this process")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Images, a file list naming one of them again plus a broken file, and a scene."""
    root = tmp_path_factory.mktemp("ray_archive")
    images = write_images(root / "imgs", 9)
    (root / "broken.png").write_bytes(b"\x89PNG truncated")
    (root / "list.txt").write_text(f"{images[0]}\nbroken.png\n")
    scene = write_scene(root / "scene.tif")
    return [root / "imgs", f"@{root / 'list.txt'}", scene]


def test_ray_pipeline_writes_the_same_index_and_resumes(ray_cluster, bundle, archive, tmp_path):
    """Strict on Ray: stops at the broken file with the first shard written; resumed on Ray with
    --on-error skip (two actors): the same index as in this process."""
    common = {"tiles": TILES, "shard_size": 7}
    out = tmp_path / "ray"
    with pytest.raises(InputError, match="broken.png") as e:
        rx.build(bundle, archive, out, embed=EmbedOptions(batch_size=3, ray="local"), **common)
    assert "--on-error skip" in e.value.fix
    assert (out / "build.json").exists() and len(list((out / "shards" / "part-000").iterdir())) == 1
    remote = rx.build(bundle, archive, out, embed=EmbedOptions(batch_size=3, ray="local", workers=2, on_error="skip"),
                      **common)
    assert ray.is_initialized()  # the build joined this process's cluster and left it running
    assert remote.shards_reused == 1 and remote.shards_written >= 2
    local = rx.build(bundle, archive, tmp_path / "local", embed=EmbedOptions(batch_size=3, on_error="skip"), **common)
    assert remote.embedded == local.embedded and remote.nodata_tiles == local.nodata_tiles > 0
    assert [s.path for s in remote.unreadable] == [s.path for s in local.unreadable] and len(local.unreadable) == 1
    assert_same_contents(index_contents(tmp_path / "local"), index_contents(out))
    hits_local = rx.open(tmp_path / "local").search("an airport", k=5)
    assert [h.id for h in rx.open(out).search("an airport", k=5)] == [h.id for h in hits_local]


def test_cli_joins_the_cluster_by_address(ray_cluster, bundle, archive, tmp_path):
    local = tmp_path / "local"
    rx.build(bundle, archive[:1], local, tiles=TILES, shard_size=4)
    r = run_cli("index", "build", str(bundle), str(archive[0]), "-o", str(tmp_path / "cli"), "--bands", "3,2,1",
                "--stride", "40", "--shard-size", "4", "--ray", ray_cluster, "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "joining Ray" in r.stderr
    assert_same_contents(index_contents(local), index_contents(tmp_path / "cli"))
