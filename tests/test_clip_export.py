"""CLIP export + runtime parity with open_clip and transformers on the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from clip_models import (
    TEXTS,
    cos,
    export_hf_and_open_clip,
    image_parity,
    openai_normalized,
    save_bare,
    text_parity,
    tiny_hf_clip,
    tiny_open_clip,
    top1_agreement,
)

import rsvlm_edge
from rsvlm_edge.export.clip import export_clip, synthetic_rs_images


@pytest.fixture(scope="module")
def oc_model():
    return tiny_open_clip()


@pytest.fixture(scope="module")
def oc_ckpt(oc_model, tmp_path_factory):
    return save_bare(oc_model, tmp_path_factory.mktemp("ckpt") / "RemoteCLIP-tiny.pt")


@pytest.fixture(scope="module")
def fp32_bundle(oc_ckpt, tmp_path_factory):
    return export_clip(oc_ckpt, tmp_path_factory.mktemp("b") / "tiny-fp32.rsvlm", precision="fp32", max_batch=8).path


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_fp32_image_parity_with_open_clip(oc_model, fp32_bundle, batch):
    got, ref = image_parity(rsvlm_edge.load(fp32_bundle), oc_model, batch)
    assert got.shape == ref.shape == (batch, 64)
    assert cos(got, ref).min() >= 0.9999


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_fp32_text_parity_with_open_clip(oc_model, fp32_bundle, batch):
    got, ref = text_parity(rsvlm_edge.load(fp32_bundle), oc_model, batch)
    assert cos(got, ref).min() >= 0.9999


def test_tokenizer_matches_open_clip(fp32_bundle):
    import open_clip

    rt = rsvlm_edge.load(fp32_bundle)
    texts = TEXTS + ["x " * 100, "École près de la rivière", "  many   spaces\tand\nnewlines "]
    np.testing.assert_array_equal(rt.tokenizer(texts), open_clip.tokenize(texts).numpy())


def test_preprocessing_matches_open_clip_transform(oc_model, fp32_bundle):
    """A non-square PIL image through our resize/crop vs open_clip's own eval transform."""
    import open_clip
    from PIL import Image

    img = Image.fromarray(synthetic_rs_images(1, 160, seed=5)[0]).resize((157, 101))
    tf = open_clip.image_transform(64, is_train=False)
    with torch.no_grad():
        ref = oc_model.encode_image(tf(img)[None]).numpy()
    got = rsvlm_edge.load(fp32_bundle).encode_images([img], normalize=False)
    assert cos(got, ref)[0] >= 0.9999


def test_skyclip_training_checkpoint_gives_same_embeddings(oc_model, fp32_bundle, tmp_path):
    ckpt = tmp_path / "skyclip_epoch_20.pt"
    torch.save({"epoch": 20, "name": "SkyCLIP", "state_dict": {f"module.{k}": v for k, v in oc_model.state_dict().items()}}, ckpt)
    b = export_clip(ckpt, tmp_path / "sky.rsvlm")
    assert b.manifest.source.layout == "open_clip_train"
    px = synthetic_rs_images(3, 64, seed=11)
    a = rsvlm_edge.load(b.path).encode_images(px)
    ref = rsvlm_edge.load(fp32_bundle).encode_images(px)
    np.testing.assert_allclose(a, ref, atol=1e-5)


def test_open_clip_safetensors_file(oc_model, fp32_bundle, tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in oc_model.state_dict().items()}, f)
    b = export_clip(tmp_path, tmp_path / "st.rsvlm")  # hub-style directory
    px = synthetic_rs_images(2, 64, seed=3)
    np.testing.assert_allclose(rsvlm_edge.load(b.path).encode_images(px),
                               rsvlm_edge.load(fp32_bundle).encode_images(px), atol=1e-5)


def test_hf_clipmodel_dir_and_open_clip_format_agree(tmp_path):
    """The same weights as a transformers CLIPModel directory and as an open_clip state dict."""
    hf = tiny_hf_clip()
    b_hf, b_oc = export_hf_and_open_clip(hf, tmp_path)
    assert b_hf.manifest.source.layout == "hf_clip"
    assert b_hf.manifest.model.activation == "quick_gelu"

    px = synthetic_rs_images(3, 48, seed=2)
    rt_hf, rt_oc = rsvlm_edge.load(b_hf.path), rsvlm_edge.load(b_oc.path)
    np.testing.assert_allclose(rt_hf.encode_images(px), rt_oc.encode_images(px), atol=1e-5)
    np.testing.assert_allclose(rt_hf.encode_texts(TEXTS), rt_oc.encode_texts(TEXTS), atol=1e-5)

    # and both equal transformers' own CLIPModel on the same inputs
    ids = torch.from_numpy(rt_hf.tokenizer(TEXTS))
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=openai_normalized(px), attention_mask=(ids != 0).long())
    assert cos(rt_hf.encode_images(px), out.image_embeds.numpy()).min() >= 0.9999
    assert cos(rt_hf.encode_texts(TEXTS), out.text_embeds.numpy()).min() >= 0.9999


def test_fp16_bundle_close_to_fp32(oc_ckpt, fp32_bundle, tmp_path):
    b = export_clip(oc_ckpt, tmp_path / "fp16.rsvlm", precision="fp16")
    assert {k: p.precision for k, p in b.manifest.parts.items()} == {"image": "fp16", "text": "fp16"}
    px = synthetic_rs_images(5, 64, seed=21)
    assert cos(rsvlm_edge.load(b.path).encode_images(px), rsvlm_edge.load(fp32_bundle).encode_images(px)).min() >= 0.999


def test_int8_bundle_cosine_and_zero_shot_agreement(oc_ckpt, fp32_bundle, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    from PIL import Image

    for i, a in enumerate(synthetic_rs_images(24, 96, seed=500)):
        Image.fromarray(a).save(calib / f"{i:03d}.png")
    b = export_clip(oc_ckpt, tmp_path / "int8.rsvlm", precision="int8", calib=calib)
    assert b.manifest.parts["image"].precision == "int8-qdq"
    assert b.manifest.validation["image_cosine_min"] >= 0.99
    import onnx

    ops = {n.op_type for n in onnx.load(str(b.path / "image.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    px = synthetic_rs_images(64, 64, seed=77)  # 64 held-out synthetic images
    rt8, rt32 = rsvlm_edge.load(b.path), rsvlm_edge.load(fp32_bundle)
    assert cos(rt8.encode_images(px), rt32.encode_images(px)).min() >= 0.99
    assert top1_agreement(rt8, rt32, px) >= 0.95


def test_manifest_records_architecture_and_hashes(fp32_bundle):
    m = json.loads((fp32_bundle / "manifest.json").read_text())
    assert m["architecture"] == "clip" and m["format_version"] == 2
    assert m["model"]["image_size"] == 64 and m["model"]["activation"] == "quick_gelu"
    assert set(m["files"]) == {"image.onnx", "image.native.safetensors", "text.onnx", "tokenizer.json"}
    assert m["parts"]["image"]["native"] == {"architecture": "open_clip-vit", "file": "image.native.safetensors",
                                             "precision": "fp32", "heads": 2, "activation": "quick_gelu"}
    assert all(len(v["sha256"]) == 64 for v in m["files"].values())
    assert m["validation"]["image_cosine_min"] >= 0.9999


def test_onnx_graphs_pass_checker_and_have_dynamic_batch(fp32_bundle):
    import onnx

    for name in ("image.onnx", "text.onnx"):
        model = onnx.load(str(fp32_bundle / name))
        onnx.checker.check_model(model, full_check=True)
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
