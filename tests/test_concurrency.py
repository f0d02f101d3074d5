"""Trust campaign, concurrency (issue 7, section 4): runtimes shared across threads return exactly the
single-threaded answers, and concurrent writers of one output never both "win" or corrupt it.

* ``ClipRuntime``: encode_images / encode_texts / class_embeddings / classify from many threads;
* ``VlmRuntime``: generate (greedy, sampled, batched, streamed), first_step_logits and
  encode_images from many threads (12/12 answers differed before generations were serialised);
* ``BundleWriter`` / ``export``: without ``--overwrite`` exactly one of several racing writers
  succeeds, the others fail with "already exists"; with it every writer succeeds and the bundle
  stays whole; concurrent ``embed`` / ``classify --json`` runs to one file leave one complete file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from util import package_env

pytest.importorskip("torch")
pytest.importorskip("transformers")

from clip_models import LABELS, save_bare, tiny_open_clip  # noqa: E402
from llava_fixtures import make_tiny_llava  # noqa: E402

import rsvlm_edge  # noqa: E402
from rsvlm_edge.bundle import BundleWriter, open_bundle  # noqa: E402
from rsvlm_edge.errors import BundleError, InputError  # noqa: E402
from rsvlm_edge.export.clip import synthetic_rs_images  # noqa: E402


def run_threads(n: int, fn) -> list:
    """``fn(i)`` for i in range(n) on n threads released together; results in order (errors re-raised)."""
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as ex:
        return list(ex.map(go, range(n)))


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("concurrency")


@pytest.fixture(scope="module")
def ckpt(root) -> Path:
    return save_bare(tiny_open_clip(seed=11), root / "clip.pt")


@pytest.fixture(scope="module")
def clip_bundle(root, ckpt) -> Path:
    from rsvlm_edge.export.clip import export_clip

    return export_clip(ckpt, root / "clip.rsvlm", max_batch=4).path


@pytest.fixture(scope="module")
def clip_rt(clip_bundle):
    return rsvlm_edge.load(clip_bundle)


@pytest.fixture(scope="module")
def vlm_bundle(root) -> Path:
    from rsvlm_edge.export.llava import export_vlm

    make_tiny_llava(root / "vlm_ckpt", layout="llava", fmt="safetensors")
    return export_vlm(root / "vlm_ckpt", root / "vlm.rsvlm", weights="w8").path


@pytest.fixture(scope="module")
def vlm_rt(vlm_bundle):
    return rsvlm_edge.load(vlm_bundle, max_batch=2)


@pytest.fixture(scope="module")
def vlm_images() -> list[np.ndarray]:
    return [np.random.default_rng(100 + i).integers(0, 256, (40 + 3 * i, 30 + 5 * i, 3), dtype=np.uint8)
            for i in range(16)]


@pytest.fixture(scope="module")
def image_files(root) -> list[str]:
    d = root / "imgs"
    d.mkdir()
    out = []
    for i, a in enumerate(synthetic_rs_images(6, 80, seed=50)):
        Image.fromarray(a).save(d / f"{i}.png")
        out.append(str(d / f"{i}.png"))
    return out


# ---- ClipRuntime ---------------------------------------------------------------------------------

THREADS = [2, 4, 8, 16]


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", THREADS)
def test_clip_encode_images_threads(n, clip_rt):
    batches = [synthetic_rs_images(1 + i % 5, 64, seed=i) for i in range(n)]  # different sizes: split at max_batch 4
    alone = [clip_rt.encode_images(b) for b in batches]
    together = run_threads(n, lambda i: clip_rt.encode_images(batches[i]))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", THREADS)
def test_clip_encode_texts_threads(n, clip_rt):
    texts = [[f"a satellite photo of {LABELS[(i + j) % len(LABELS)]} number {i}." for j in range(1 + i % 6)]
             for i in range(n)]
    alone = [clip_rt.encode_texts(t) for t in texts]
    together = run_threads(n, lambda i: clip_rt.encode_texts(texts[i]))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", THREADS)
def test_clip_class_embeddings_threads_fresh_cache(n, clip_bundle):
    """Every thread asks for a label set nobody has computed yet (the cache is filled concurrently)."""
    sets = [LABELS[i % 4: i % 4 + 3] + [f"class {i}"] for i in range(n)]
    ref_rt = rsvlm_edge.load(clip_bundle)
    alone = [ref_rt.class_embeddings(s, "rs-ensemble").copy() for s in sets]
    rt = rsvlm_edge.load(clip_bundle)
    together = run_threads(n, lambda i: rt.class_embeddings(sets[i], "rs-ensemble"))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", THREADS)
def test_clip_classify_threads(n, clip_rt, image_files):
    jobs = [(image_files[i % len(image_files):] or image_files, LABELS[: 2 + i % 6],
             ["satellite", "rs-ensemble", "plain"][i % 3]) for i in range(n)]
    alone = [clip_rt.classify(*job).probs for job in jobs]
    together = run_threads(n, lambda i: clip_rt.classify(*jobs[i]).probs)
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", [4, 12])
def test_clip_mixed_calls_threads(n, clip_rt, image_files):
    def call(i):
        k = i % 4
        if k == 0:
            return clip_rt.encode_images(image_files[:3])
        if k == 1:
            return clip_rt.encode_texts(["forest", "river"])
        if k == 2:
            return clip_rt.classify(image_files[2:], ["forest", "river", "beach"]).probs
        return np.array([s for _, s in clip_rt.retrieve("a harbor", clip_rt.encode_images(image_files), k=3)])

    alone = [call(i) for i in range(n)]
    together = run_threads(n, call)
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


@pytest.mark.campaign("concurrency")
def test_clip_cached_class_embeddings_cannot_be_changed_by_a_caller(clip_rt):
    emb = clip_rt.class_embeddings(["forest", "river"])
    with pytest.raises(ValueError):
        emb *= 0  # would corrupt every later caller's answers
    np.testing.assert_allclose(np.linalg.norm(clip_rt.class_embeddings(["forest", "river"]), axis=1), 1.0, atol=1e-5)


@pytest.mark.campaign("concurrency")
def test_clip_cache_is_bounded(clip_bundle):
    from rsvlm_edge.models.clip.runtime import CLASS_CACHE_SIZE

    rt = rsvlm_edge.load(clip_bundle)
    run_threads(8, lambda i: [rt.class_embeddings([f"a{i}", f"b{j}"], "plain") for j in range(12)])
    assert len(rt._class_cache) <= CLASS_CACHE_SIZE


# ---- VlmRuntime ----------------------------------------------------------------------------------

VLM_THREADS = [2, 4, 8, 12]


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", VLM_THREADS)
def test_vlm_generate_greedy_threads(n, vlm_rt, vlm_images):
    qs = ["What is here?", "Describe it.", "Count the ships.", "Is there water?"]

    def call(i):
        return vlm_rt.generate([vlm_images[i]], [qs[i % 4]], max_new_tokens=8)

    alone = [call(i) for i in range(n)]
    assert run_threads(n, call) == alone


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", VLM_THREADS)
def test_vlm_generate_sampled_threads(n, vlm_rt, vlm_images):
    def call(i):
        return vlm_rt.generate([vlm_images[i]], ["What is here?"], max_new_tokens=8, temperature=0.9,
                               top_p=0.8, seed=1000 + i)

    alone = [call(i) for i in range(n)]
    assert run_threads(n, call) == alone


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", [2, 4, 8])
def test_vlm_generate_batched_threads(n, vlm_rt, vlm_images):
    """Each call batches 3 prompts (split over max_batch 2): batches and splits must not mix."""
    def call(i):
        imgs = [vlm_images[(i + j) % len(vlm_images)] for j in range(3)]
        return vlm_rt.generate(imgs, ["What is here?", "Describe it.", "Any roads?"], max_new_tokens=6)

    alone = [call(i) for i in range(n)]
    assert run_threads(n, call) == alone


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", [2, 4, 8])
def test_vlm_generate_streamed_threads(n, vlm_rt, vlm_images):
    """Streamed pieces go to their own caller, and join up to exactly its answer."""
    def call(i):
        pieces: list[str] = []
        text = vlm_rt.generate([vlm_images[i]], ["What is here?"], max_new_tokens=8,
                               stream=lambda _b, piece: pieces.append(piece))[0]
        return text, "".join(pieces)

    alone = [call(i) for i in range(n)]
    together = run_threads(n, call)
    assert together == alone
    assert all(text == joined for text, joined in together)


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", [2, 6])
def test_vlm_generate_tokens_and_logits_threads(n, vlm_rt, vlm_images):
    chunks = vlm_rt.tokenize(vlm_rt.build_prompt("What is here?"))

    def call(i):
        if i % 2:
            return vlm_rt.first_step_logits([vlm_images[i]], [chunks])
        return np.array(vlm_rt.generate_tokens([vlm_images[i]], [chunks], max_new_tokens=6))

    alone = [call(i) for i in range(n)]
    for a, b in zip(alone, run_threads(n, call)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", [4, 8])
def test_vlm_encode_images_while_generating(n, vlm_rt, vlm_images):
    def call(i):
        if i % 2:
            return vlm_rt.encode_images([vlm_images[i]])
        return vlm_rt.generate([vlm_images[i]], ["Describe it."], max_new_tokens=6)

    alone = [call(i) for i in range(n)]
    for a, b in zip(alone, run_threads(n, call)):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


@pytest.mark.campaign("concurrency")
def test_vlm_generate_from_its_own_stream_callback_is_refused_not_deadlocked(vlm_rt, vlm_images):
    seen: list[Exception] = []

    def nested(_b, _piece):
        if not seen:
            try:
                vlm_rt.generate([vlm_images[1]], ["Again?"], max_new_tokens=2)
            except InputError as e:
                seen.append(e)

    result: list = []
    t = threading.Thread(target=lambda: result.append(
        vlm_rt.generate([vlm_images[0]], ["What is here?"], max_new_tokens=4, stream=nested)))
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "deadlocked"
    assert seen and "stream callbacks" in seen[0].message
    assert result == [vlm_rt.generate([vlm_images[0]], ["What is here?"], max_new_tokens=4)]


@pytest.mark.campaign("concurrency")
def test_vlm_errors_in_one_thread_do_not_disturb_others(vlm_rt, vlm_images):
    alone = vlm_rt.generate([vlm_images[3]], ["What is here?"], max_new_tokens=6)

    def call(i):
        if i % 2:
            try:
                vlm_rt.generate([vlm_images[3]], ["What is here?"], max_new_tokens=10**6)
            except InputError as e:
                return "refused" if "KV cache" in e.message else e.message
        return vlm_rt.generate([vlm_images[3]], ["What is here?"], max_new_tokens=6)

    out = run_threads(8, call)
    assert out[0::2] == [alone] * 4 and out[1::2] == ["refused"] * 4


# ---- writers -------------------------------------------------------------------------------------

def _template(bundle: Path) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    for k in ("format", "format_version", "created", "created_by", "files"):
        m.pop(k)
    return m


def _prepare(bundle: Path, dest: Path, name: str, overwrite: bool) -> tuple[BundleWriter, dict]:
    w = BundleWriter(dest, overwrite=overwrite)
    for f in os.listdir(bundle):
        if f != "manifest.json":
            os.link(bundle / f, w.path(f))
    m = _template(bundle)
    m["name"] = name
    return w, m


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_racing_writers_without_overwrite_exactly_one_wins(n, clip_bundle, tmp_path):
    dest = tmp_path / "race.rsvlm"
    writers = [_prepare(clip_bundle, dest, f"w{i}", overwrite=False) for i in range(n)]  # all passed the check

    def commit(i):
        w, m = writers[i]
        with w:
            try:
                w.commit(m)
                return "ok"
            except BundleError as e:
                return "exists" if "already exists" in e.message else e.message

    out = run_threads(n, commit)
    assert sorted(out) == ["exists"] * (n - 1) + ["ok"]
    assert open_bundle(dest).manifest.name == f"w{out.index('ok')}"
    assert [p.name for p in tmp_path.iterdir()] == ["race.rsvlm"]


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", [2, 4, 8])
def test_racing_writers_with_overwrite_all_succeed_and_the_bundle_stays_whole(n, clip_bundle, tmp_path):
    dest = tmp_path / "over.rsvlm"
    shutil.copytree(clip_bundle, dest)
    writers = [_prepare(clip_bundle, dest, f"w{i}", overwrite=True) for i in range(n)]

    def commit(i):
        w, m = writers[i]
        with w:
            return w.commit(m).manifest.name

    assert run_threads(n, commit) == [f"w{i}" for i in range(n)]
    assert open_bundle(dest).manifest.name in {f"w{i}" for i in range(n)}
    assert [p.name for p in tmp_path.iterdir()] == ["over.rsvlm"]


@pytest.mark.campaign("concurrency")
def test_writer_refuses_when_a_bundle_appears_before_its_commit(clip_bundle, tmp_path):
    dest = tmp_path / "late.rsvlm"
    w, m = _prepare(clip_bundle, dest, "late", overwrite=False)
    dest.mkdir()  # even an empty directory created meanwhile is never replaced without --overwrite
    with w, pytest.raises(BundleError, match="already exists"):
        w.commit(m)
    assert list(dest.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["late.rsvlm"]


def _popen(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rsvlm_edge.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=package_env(), stdin=subprocess.DEVNULL)


@pytest.mark.campaign("concurrency")
def test_two_concurrent_cli_exports_to_one_path(ckpt, tmp_path):
    dest = tmp_path / "twin.rsvlm"
    procs = [_popen("export", "clip", ckpt, "-o", dest) for _ in range(2)]
    results = [(p.wait(timeout=600), p.communicate()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser_err = next(err for rc, (_, err) in results if rc == 2)
    assert "exists" in loser_err and "Traceback" not in loser_err
    open_bundle(dest)
    assert [p.name for p in tmp_path.iterdir()] == ["twin.rsvlm"]


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("cmd", ["embed", "classify"])
def test_concurrent_runs_writing_one_output(cmd, clip_bundle, image_files, tmp_path):
    out = tmp_path / ("e.npz" if cmd == "embed" else "c.json")
    opt = ["-o", out] if cmd == "embed" else ["--labels", "forest,river", "--json", out]
    procs = [_popen(cmd, clip_bundle, *image_files, *opt) for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.communicate()[1]
        p.communicate()
    if cmd == "embed":
        z = np.load(out, allow_pickle=False)
        assert z["paths"].tolist() == image_files and z["embeddings"].shape == (len(image_files), 64)
    else:
        assert [r["image"] for r in json.loads(out.read_text())["results"]] == image_files
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.campaign("concurrency")
@pytest.mark.parametrize("n", [4, 16])
def test_atomic_json_from_many_threads(n, tmp_path):
    from rsvlm_edge.atomic import write_json_atomic

    dest = tmp_path / "shared.json"
    payloads = [{"writer": i, "data": list(range(2000 + i))} for i in range(n)]
    run_threads(n, lambda i: [write_json_atomic(dest, payloads[i]) for _ in range(5)])
    assert json.loads(dest.read_text()) in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]
