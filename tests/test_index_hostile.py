"""Trust campaign for archive indexes (issue 11): missing or mismatched bundles, an index built with
another model, corrupt shards, truncated manifests and index files, unreadable sources, a Ray address
that does not answer, and builds interrupted by Ctrl-C or killed, which resume. Every bad input
gives exactly one ``error:`` and one ``fix:`` line, exit 2, no traceback, and loses nothing already
written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("torch")
pytest.importorskip("rasterio")

from test_index_support import (  # noqa: E402
    assert_same_contents,
    index_contents,
    tiny_bundle,
    write_images,
    write_scene,
)
from util import assert_contract, child_setup, package_env, run_cli  # noqa: E402

import rsvlm_edge.index as rx  # noqa: E402
from rsvlm_edge.errors import InputError  # noqa: E402
from rsvlm_edge.index.builder import EmbedOptions  # noqa: E402
from rsvlm_edge.index.manifest import TileOptions  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory, seed=3)


@pytest.fixture(scope="module")
def other_bundle(bundle, tmp_path_factory):
    """Another model: a copy of ``bundle`` with another name and logit scale (so another digest)."""
    other = tmp_path_factory.mktemp("other") / "other.rsvlm"
    shutil.copytree(bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["name"], manifest["model"]["logit_scale"] = "other", 50.0
    (other / "manifest.json").write_text(json.dumps(manifest))
    return other


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six images, img000.png .. img005.png."""
    root = tmp_path_factory.mktemp("hostile")
    write_images(root / "imgs", 6)
    return root / "imgs"


@pytest.fixture(scope="module")
def index(bundle, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "ok.index"
    rx.build(bundle, [folder], out, shard_size=4)
    return out


@pytest.fixture()
def index_copy(index, tmp_path):
    dst = tmp_path / "copy.index"
    shutil.copytree(index, dst)
    return dst


def _with_bad_image(folder: Path, tmp_path: Path, position: int = 4) -> Path:
    """A copy of ``folder`` whose image at ``position`` (sorted) is not an image."""
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    victim = sorted(bad.iterdir())[position]
    victim.write_bytes(b"not an image")
    return bad


# ---- bundles and models ----------------------------------------------------------------------------

@pytest.mark.campaign("inputs")
def test_missing_bundle(folder, tmp_path):
    r = run_cli("index", "build", str(tmp_path / "nope.rsvlm"), str(folder), "-o", str(tmp_path / "x.index"))
    assert_contract(r, "does not exist")
    assert not (tmp_path / "x.index").exists()


@pytest.mark.campaign("inputs")
def test_query_with_another_model_is_refused(index, other_bundle):
    r = run_cli("search", str(index), "a harbor", "--bundle", str(other_bundle))
    assert_contract(r, "is model 'other'", "the index was built with", "bundle sha256")


@pytest.mark.campaign("inputs")
def test_add_with_another_model_is_refused_and_changes_nothing(index_copy, other_bundle, folder):
    before = (index_copy / "manifest.json").read_bytes()
    r = run_cli("index", "add", str(index_copy), str(folder), "--bundle", str(other_bundle))
    assert_contract(r, "the index was built with")
    assert (index_copy / "manifest.json").read_bytes() == before and not (index_copy / "build.json").exists()


@pytest.mark.campaign("inputs")
def test_resume_with_another_model_is_refused(bundle, other_bundle, folder, tmp_path):
    bad = _with_bad_image(folder, tmp_path)
    out = tmp_path / "x.index"
    with pytest.raises(InputError):
        rx.build(bundle, [bad], out, shard_size=2)
    r = run_cli("index", "build", str(other_bundle), str(bad), "-o", str(out), "--shard-size", "2")
    assert_contract(r, "unfinished `index build` with other bundle_sha256")


@pytest.mark.campaign("inputs")
def test_moved_bundle_names_the_fix(bundle, folder, tmp_path):
    moved = tmp_path / "moved.rsvlm"
    shutil.copytree(bundle, moved)
    out = tmp_path / "x.index"
    rx.build(moved, [folder], out)
    shutil.rmtree(moved)
    assert_contract(run_cli("search", str(out), "forest"), "cannot be opened", "--bundle")
    r = run_cli("search", str(out), "forest", "--bundle", str(bundle), "--json")  # the same model elsewhere
    assert r.returncode == 0, r.stderr


# ---- the index directory ---------------------------------------------------------------------------

@pytest.mark.campaign("faults")
@pytest.mark.parametrize("victim", ["manifest", "index", "table"])
def test_truncated_index_files(index_copy, victim):
    manifest = json.loads((index_copy / "manifest.json").read_text())
    path = index_copy / {"manifest": "manifest.json", "index": manifest["index_file"], "table": manifest["table_file"]}[victim]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    needle = {"manifest": "not valid JSON", "index": "the manifest says", "table": "the manifest says"}[victim]
    assert_contract(run_cli("search", str(index_copy), "forest"), needle)
    assert_contract(run_cli("index", "info", str(index_copy)), needle)


@pytest.mark.campaign("faults")
def test_corrupt_faiss_file_of_the_right_size(index_copy):
    manifest = json.loads((index_copy / "manifest.json").read_text())
    path = index_copy / manifest["index_file"]
    path.write_bytes(b"\0" * path.stat().st_size)
    assert_contract(run_cli("search", str(index_copy), "forest"), "cannot be read")


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("case", ["missing", "file", "not-an-index", "unfinished"])
def test_search_needs_an_index(case, bundle, folder, tmp_path):
    target = tmp_path / "t"
    if case == "file":
        target.write_text("x")
    elif case == "not-an-index":
        target.mkdir()
    elif case == "unfinished":
        with pytest.raises(InputError):
            rx.build(bundle, [_with_bad_image(folder, tmp_path)], target, shard_size=2)
    needle = {"missing": "does not exist", "file": "is not a directory", "not-an-index": "is not an index",
              "unfinished": "not finished"}[case]
    assert_contract(run_cli("search", str(target), "forest"), needle)


@pytest.mark.campaign("inputs")
def test_build_refuses_an_existing_index_or_a_foreign_directory(bundle, index, folder, tmp_path):
    assert_contract(run_cli("index", "build", str(bundle), str(folder), "-o", str(index)), "already holds an index",
                    "index add")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert_contract(run_cli("index", "build", str(bundle), str(folder), "-o", str(tmp_path / "mine")), "is not empty")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("query,args,needle", [
    ("forest", ["-k", "0"], "-k must be >= 1"),
    ("forest", ["--nprobe", "0"], "nprobe must be >= 1"),
    ("no/such/tile.png", [], "image query 'no/such/tile.png' does not exist"),
], ids=["k-zero", "nprobe-zero", "missing-image"])
def test_bad_search_options(index, query, args, needle):
    assert_contract(run_cli("search", str(index), query, *args), needle)


def test_empty_text_query_is_refused(index):
    with pytest.raises(InputError, match="empty"):
        rx.open(index).search("   ")


# ---- shards: corrupt, resumed ----------------------------------------------------------------------

@pytest.mark.campaign("faults")
def test_corrupt_shard_is_named_and_embedded_again_once_removed(bundle, folder, tmp_path):
    bad = _with_bad_image(folder, tmp_path, position=4)
    out = tmp_path / "x.index"
    r = run_cli("index", "build", str(bundle), str(bad), "-o", str(out), "--shard-size", "2")
    assert_contract(r, "could not be decoded", "--on-error skip", "2 shards already written are kept")
    kept = sorted((out / "shards" / "part-000").iterdir())
    assert [p.name for p in kept] == ["shard-000000.npz", "shard-000001.npz"] and not (out / "manifest.json").exists()
    data = bytearray(kept[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    kept[1].write_bytes(bytes(data))
    r = run_cli("index", "build", str(bundle), str(bad), "-o", str(out), "--shard-size", "2", "--on-error", "skip")
    assert_contract(r, "shard-000001.npz' is corrupt", "rm ")
    kept[1].unlink()
    r = run_cli("index", "build", str(bundle), str(bad), "-o", str(out), "--shard-size", "2", "--on-error", "skip")
    assert r.returncode == 0, r.stderr
    assert "1 shard from the interrupted run reused, 2 embedded now" in " ".join(r.stderr.split())
    info = json.loads(run_cli("index", "info", str(out), "--json").stdout)
    assert info["count"] == 5 and info["parts"][0]["unreadable"] == 1
    manifest = json.loads((out / "manifest.json").read_text())
    (skipped,) = manifest["parts"][0]["unreadable"]
    assert skipped["path"].endswith("img004.png") and "could not be decoded" in skipped["reason"]


@pytest.mark.campaign("inputs")
def test_missing_list_entry_strict_and_skipped(bundle, folder, tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text(f"{sorted(folder.iterdir())[0]}\nnot-there.png\n")
    r = run_cli("index", "build", str(bundle), f"@{listing}", "-o", str(tmp_path / "a.index"))
    assert_contract(r, "line 2 of file list", "--on-error skip")
    assert not (tmp_path / "a.index").exists()
    r = run_cli("index", "build", str(bundle), str(listing), "-o", str(tmp_path / "b.index"), "--on-error", "skip")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "b.index" / "manifest.json").read_text())
    assert manifest["count"] == 1 and "does not exist" in manifest["parts"][0]["unreadable"][0]["reason"]


@pytest.mark.campaign("inputs")
def test_resume_with_other_options_is_refused(bundle, folder, tmp_path):
    bad = _with_bad_image(folder, tmp_path)
    out = tmp_path / "x.index"
    with pytest.raises(InputError):
        rx.build(bundle, [bad], out, shard_size=2)
    r = run_cli("index", "build", str(bundle), str(bad), "-o", str(out), "--shard-size", "3")
    assert_contract(r, "unfinished `index build` with other shard_size", "rm ")


@pytest.mark.campaign("faults")
def test_index_type_that_cannot_be_trained_loses_no_embeddings(bundle, folder, tmp_path):
    out = tmp_path / "x.index"
    r = run_cli("index", "build", str(bundle), str(folder), "-o", str(out), "--index-type", "ivfpq")
    assert_contract(r, "needs at least 256 embeddings", "--index-type flat")
    r = run_cli("index", "build", str(bundle), str(folder), "-o", str(out), "--index-type", "flat")
    assert r.returncode == 0, r.stderr
    assert "resumed: 1 shard from the interrupted run reused, 0 embedded now" in " ".join(r.stderr.split())


# ---- Ray address -----------------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("address,needle", [
    (None, "does not answer"), ("no-port-here", "is not a Ray address"), ("ray://host:99999", "is not a Ray address"),
], ids=["unreachable", "no-port", "bad-port"])
def test_ray_address_that_does_not_answer(bundle, folder, tmp_path, address, needle):
    pytest.importorskip("ray")
    address = address or f"127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    r = run_cli("index", "build", str(bundle), str(folder), "-o", str(tmp_path / "x.index"), "--ray", address)
    assert_contract(r, needle)
    assert time.monotonic() - t0 < 60 and not (tmp_path / "x.index").exists()


# ---- interrupted builds resume -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_scene(tmp_path_factory):
    """Over 2,000 tiles (stride 16): enough work that a build is still embedding after its first shard
    even on a fast machine (484 tiles finished within the polling interval once in CI)."""
    return write_scene(tmp_path_factory.mktemp("big") / "big.tif", width=800, height=800, nodata_rows=0, seed=5)


@pytest.fixture(scope="module")
def big_scene_index(bundle, big_scene, tmp_path_factory):
    """``big_scene`` indexed in one uninterrupted run, as the interrupted builds are asked to."""
    out = tmp_path_factory.mktemp("fresh") / "fresh.index"
    rx.build(bundle, [big_scene], out, tiles=TileOptions(stride=16), shard_size=16)
    return out


def _interrupt_after_first_shard(bundle: Path, scene: Path, out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start a CLI build, freeze it once its first shard exists, deliver ``sig``, let it run."""
    args = [sys.executable, "-m", "rsvlm_edge.cli", "index", "build", str(bundle), str(scene), "-o", str(out),
            "--stride", "16", "--shard-size", "16"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=package_env(),
                            preexec_fn=child_setup())
    first = out / "shards" / "part-000" / "shard-000000.npz"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        assert proc.poll() is None, "the build finished before it could be interrupted"
        os.kill(proc.pid, sig)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("sig,rc", [(signal.SIGINT, 130), (signal.SIGKILL, -9)], ids=["ctrl-c", "killed"])
def test_interrupted_build_resumes_to_the_same_index(bundle, big_scene, big_scene_index, tmp_path, sig, rc):
    out = tmp_path / "x.index"
    r = _interrupt_after_first_shard(bundle, big_scene, out, sig)
    assert r.returncode == rc, r.stderr
    if sig == signal.SIGINT:
        assert "Traceback" not in r.stderr and "interrupted (Ctrl-C)" in r.stderr and "run the same command again" in r.stderr
    written = sorted((out / "shards" / "part-000").glob("shard-*.npz"))
    assert written and not (out / "manifest.json").exists()
    r = run_cli("index", "build", str(bundle), str(big_scene), "-o", str(out), "--stride", "16", "--shard-size", "16")
    assert r.returncode == 0, r.stderr
    assert f"resumed: {len(written)} shard" in r.stderr
    assert not list(out.rglob(".*.tmp"))  # temp files of the killed writer are gone
    assert_same_contents(index_contents(out), index_contents(big_scene_index))


def test_strict_error_keeps_shards_and_skip_resumes_in_process(bundle, folder, tmp_path):
    bad = _with_bad_image(folder, tmp_path, position=3)
    out = tmp_path / "x.index"
    with pytest.raises(InputError, match="could not be decoded"):
        rx.build(bundle, [bad], out, shard_size=2)
    assert len(list((out / "shards" / "part-000").iterdir())) == 1
    report = rx.build(bundle, [bad], out, shard_size=2, embed=EmbedOptions(on_error="skip"))
    assert report.shards_reused == 1 and report.shards_written == 2 and report.embedded == 5
    assert [s.path.endswith("img003.png") for s in report.unreadable] == [True]
