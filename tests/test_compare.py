"""rsvlm-edge compare (models/llava/compare.py, VlmRuntime.teacher_forced_logits): two bundles of one VLM compared
step by step, teacher-forced on the reference's greedy answer."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llava_fixtures import TinySpec, make_tiny_llava  # noqa: E402
from PIL import Image  # noqa: E402
from util import assert_contract, run_cli  # noqa: E402

from rsvlm_edge.errors import InputError  # noqa: E402
from rsvlm_edge.export.llava import export_vlm  # noqa: E402
from rsvlm_edge.models.llava.compare import compare_runtimes  # noqa: E402
from rsvlm_edge.models.llava.runtime import VlmRuntime  # noqa: E402


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    make_tiny_llava(root / "hf", layout="hf")
    make_tiny_llava(root / "other", layout="hf", spec=TinySpec(num_layers=3))
    out = {w: export_vlm(root / "hf", root / f"{w}.rsvlm", weights=w, verify=False) for w in ("fp32", "w4")}
    out["other"] = export_vlm(root / "other", root / "other.rsvlm", weights="fp32", verify=False)
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / f"{i}.png")
    out["images"] = [str(root / f"{i}.png") for i in range(3)]
    return out


def test_teacher_forced_reference_logits_choose_the_greedy_tokens(bundles):
    rt = VlmRuntime(bundles["fp32"], max_batch=2)
    chunks = [rt.tokenize(rt.build_prompt(q)) for q in ("Describe the image.", "How many ships?")]
    tokens = np.array(rt.generate_result(bundles["images"][:2], chunks, max_new_tokens=6, ignore_eos=True).tokens)
    logits = rt.teacher_forced_logits(bundles["images"][:2], chunks, tokens[:, :-1])
    assert logits.shape == (2, 6, rt.config.decoder.vocab_size) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits.argmax(-1), tokens)
    greedy = rt.teacher_forced_logits(bundles["images"][:2], chunks, greedy_steps=5)  # fed its own argmax
    np.testing.assert_array_equal(greedy, logits)


def test_a_bundle_against_itself_is_exact_and_w4_is_close(bundles):
    ref = VlmRuntime(bundles["fp32"], max_batch=3)
    same = compare_runtimes(ref, VlmRuntime(bundles["fp32"], max_batch=3), bundles["images"], ["Describe it."] * 3, 8)
    assert all(1 <= r.steps <= 8 for r in same)  # up to and including the reference's EOS
    assert all(r.worst_cosine > 0.99999 and r.top1_agreement == 1.0 for r in same)
    w4 = compare_runtimes(ref, VlmRuntime(bundles["w4"], max_batch=3), bundles["images"], ["Describe it."] * 3, 8)
    for r in w4:
        assert 0.5 < r.worst_cosine <= r.mean_cosine < 1.0 and 0.0 <= r.top1_agreement <= 1.0, r
        assert r.reference_answer == same[w4.index(r)].reference_answer


def test_compare_refuses_bad_arguments(bundles):
    ref = VlmRuntime(bundles["fp32"], max_batch=2)
    images = bundles["images"][:1]
    with pytest.raises(InputError, match="not one model: decoder layers 2 vs 3"):
        compare_runtimes(ref, VlmRuntime(bundles["other"], max_batch=2), images, ["q"], 4)
    with pytest.raises(InputError, match="compares nothing"):
        compare_runtimes(ref, ref, images, ["q"], 0)
    with pytest.raises(InputError, match="--steps 5000: the prompt .* leaves room for"):
        compare_runtimes(ref, ref, images, ["q"], 5000)
    with pytest.raises(InputError, match="1 images and 2 questions"):
        compare_runtimes(ref, ref, images, ["q", "r"], 4)
    chunks = [ref.tokenize(ref.build_prompt("q"))]
    for tokens, needle in ((np.zeros((1, 2), np.float32), "dtype float32"), (np.zeros((2, 2), np.int64), r"shape \(2, 2\)"),
                           (np.full((1, 2), 10**6), "outside the vocabulary"), (np.full((1, 2), -1), "outside the vocabulary"),
                           (np.zeros((1, 5000), np.int64), "exceeds the KV cache")):
        with pytest.raises(InputError, match=needle):
            ref.teacher_forced_logits(images, chunks, tokens)


def test_cli_compare_prints_each_image_and_writes_json(bundles, tmp_path):
    out = tmp_path / "cmp.json"
    r = run_cli("compare", str(bundles["fp32"].path), str(bundles["w4"].path), *bundles["images"], "--steps", "6",
                "--json", str(out), "--backend", "native")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "image\tsteps\tworst_cosine\tmean_cosine\ttop1_agreement" and len(lines) == 5
    assert lines[-1].startswith("worst step cosine over 3 image(s): ")
    data = json.loads(out.read_text())
    assert data["steps"] == 6 and len(data["images"]) == 3
    assert data["worst_cosine"] == min(i["worst_cosine"] for i in data["images"])


def test_cli_compare_refuses_bundles_of_different_models(bundles):
    r = run_cli("compare", str(bundles["fp32"].path), str(bundles["other"].path), bundles["images"][0], "--steps", "2")
    assert_contract(r, "not one model", "same checkpoint")
