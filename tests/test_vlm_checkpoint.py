"""Checkpoint reading: layouts, GeoChat's 504 px position-embedding interpolation, and one clear
error for each broken input."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llava_fixtures import TinySpec, make_hf_model, make_tiny_llava  # noqa: E402

from rsvlm_edge.errors import CheckpointError  # noqa: E402
from rsvlm_edge.export.llava import export_vlm  # noqa: E402
from rsvlm_edge.export.llava_checkpoint import detect_layout, load_checkpoint, split_parts  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "hf"
    make_tiny_llava(d, layout="hf")
    return d


def _names(model) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


@pytest.mark.parametrize("style", ["hf5-memory", "hf4-saved", "hf5-saved", "llava"])
def test_every_key_layout_maps_to_the_same_canonical_names(style):
    model = make_hf_model(TinySpec())
    state = _names(model)  # transformers 5.x in-memory names: model.language_model.*, lm_head.*

    def rename(k: str) -> str:
        if style == "hf4-saved":
            k = k.replace("model.language_model.", "language_model.model.").replace("lm_head.", "language_model.lm_head.")
            return k.replace("model.vision_tower.", "vision_tower.vision_model.").replace("model.multi_modal_projector.", "multi_modal_projector.")
        if style == "hf5-saved":
            k = k.replace("model.language_model.", "language_model.model.").replace("lm_head.", "language_model.lm_head.")
            return k.replace("model.vision_tower.", "vision_tower.").replace("model.multi_modal_projector.", "multi_modal_projector.")
        if style == "llava":
            from llava_fixtures import _llava_name

            return _llava_name(k)
        return k

    renamed = {rename(k): v for k, v in state.items()}
    layout = detect_layout(list(renamed))
    assert layout == ("llava" if style == "llava" else "hf")
    decoder, vision, projector = split_parts(renamed, layout)
    ref_decoder, ref_vision, ref_projector = split_parts(state, "hf")
    assert set(decoder) == set(ref_decoder) and "layers.1.q_proj.weight" in decoder and "lm_head.weight" in decoder
    assert set(vision) == set(ref_vision) and "embeddings.patch_embedding.weight" in vision
    assert set(projector) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"} == set(ref_projector)
    for k in decoder:
        assert torch.equal(decoder[k], ref_decoder[k])


def test_unknown_key_layout_is_refused():
    with pytest.raises(CheckpointError, match="unknown checkpoint key layout"):
        detect_layout(["encoder.weight", "decoder.bias"])


def _geochat_reference_pos(pos: torch.Tensor, image_size: int, patch: int) -> torch.Tensor:
    """GeoChat's clip_interpolate_embeddings, step by step (bicubic, align_corners=True)."""
    n, width = pos.shape
    g0, g1 = int(math.sqrt(n - 1)), image_size // patch
    grid = pos[1:].unsqueeze(0).permute(0, 2, 1).reshape(1, width, g0, g0)
    grid = torch.nn.functional.interpolate(grid, size=g1, mode="bicubic", align_corners=True)
    grid = grid.reshape(1, width, g1 * g1).permute(0, 2, 1)
    return torch.cat([pos[:1].unsqueeze(0), grid], dim=1)[0]


def test_geochat_config_interpolates_to_504px(tmp_path):
    spec = TinySpec(image_size=28, patch_size=14, vision_layers=2)
    model = make_tiny_llava(tmp_path / "geochat", layout="llava", fmt="safetensors", spec=spec, model_type="geochat")
    ckpt = load_checkpoint(tmp_path / "geochat")
    assert ckpt.config.vision.image_size == 504 and ckpt.config.vision.num_tokens == 36 * 36
    assert ckpt.preprocess["image_size"] == 504
    assert any("504" in n for n in ckpt.notes)
    old = model.model.vision_tower.embeddings.position_embedding.weight.detach()
    new = ckpt.vision["embeddings.position_embedding.weight"]
    assert new.shape == (36 * 36 + 1, spec.vision_hidden)
    torch.testing.assert_close(new, _geochat_reference_pos(old, 504, 14))
    # align_corners=True keeps the grid's corner embeddings exactly
    torch.testing.assert_close(new[1], old[1])
    torch.testing.assert_close(new[-1], old[-1])


def test_interpolated_vision_tower_matches_geochat_style_transformers_model(tmp_path):
    import onnxruntime as ort

    model = make_tiny_llava(tmp_path / "gc", layout="llava", fmt="bin", model_type="geochat")
    bundle = export_vlm(tmp_path / "gc", tmp_path / "gc.rsvlm", weights="fp32", image_size=48)
    assert bundle.model.vision.image_size == 48 and bundle.model.num_image_tokens == 36
    # Patch the transformers model the way GeoChat's CLIPVisionTower.load_model does.
    emb = model.model.vision_tower.embeddings
    new_pos = _geochat_reference_pos(emb.position_embedding.weight.detach(), 48, 8)
    emb.position_embedding = torch.nn.Embedding(new_pos.shape[0], new_pos.shape[1])
    emb.position_embedding.weight.data.copy_(new_pos)
    emb.image_size, emb.num_patches, emb.num_positions = 48, 36, 37
    emb.register_buffer("position_ids", torch.arange(37).expand((1, -1)), persistent=False)
    images = np.random.default_rng(5).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    mean = torch.tensor(bundle.manifest.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(bundle.manifest.preprocess.std).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                             vision_feature_select_strategy="default")
    ref = torch.stack(list(out.pooler_output if hasattr(out, "pooler_output") else out)).numpy()
    got = ort.InferenceSession(str(bundle.file("vision.onnx"))).run(None, {"images": images})[0]
    assert got.shape == (2, 36, 64)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_truncated_safetensors_shard_names_the_file(tmp_path):
    make_tiny_llava(tmp_path / "c", layout="llava", fmt="safetensors")
    shard = tmp_path / "c" / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_checkpoint(tmp_path / "c")


def test_truncated_bin_shard_and_missing_shard_are_refused(tmp_path):
    make_tiny_llava(tmp_path / "c", layout="llava", fmt="bin")
    shard = tmp_path / "c" / "pytorch_model-00001-of-00002.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "c")
    shard.unlink()
    with pytest.raises(CheckpointError, match="pytorch_model-00001-of-00002.bin"):
        load_checkpoint(tmp_path / "c")


def test_config_that_does_not_match_the_weights_is_refused(tmp_path, hf_dir):
    d = tmp_path / "bad"
    shutil.copytree(hf_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not belong"):
        load_checkpoint(d)


def test_missing_inputs_get_one_clear_error(tmp_path, hf_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights"):
        load_checkpoint(empty)
    d = tmp_path / "notok"
    shutil.copytree(hf_dir, d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        export_vlm(d, tmp_path / "out.rsvlm", verify=False)
    assert not (tmp_path / "out.rsvlm").exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.rsvlm")]


def test_linear_projector_and_cls_patch_features(tmp_path):
    """A LLaVA-v1 style checkpoint: linear projector (model.mm_projector.{weight,bias}) and
    mm_vision_select_feature "cls_patch"; vision.onnx must equal CLIP hidden_states[-2] @ W.T + b."""
    import onnxruntime as ort
    from safetensors.torch import load_file, save_file

    model = make_tiny_llava(tmp_path / "v1", layout="llava", fmt="safetensors")
    index = json.loads((tmp_path / "v1" / "model.safetensors.index.json").read_text())
    gen = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(64, 64, generator=gen) * 0.1, torch.randn(64, generator=gen) * 0.1
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(str(tmp_path / "v1" / shard))
        if any(k.startswith("model.mm_projector.") for k in tensors):
            tensors = {k: v for k, v in tensors.items() if not k.startswith("model.mm_projector.")}
            tensors["model.mm_projector.weight"], tensors["model.mm_projector.bias"] = weight, bias
            save_file(tensors, str(tmp_path / "v1" / shard))
            index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith("model.mm_projector.")}
            index["weight_map"].update({"model.mm_projector.weight": shard, "model.mm_projector.bias": shard})
    (tmp_path / "v1" / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = json.loads((tmp_path / "v1" / "config.json").read_text())
    cfg.update(mm_projector_type="linear", mm_vision_select_feature="cls_patch")
    (tmp_path / "v1" / "config.json").write_text(json.dumps(cfg))

    bundle = export_vlm(tmp_path / "v1", tmp_path / "v1.rsvlm", weights="fp32")
    assert bundle.model.projector_type == "linear" and bundle.model.num_image_tokens == 17
    images = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    mean = torch.tensor(bundle.manifest.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(bundle.manifest.preprocess.std).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        hidden = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        ref = (hidden @ weight.T + bias).numpy()
    got = ort.InferenceSession(str(bundle.file("vision.onnx"))).run(None, {"images": images})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_config_saved_as_a_diff_gets_transformers_defaults(tmp_path, hf_dir):
    """llava-hf style config.json omits values equal to the class defaults; they must be filled in."""
    d = tmp_path / "diff"
    shutil.copytree(hf_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    for key in ("rms_norm_eps", "rope_parameters", "rope_theta", "head_dim", "hidden_act", "attention_bias"):
        cfg["text_config"].pop(key, None)
    for key in ("hidden_act", "layer_norm_eps"):
        cfg["vision_config"].pop(key, None)
    (d / "config.json").write_text(json.dumps(cfg))
    assert load_checkpoint(d).config == load_checkpoint(hf_dir).config


def test_checkpoint_without_vision_weights_uses_a_separate_clip_tower(tmp_path):
    from safetensors.torch import load_file, save_file

    model = make_tiny_llava(tmp_path / "full", layout="llava", fmt="safetensors")
    index = json.loads((tmp_path / "full" / "model.safetensors.index.json").read_text())
    shutil.copytree(tmp_path / "full", tmp_path / "novision")
    for shard in set(index["weight_map"].values()):
        tensors = load_file(str(tmp_path / "novision" / shard))
        save_file({k: v for k, v in tensors.items() if ".vision_tower." not in k}, str(tmp_path / "novision" / shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if ".vision_tower." not in k}
    (tmp_path / "novision" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="--vision-tower"):
        load_checkpoint(tmp_path / "novision")
    model.model.vision_tower.save_pretrained(tmp_path / "clip")  # a transformers CLIPVisionModel dir
    with_tower = load_checkpoint(tmp_path / "novision", vision_tower=tmp_path / "clip")
    full = load_checkpoint(tmp_path / "full")
    assert with_tower.config == full.config
    assert set(with_tower.vision) == set(full.vision)
    for k in full.vision:
        assert torch.equal(with_tower.vision[k], full.vision[k])
