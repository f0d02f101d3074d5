"""The one manifest schema: 0.1 bundles migrate, bad manifests are refused with the field named,
and nothing outside the bundle is ever read or reported."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from clip_models import save_bare, tiny_open_clip  # noqa: E402
from util import run_cli  # noqa: E402

import rsvlm_edge  # noqa: E402
from rsvlm_edge.bundle import open_bundle  # noqa: E402
from rsvlm_edge.bundle.schema import parse_manifest  # noqa: E402
from rsvlm_edge.errors import BundleError  # noqa: E402
from rsvlm_edge.export.clip import export_clip  # noqa: E402
from rsvlm_edge.synthetic import synthetic_rs_images  # noqa: E402


@pytest.fixture(scope="module")
def clip_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("schema")
    return export_clip(save_bare(tiny_open_clip(), root / "tiny.pt"), root / "tiny.rsvlm").path


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write(path: Path, manifest) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest))


def _v1_clip(m: dict) -> dict:
    """The manifest 0.1's ``export clip`` wrote for the same bundle."""
    img, txt = m["parts"]["image"], m["parts"]["text"]
    model = dict(m["model"])
    logit_scale = model.pop("logit_scale")
    return {
        "format": "rsvlm-bundle", "format_version": 1, "created": m["created"], "created_by": "rsvlm-edge 0.1.0",
        "architecture": "clip", "name": m["name"], "source": m["source"], "model": model,
        "preprocess": {"input": "uint8 (B, H, W, 3) RGB", "resize": "shortest-side", "crop": "center",
                       "interpolation": "bicubic", "image_size": m["preprocess"]["image_size"],
                       "mean": m["preprocess"]["mean"], "std": m["preprocess"]["std"], "normalize": "in-graph"},
        "tokenizer": {"file": "tokenizer.json", "context_length": m["tokenizer"]["context_length"],
                      "sot_id": 49406, "eot_id": 49407},
        "prompts": m["prompts"], "precision": {"image": img["precision"], "text": txt["precision"]},
        "max_batch": m["max_batch"], "logit_scale": logit_scale,
        "graphs": {"image": {"file": "image.onnx", "input": "pixels", "output": "image_embeds"},
                   "text": {"file": "text.onnx", "input": "input_ids", "output": "text_embeds"}},
        "validation": m["validation"], "files": m["files"],
    }


def test_format_1_bundle_migrates_and_gives_the_same_embeddings(clip_bundle, tmp_path):
    old = _copy(clip_bundle, tmp_path / "old.rsvlm")
    _write(old, _v1_clip(_manifest(clip_bundle)))
    px = synthetic_rs_images(3, 64, seed=5)
    m = open_bundle(old).manifest
    assert m.format_version == 2 and m.parts["image"].inputs[0].name == "pixels"
    assert "format-1" in " ".join(m.notes)
    np.testing.assert_array_equal(rsvlm_edge.load(old).encode_images(px), rsvlm_edge.load(clip_bundle).encode_images(px))


def _mutations():
    def setp(path, value):
        def f(m):
            node = m
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            return m
        return f

    def delp(path):
        def f(m):
            node = m
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]
            return m
        return f

    return {
        "list manifest": (lambda m: [m], "JSON list"),
        "null manifest": (lambda m: None, "JSON NoneType"),
        "missing size": (lambda m: [m["files"]["image.onnx"].pop("size"), m][1], "files.image.onnx.size"),
        "missing sha256": (lambda m: [m["files"]["image.onnx"].pop("sha256"), m][1], "files.image.onnx.sha256"),
        "bad sha256": (setp(("files", "image.onnx", "sha256"), "abc"), "64 lower-case hex"),
        "missing parts": (delp(("parts",)), "parts"),
        "max_batch 0": (setp(("max_batch",), 0), "max_batch"),
        "max_batch -1": (setp(("max_batch",), -1), "max_batch"),
        "max_batch string": (setp(("max_batch",), "8"), "max_batch"),
        "max_batch bool": (setp(("max_batch",), True), "max_batch"),
        "image_size 0": (setp(("preprocess", "image_size"), 0), "preprocess.image_size"),
        "image_size -64": (setp(("preprocess", "image_size"), -64), "preprocess.image_size"),
        "image_size 200000": (setp(("preprocess", "image_size"), 200000), "preprocess.image_size"),
        "logit_scale inf": (setp(("model", "logit_scale"), float("inf")), "model.logit_scale"),
        "logit_scale nan": (setp(("model", "logit_scale"), float("nan")), "model.logit_scale"),
        "std zero": (setp(("preprocess", "std"), [0.0, 1.0, 1.0]), "preprocess.std"),
        "graph path ..": (setp(("parts", "image", "file"), "../image.onnx"), "leaves the bundle"),
        "graph path absolute": (setp(("parts", "image", "file"), "/etc/passwd"), "leaves the bundle"),
        "unlisted graph": (setp(("parts", "image", "file"), "other.onnx"), "does not list"),
        "listed file ..": (lambda m: [m["files"].__setitem__("../x", m["files"]["image.onnx"]), m][1], "leaves the bundle"),
        "input shape contradicts model": (setp(("parts", "image", "inputs", 0, "shape"), ["batch", 32, 32, 3]), "part 'image'"),
        "unknown dtype": (setp(("parts", "image", "inputs", 0, "dtype"), "complex64"), "dtype"),
        "unknown architecture": (setp(("architecture",), "bert"), "architecture"),
        "unknown precision": (setp(("parts", "image", "precision"), "int3"), "precision"),
        "newer format": (setp(("format_version",), 99), "format version 99"),
        "extra field": (setp(("surprise",), 1), "surprise"),
        "text width not divisible by heads": (setp(("model", "text_heads"), 3), "text_heads"),
    }


@pytest.mark.campaign("manifest")
@pytest.mark.parametrize("case", list(_mutations()))
def test_bad_manifest_is_refused_naming_the_field(clip_bundle, tmp_path, case):
    mutate, needle = _mutations()[case]
    bad = _copy(clip_bundle, tmp_path / "bad.rsvlm")
    _write(bad, mutate(copy.deepcopy(_manifest(clip_bundle))))
    with pytest.raises(BundleError) as err:
        open_bundle(bad)
    assert needle in str(err.value)
    r = run_cli("info", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "error:" in r.stderr and "fix:" in r.stderr


def _llava_manifest() -> dict:
    size, tokens, hidden = 32, 16, 64
    files = {n: {"size": 1, "sha256": "0" * 64} for n in ("vision.onnx", "decoder.safetensors", "tokenizer.json")}
    return {
        "format": "rsvlm-bundle", "format_version": 2, "created": "", "created_by": "", "name": "x",
        "architecture": "llava", "source": {"checkpoint": "c", "layout": "hf"},
        "model": {"decoder": {"model_type": "llama", "vocab_size": 320, "hidden_size": hidden, "intermediate_size": 128,
                              "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6,
                              "rope_theta": 10000.0, "max_position_embeddings": 512, "attention_bias": False,
                              "bos_token_id": 1, "eos_token_id": 2},
                  "vision": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 3, "num_heads": 1,
                             "patch_size": 8, "image_size": size, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu",
                             "select_layer": -2, "select_feature": "patch"},
                  "projector_type": "mlp2x_gelu", "num_image_tokens": tokens, "source_layout": "hf"},
        "parts": {"vision": {"kind": "graph", "file": "vision.onnx", "precision": "fp32",
                             "inputs": [{"name": "images", "dtype": "uint8", "shape": ["batch", size, size, 3]}],
                             "outputs": [{"name": "image_features", "dtype": "float32", "shape": ["batch", tokens, hidden]}]},
                  "decoder": {"kind": "decoder", "file": "decoder.safetensors", "precision": "fp16"}},
        "tokenizer": {"file": "tokenizer.json", "kind": "hf"},
        "preprocess": {"image_size": size, "crop_rounding": "floor", "pad_to_square": True, "fill_rgb": [122, 116, 104],
                       "mean": [0.48, 0.45, 0.40], "std": [0.26, 0.26, 0.27]},
        "prompts": {"template": "llava_v1"}, "max_batch": 8, "files": files,
    }


@pytest.mark.campaign("manifest")
@pytest.mark.parametrize("field,value,needle", [
    ("num_heads", 0, "num_heads"), ("num_kv_heads", 0, "num_kv_heads"), ("num_kv_heads", 3, "multiple of num_kv_heads"),
    ("head_dim", 15, "head_dim"), ("vocab_size", 0, "vocab_size"), ("eos_token_id", 320, "outside the vocabulary"),
    ("rms_norm_eps", float("nan"), "rms_norm_eps"), ("num_layers", -1, "num_layers"),
])
def test_bad_vlm_decoder_config_is_refused(field, value, needle):
    good = _llava_manifest()
    assert parse_manifest(good, "m").architecture == "llava"
    bad = copy.deepcopy(good)
    bad["model"]["decoder"][field] = value
    with pytest.raises(BundleError, match=needle):
        parse_manifest(bad, "m")


@pytest.mark.campaign("manifest")
def test_vlm_without_decoder_part_is_refused():
    bad = _llava_manifest()
    del bad["parts"]["decoder"]
    with pytest.raises(BundleError, match="needs a 'decoder' decoder part"):
        parse_manifest(bad, "m")


@pytest.mark.campaign("security")
def test_symlink_leaving_the_bundle_is_refused_without_revealing_the_target(clip_bundle, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x" * 12345)
    bad = _copy(clip_bundle, tmp_path / "link.rsvlm")
    m = _manifest(bad)
    m["files"]["extra.bin"] = {"size": 12345, "sha256": "0" * 64}
    _write(bad, m)
    os.symlink(secret, bad / "extra.bin")
    with pytest.raises(BundleError, match="link that leaves the bundle"):
        open_bundle(bad)
    r = run_cli("info", str(bad))
    assert r.returncode == 2 and "12345" not in r.stdout + r.stderr and "secret" not in r.stdout + r.stderr


@pytest.mark.campaign("manifest")
def test_graph_that_contradicts_its_manifest_is_refused(clip_bundle, tmp_path):
    """A manifest that is consistent in itself but names graph inputs the ONNX file does not have."""
    bad = _copy(clip_bundle, tmp_path / "io.rsvlm")
    m = _manifest(bad)
    m["parts"]["image"]["inputs"][0]["name"] = "pixel_values"
    _write(bad, m)
    with pytest.raises(BundleError, match="manifest says"):
        rsvlm_edge.load(bad)


@pytest.mark.campaign("faults")
def test_writer_refuses_a_manifest_it_could_not_read_back(tmp_path):
    from rsvlm_edge.bundle import BundleWriter

    with pytest.raises(BundleError), BundleWriter(tmp_path / "x.rsvlm") as w:
        w.path("a.bin").write_bytes(b"1")
        w.commit({"architecture": "clip", "model": {}})
    assert not (tmp_path / "x.rsvlm").exists()
    assert [p for p in tmp_path.iterdir()] == []
