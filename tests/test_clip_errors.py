"""Every bad input gets one clear message, exit code 2, no traceback, and no partial output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_models import save_bare, tiny_open_clip
from util import run_cli

import rsvlm_edge
from rsvlm_edge.errors import BundleError, CheckpointError, InputError
from rsvlm_edge.export.clip import export_clip, synthetic_rs_images
from rsvlm_edge.export.clip_checkpoint import load_clip_checkpoint

cli = run_cli


def assert_clean_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr + r.stdout
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert "error:" in r.stderr
    text = " ".join(r.stderr.split())
    for n in needles:
        assert n in text, text


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_bare(tiny_open_clip(), tmp_path_factory.mktemp("c") / "tiny.pt")


@pytest.fixture(scope="module")
def bundle(ckpt, tmp_path_factory):
    return export_clip(ckpt, tmp_path_factory.mktemp("b") / "tiny.rsvlm").path


@pytest.fixture()
def bundle_copy(bundle, tmp_path):
    import shutil

    dst = tmp_path / "copy.rsvlm"
    shutil.copytree(bundle, dst)
    return dst


# --- checkpoints -------------------------------------------------------------------------------

def test_missing_checkpoint(tmp_path):
    r = cli("export", "clip", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "x.rsvlm"))
    assert_clean_error(r, "does not exist")
    assert not (tmp_path / "x.rsvlm").exists()


def test_truncated_checkpoint_leaves_no_output(ckpt, tmp_path):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    r = cli("export", "clip", str(bad), "-o", str(tmp_path / "x.rsvlm"))
    assert_clean_error(r, "truncated or corrupt", str(bad))
    assert list(tmp_path.iterdir()) == [bad]  # no bundle, no temp directory left behind


def test_corrupt_safetensors(tmp_path):
    bad = tmp_path / "open_clip_model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_clip_checkpoint(bad)


def test_unknown_key_layout(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, p)
    r = cli("export", "clip", str(p), "-o", str(tmp_path / "x.rsvlm"))
    assert_clean_error(r, "does not have the open_clip CLIP key layout", "encoder.weight")


def test_pickled_object_refused_by_weights_only(tmp_path):
    p = tmp_path / "model_object.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, p)  # a whole module: needs full unpickling
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        load_clip_checkpoint(p)


def test_resnet_clip_refused():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    with torch.device("meta"):
        rn = CLIP(64, CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=64),
                  CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1))
    from rsvlm_edge.export.clip_checkpoint import infer_open_clip_config

    with pytest.raises(CheckpointError, match="ResNet CLIP"):
        infer_open_clip_config(rn.state_dict(), None, Path("RemoteCLIP-RN50.pt"))


@pytest.mark.parametrize("arch,activation", [("ViT-B-32", "quick_gelu"), ("ViT-B-16", "quick_gelu"),
                                             ("ViT-L-14", "quick_gelu"), ("ViT-L-14-336", "quick_gelu"),
                                             ("ViT-H-14", "gelu")])
def test_architecture_inferred_from_tensor_shapes(arch, activation):
    import open_clip
    from open_clip.model import CLIP

    from rsvlm_edge.export.clip_checkpoint import infer_open_clip_config

    with torch.device("meta"):  # shapes only: no memory for the real weights
        sd = CLIP(**open_clip.get_model_config(arch)).state_dict()
    cfg = infer_open_clip_config(sd, None, Path(f"{arch}.pt"))
    ref = open_clip.get_model_config(arch)
    assert cfg.name == arch and cfg.activation == activation
    assert (cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers) == (
        ref["vision_cfg"]["image_size"], ref["vision_cfg"]["patch_size"], ref["vision_cfg"]["width"], ref["vision_cfg"]["layers"])
    assert cfg.vision_head_width == ref["vision_cfg"].get("head_width", 64)
    assert cfg.text_heads == ref["text_cfg"]["heads"] and cfg.embed_dim == ref["embed_dim"]


def test_activation_override_and_bad_value(ckpt):
    assert load_clip_checkpoint(ckpt, activation="gelu").config.activation == "gelu"
    with pytest.raises(CheckpointError, match="unknown activation"):
        load_clip_checkpoint(ckpt, activation="relu")


def test_existing_output_needs_overwrite(ckpt, bundle):
    before = (bundle / "manifest.json").read_text()
    r = cli("export", "clip", str(ckpt), "-o", str(bundle))
    assert_clean_error(r, "already exists", "--overwrite")
    assert (bundle / "manifest.json").read_text() == before


# --- bundles -----------------------------------------------------------------------------------

def test_bad_sha256_refused(bundle_copy):
    p = bundle_copy / "text.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="fails its sha256 check"):
        rsvlm_edge.load(bundle_copy)
    r = cli("classify", str(bundle_copy), str(bundle_copy / "x.png"), "--labels", "a,b")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_truncated_bundle_file_refused(bundle_copy):
    p = bundle_copy / "image.onnx"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(BundleError, match="truncated copy"):
        rsvlm_edge.load(bundle_copy)


def test_newer_format_version_refused(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    r = cli("info", str(bundle_copy))
    assert_clean_error(r, "format version 99", "upgrade rsvlm-edge")


def test_missing_bundle_and_missing_file(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        rsvlm_edge.load(tmp_path / "none.rsvlm")
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="missing 'tokenizer.json'"):
        rsvlm_edge.load(bundle_copy)


# --- runtime inputs ----------------------------------------------------------------------------

def test_undecodable_image_cli_and_no_partial_embeddings(bundle, tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(synthetic_rs_images(1, 70)[0]).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    r = cli("classify", str(bundle), str(good), str(bad), "--labels", "forest,river")
    assert_clean_error(r, "could not be decoded", "broken.jpg")
    out = tmp_path / "emb.npz"
    r = cli("embed", str(bundle), str(good), str(bad), "-o", str(out))
    assert_clean_error(r, "could not be decoded")
    assert not out.exists() and not list(tmp_path.glob(".emb*"))


def test_empty_label_list(bundle, tmp_path):
    r = cli("classify", str(bundle), str(tmp_path), "--labels", "")
    assert_clean_error(r, "label list is empty")
    rt = rsvlm_edge.load(bundle)
    with pytest.raises(InputError, match="label list is empty"):
        rt.classify(synthetic_rs_images(1, 64), [])
    with pytest.raises(InputError, match="repeats"):
        rt.classify(synthetic_rs_images(1, 64), ["forest", "forest"])


def test_wrong_array_inputs(bundle):
    rt = rsvlm_edge.load(bundle)
    with pytest.raises(InputError, match="expected uint8"):
        rt.encode_images(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(InputError, match="dtype uint16"):
        rt.encode_images([np.zeros((50, 50, 3), np.uint16)])
    with pytest.raises(InputError, match=r"expected \(N, 64\)"):
        rt.retrieve("river", np.zeros((3, 7), np.float32))


def test_unknown_builtin_and_backend(bundle, tmp_path):
    from PIL import Image

    assert_clean_error(cli("bench", "builtin:nope"), "unknown built-in model")
    img = tmp_path / "scene.png"
    Image.fromarray(synthetic_rs_images(1, 64)[0]).save(img)
    r = cli("classify", str(bundle), str(img), "--labels", "a,b", "--backend", "tensorrt")
    assert_clean_error(r, "unknown backend 'tensorrt'", "rsvlm-edge doctor")
