"""ClipRuntime behaviour: input kinds, batching, retrieval, prompts, no torch at run time, bench output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from clip_models import LABELS, save_bare, tiny_open_clip
from PIL import Image
from util import package_env, run_cli

import rsvlm_edge
from rsvlm_edge.export.clip import export_clip, synthetic_rs_images


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    return export_clip(save_bare(tiny_open_clip(seed=3), d / "m.pt"), d / "m.rsvlm", max_batch=4).path


def test_batches_larger_than_max_batch_are_split(bundle):
    rt = rsvlm_edge.load(bundle)
    px = synthetic_rs_images(11, 64, seed=4)
    whole = rt.encode_images(px)
    one_by_one = np.concatenate([rt.encode_images(px[i:i + 1]) for i in range(len(px))])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)


def test_paths_pil_and_arrays_give_same_embeddings(bundle, tmp_path):
    rt = rsvlm_edge.load(bundle)
    arr = synthetic_rs_images(1, 90, seed=8)[0]
    path = tmp_path / "scene.png"
    Image.fromarray(arr).save(path)
    a = rt.encode_images([str(path)])
    b = rt.encode_images([Image.fromarray(arr)])
    c = rt.encode_images([arr])
    d = rt.encode_images(str(path))  # a single path
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    np.testing.assert_allclose(a, d, atol=1e-6)


def test_classify_probabilities_and_template_ensemble(bundle):
    rt = rsvlm_edge.load(bundle)
    px = synthetic_rs_images(6, 64, seed=9)
    res = rt.classify(px, LABELS, templates="rs-ensemble")
    assert res.probs.shape == (6, len(LABELS))
    np.testing.assert_allclose(res.probs.sum(1), 1.0, atol=1e-5)
    top = res.top(3)
    assert len(top) == 6 and len(top[0]) == 3 and top[0][0][1] >= top[0][1][1] >= top[0][2][1]
    # the ensemble is the normalised mean of the per-template normalised embeddings
    from rsvlm_edge.models.clip.prompts import TEMPLATES

    t = TEMPLATES["rs-ensemble"]
    per = rt.encode_texts([tmpl.format("forest") for tmpl in t]).mean(0)
    np.testing.assert_allclose(rt.class_embeddings(["forest"], "rs-ensemble")[0], per / np.linalg.norm(per), atol=1e-5)
    custom = rt.class_embeddings(["forest"], ["an aerial view of {}."])
    np.testing.assert_allclose(custom[0], rt.encode_texts(["an aerial view of forest."])[0], atol=1e-5)


def test_retrieve_finds_the_query_image(bundle):
    rt = rsvlm_edge.load(bundle)
    px = synthetic_rs_images(9, 64, seed=10)
    db = rt.encode_images(px)
    hits = rt.retrieve(px[5], db, k=3)
    assert hits[0][0] == 5 and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    by_emb = rt.retrieve(db[2], db, k=1)
    assert by_emb[0][0] == 2
    by_text = rt.retrieve("a satellite photo of a harbor.", db, k=20)
    assert len(by_text) == 9


def test_runtime_never_imports_torch(bundle, tmp_path):
    code = (
        "import sys, numpy as np, rsvlm_edge\n"
        f"rt = rsvlm_edge.load({str(bundle)!r})\n"
        "px = np.zeros((2, 64, 64, 3), np.uint8)\n"
        "rt.classify(px, ['forest', 'river'])\n"
        "bad = [m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=package_env())
    assert r.returncode == 0, r.stderr


def test_cli_classify_json_and_embed(bundle, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, a in enumerate(synthetic_rs_images(3, 80, seed=30)):
        Image.fromarray(a).save(imgs / f"{i}.png")
    run = run_cli
    r = run("classify", str(bundle), str(imgs), "--labels", "forest,river,airport", "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "c.json").read_text())
    assert [x["image"] for x in out["results"]] == [str(imgs / f"{i}.png") for i in range(3)]
    rt = rsvlm_edge.load(bundle)
    expect = rt.classify([str(imgs / f"{i}.png") for i in range(3)], ["forest", "river", "airport"]).top(1)
    assert [x["top"][0]["label"] for x in out["results"]] == [t[0][0] for t in expect]
    r = run("embed", str(bundle), str(imgs), "-o", str(tmp_path / "e.npz"))
    assert r.returncode == 0, r.stderr
    saved = np.load(tmp_path / "e.npz", allow_pickle=False)
    emb = saved["embeddings"]
    assert emb.shape == (3, 64) and emb.dtype == np.float32
    assert saved["paths"].tolist() == [str(imgs / f"{i}.png") for i in range(3)]
    np.testing.assert_allclose(emb, rt.encode_images([str(imgs / f"{i}.png") for i in range(3)]), atol=1e-6)


def test_bench_writes_json_and_png(bundle, tmp_path):
    r = run_cli("bench", str(bundle), "--batch", "1,3", "--warmup", "1", "--iters", "2",
                "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "b.json").read_text())
    ours = [x for x in res["rows"] if x["backend"] == "ort-cpu"]
    peer = [x for x in res["rows"] if x["backend"] == "open_clip" and x.get("provider", "torch cpu") == "torch cpu"]
    assert [x["batch"] for x in ours] == [1, 3] and [x["batch"] for x in peer] == [1, 3]
    for row in ours:
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["images_per_s"] > 0
        assert row["peak_rss_mb"] > 0 and row["speedup_vs_open_clip"] > 0
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
