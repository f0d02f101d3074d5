"""``rsvlm-edge export vlm``, ``ask`` and ``caption`` on a tiny random model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from llava_fixtures import make_tiny_llava  # noqa: E402
from typer.testing import CliRunner  # noqa: E402
from util import package_env, run_cli  # noqa: E402

from rsvlm_edge.cli import app  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("vlm_cli")
    make_tiny_llava(root / "ckpt", layout="llava", fmt="safetensors")
    result = CliRunner().invoke(app, ["export", "vlm", str(root / "ckpt"), "-o", str(root / "tiny.rsvlm"), "--weights", "w8"])
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir()
    for i, shape in enumerate([(40, 60, 3), (32, 32, 3), (64, 48, 3)]):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / "imgs" / f"tile{i}.png")
    return root


def test_export_vlm_writes_a_w8_bundle(exported):
    manifest = json.loads((exported / "tiny.rsvlm" / "manifest.json").read_text())
    assert manifest["architecture"] == "llava"
    assert {k: p["precision"] for k, p in manifest["parts"].items()} == {"vision": "fp32", "decoder": "w8"}
    assert {"vision.onnx", "decoder.safetensors", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["prompts"]["template"] == "llava_v1"


def test_ask_streams_the_same_answer_as_the_api(exported):
    import rsvlm_edge

    image = exported / "imgs" / "tile0.png"
    out_json = exported / "ask.json"
    result = CliRunner().invoke(app, ["ask", str(exported / "tiny.rsvlm"), str(image), "What is here?",
                                      "--max-new-tokens", "12", "--task", "grounding", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    rt = rsvlm_edge.load(exported / "tiny.rsvlm")
    expected = rt.generate([str(image)], ["[grounding] What is here?"], max_new_tokens=12)[0]
    assert result.output == expected + "\n"
    saved = json.loads(out_json.read_text())
    assert saved["answer"] == expected and saved["question"] == "[grounding] What is here?"


def test_caption_batches_a_folder(exported):
    import rsvlm_edge

    out_json = exported / "caps.json"
    result = CliRunner().invoke(app, ["caption", str(exported / "tiny.rsvlm"), str(exported / "imgs"),
                                      "--batch-size", "2", "--max-new-tokens", "6", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    captions = json.loads(out_json.read_text())["captions"]
    assert [c["image"] for c in captions] == [str(exported / "imgs" / f"tile{i}.png") for i in range(3)]
    rt = rsvlm_edge.load(exported / "tiny.rsvlm")
    alone = rt.generate([captions[2]["image"]], ["Describe the image in detail."], max_new_tokens=6)[0]
    assert captions[2]["caption"] == alone
    assert len(result.output.strip().splitlines()) == 3


def test_cli_errors_are_one_line_with_exit_code_2(exported, tmp_path):
    proc = run_cli("ask", str(exported / "tiny.rsvlm"), str(tmp_path / "missing.png"), "hi")
    err = " ".join(proc.stderr.split())  # rich may wrap long paths
    assert proc.returncode == 2
    assert "missing.png' does not exist" in err and "Traceback" not in err
    proc = run_cli("export", "vlm", str(tmp_path / "nope"), "-o", str(tmp_path / "x.rsvlm"))
    assert proc.returncode == 2 and "does not exist" in " ".join(proc.stderr.split())
    assert not (tmp_path / "x.rsvlm").exists()
    from clip_models import save_bare, tiny_open_clip

    from rsvlm_edge.export.clip import export_clip

    export_clip(save_bare(tiny_open_clip(), tmp_path / "clip.pt"), tmp_path / "clip.rsvlm")
    proc = run_cli("ask", str(tmp_path / "clip.rsvlm"), str(exported / "imgs" / "tile0.png"), "hi")
    assert proc.returncode == 2 and "is a clip bundle" in " ".join(proc.stderr.split())


@pytest.mark.parametrize("env, error, fix", [
    ({"RSVLM_EDGE_THREAD_WAIT": "busy"}, "RSVLM_EDGE_THREAD_WAIT='busy' is not one of auto, spin, passive",
     "unset RSVLM_EDGE_THREAD_WAIT"),
    ({"RSVLM_EDGE_FP16_GEMM": "fast"}, "RSVLM_EDGE_FP16_GEMM='fast' is not one of bf16x3, fp32",
     "unset RSVLM_EDGE_FP16_GEMM"),
    ({"RSVLM_EDGE_WEIGHT_MEMORY": "huge"}, "RSVLM_EDGE_WEIGHT_MEMORY='huge' is not one of copy, mapped",
     "unset RSVLM_EDGE_WEIGHT_MEMORY"),
], ids=["thread-wait", "fp16-gemm", "weight-memory"])
def test_a_wrong_native_environment_value_is_one_error_and_fix(exported, env, error, fix):
    from util import assert_contract

    r = run_cli("ask", str(exported / "tiny.rsvlm"), str(exported / "imgs" / "tile0.png"), "hi",
                "--backend", "decoder=native", env=env)
    assert_contract(r, error, fix)


def test_generic_bench_command_runs_a_vlm_bundle(exported):
    out = exported / "bench.json"
    result = CliRunner().invoke(app, ["bench", str(exported / "tiny.rsvlm"), "--batch", "1,2", "--warmup", "0",
                                      "--iters", "1", "--max-new-tokens", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["kind"] == "vlm" and [r["batch"] for r in saved["rows"]] == [1, 2]
    assert all(r["decode_tok_s"] > 0 and r["precision"] == "w8" for r in saved["rows"])


def test_runtime_never_imports_torch(exported):
    code = (
        "import sys, numpy as np, rsvlm_edge\n"
        f"rt = rsvlm_edge.load({str(exported / 'tiny.rsvlm')!r})\n"
        "rt.generate([np.zeros((40, 30, 3), np.uint8)], ['What is here?'], max_new_tokens=3)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')], 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=package_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
