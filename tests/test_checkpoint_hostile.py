"""Hostile and broken checkpoints, at export time: each is refused with one CheckpointError that
names the tensor, key or file (and through the CLI: exit 2, one ``error:`` and one ``fix:`` line,
no traceback, no output directory). Both readers: CLIP (``load_clip_checkpoint``: open_clip state
dicts, training checkpoints, transformers CLIPModel directories) and LLaVA (``load_checkpoint`` /
``read_tensors``: LLaVA repo layout with sharded .bin/.safetensors and an index json, transformers
Llava directories).

Cases: NaN/Inf weights, integer weights, missing transformer-block keys, non-tensor values (str, int,
list, nested dict), wrong-rank tensors, wrong shapes inside a block, config.json / index json that
are not JSON objects, ``weight_map`` that is a list, shard-index entries that leave the checkpoint
directory (``..``, absolute paths, symlinks out), invalid config values.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("open_clip")

from clip_models import tiny_hf_clip, tiny_open_clip  # noqa: E402
from llava_fixtures import TinySpec, make_tiny_llava  # noqa: E402
from util import run_cli  # noqa: E402

from rsvlm_edge.errors import CheckpointError  # noqa: E402
from rsvlm_edge.export.clip_checkpoint import load_clip_checkpoint  # noqa: E402
from rsvlm_edge.export.llava_checkpoint import load_checkpoint, read_tensors  # noqa: E402

pytestmark = pytest.mark.campaign("checkpoint")

DELETE = object()
NAN, INF = float("nan"), float("inf")


def _poison(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[t.numel() // 2] = value
    return t


# --- CLIP ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_sd() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tiny_open_clip().state_dict().items()}


@pytest.fixture(scope="module")
def clip4_sd() -> dict[str, torch.Tensor]:
    """An open_clip ViT with 4 vision and 4 text blocks (the "layer 3 of 4" cases)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(1)
    model = CLIP(32, CLIPVisionCfg(layers=4, width=64, head_width=32, patch_size=16, image_size=32),
                 CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=4))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _edited(sd: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    out = dict(sd)
    for k, v in edits.items():
        if v is DELETE:
            out.pop(k)
        else:
            out[k] = v(sd[k]) if callable(v) else v
    return out


def _save_clip(sd: dict[str, Any], path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


CLIP_CASES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    # name: (edits of the open_clip state dict, needles of the message)
    "nan-in-block": ({"visual.transformer.resblocks.1.attn.in_proj_weight": lambda t: _poison(t, NAN)},
                     ("visual.transformer.resblocks.1.attn.in_proj_weight", "1 NaN")),
    "inf-in-embedding": ({"token_embedding.weight": lambda t: _poison(t, INF)}, ("token_embedding.weight", "1 Inf")),
    "-inf-logit-scale": ({"logit_scale": lambda t: torch.full_like(t, -INF)}, ("logit_scale", "Inf")),
    "int-weight": ({"visual.proj": lambda t: t.to(torch.int32)}, ("visual.proj", "int32", "floating point")),
    "bool-weight": ({"transformer.resblocks.0.ln_1.weight": lambda t: t > 0},
                    ("transformer.resblocks.0.ln_1.weight", "bool")),
    "int64-conv": ({"visual.conv1.weight": lambda t: t.long()}, ("visual.conv1.weight", "int64")),
    "str-value": ({"visual.proj": "not a tensor"}, ("visual.proj", "str", "where a tensor is expected")),
    "int-value": ({"logit_scale": 4}, ("logit_scale", "int", "where a tensor is expected")),
    "list-value": ({"visual.class_embedding": [1.0, 2.0]}, ("visual.class_embedding", "list")),
    "nested-dict": ({"visual.conv1.weight": lambda t: {"weight": t}}, ("visual.conv1.weight", "nested dict")),
    "none-value": ({"text_projection": None}, ("text_projection", "NoneType")),
    "1d-conv": ({"visual.conv1.weight": lambda t: t.reshape(-1)}, ("visual.conv1.weight", "1-D", "must be 4-D")),
    "3d-token-embedding": ({"token_embedding.weight": lambda t: t.reshape(t.shape[0], 2, -1)},
                           ("token_embedding.weight", "3-D", "must be 2-D")),
    "2d-class-embedding": ({"visual.class_embedding": lambda t: t.reshape(1, -1)}, ("visual.class_embedding", "2-D")),
    "2d-bias": ({"visual.transformer.resblocks.0.mlp.c_fc.bias": lambda t: t.reshape(1, -1)},
                ("visual.transformer.resblocks.0.mlp.c_fc.bias", "must be 1-D")),
    "3d-in-proj": ({"transformer.resblocks.1.attn.in_proj_weight": lambda t: t.reshape(3, -1, t.shape[1])},
                   ("transformer.resblocks.1.attn.in_proj_weight", "must be 2-D")),
    "matrix-logit-scale": ({"logit_scale": lambda t: torch.ones(2, 2)}, ("logit_scale", "must be 0-D or 1-D")),
    "missing-block-key": ({"visual.transformer.resblocks.1.attn.in_proj_weight": DELETE},
                          ("visual.transformer.resblocks.1.attn.in_proj_weight", "missing")),
    "missing-text-block-key": ({"transformer.resblocks.1.mlp.c_proj.bias": DELETE},
                               ("transformer.resblocks.1.mlp.c_proj.bias", "missing")),
    "transposed-block-weight": ({"visual.transformer.resblocks.1.mlp.c_fc.weight": lambda t: t.t().contiguous()},
                                ("visual.transformer.resblocks.1.mlp.c_fc.weight", "has shape")),
    "short-bias": ({"transformer.resblocks.1.attn.in_proj_bias": lambda t: t[:-1].clone()},
                   ("transformer.resblocks.1.attn.in_proj_bias", "has shape")),
    "bad-block-number": ({"visual.transformer.resblocks.x.attn.in_proj_weight": torch.zeros(3, 3)},
                         ("visual.transformer.resblocks.x.attn.in_proj_weight", "number")),
}


NON_TENSOR_CASES = {"str-value", "int-value", "list-value", "nested-dict", "none-value"}  # .pt only: safetensors holds tensors


@pytest.mark.parametrize("case,fmt", [(c, f) for c in sorted(CLIP_CASES) for f in (".pt", ".safetensors")
                                      if not (f == ".safetensors" and c in NON_TENSOR_CASES)])
def test_clip_checkpoint_is_refused_naming_the_tensor(case, fmt, clip_sd, tmp_path):
    edits, needles = CLIP_CASES[case]
    p = _save_clip(_edited(clip_sd, edits), tmp_path / f"ckpt{fmt}")
    with pytest.raises(CheckpointError) as e:
        load_clip_checkpoint(p)
    for n in needles:
        assert n in e.value.message, e.value.message
    assert e.value.fix


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_nonfinite_values_are_found_in_every_float_dtype(dtype, value, clip_sd, tmp_path):
    """fp16/bf16 are checked by their exponent bits: the largest finite value, subnormals and -0 pass,
    NaN and +-Inf anywhere (first, middle, last element) are found."""
    from rsvlm_edge.export.validate import nonfinite_counts

    dt = getattr(torch, dtype)
    fin = torch.finfo(dt)
    edge = torch.tensor([fin.max, -fin.max, fin.tiny / 2, -0.0, 0.0, fin.eps], dtype=dt)
    assert nonfinite_counts(edge) == (0, 0)
    t = torch.randn(5000).to(dt)
    for pos in (0, 2500, 4999):
        u = t.clone()
        u[pos] = value
        assert nonfinite_counts(u) == ((1, 0) if value != value else (0, 1))
        assert nonfinite_counts(u.reshape(50, 100).t()) != (0, 0)  # non-contiguous
    sd = {k: v.to(dt) for k, v in clip_sd.items()}
    sd["visual.transformer.resblocks.0.mlp.c_proj.weight"] = _poison(sd["visual.transformer.resblocks.0.mlp.c_proj.weight"], value)
    p = _save_clip(sd, tmp_path / "half.safetensors")
    with pytest.raises(CheckpointError, match=r"visual\.transformer\.resblocks\.0\.mlp\.c_proj\.weight"):
        load_clip_checkpoint(p)
    sd.pop("visual.transformer.resblocks.0.mlp.c_proj.weight")
    sd["visual.transformer.resblocks.0.mlp.c_proj.weight"] = clip_sd["visual.transformer.resblocks.0.mlp.c_proj.weight"].to(dt)
    assert load_clip_checkpoint(_save_clip(sd, tmp_path / "ok.safetensors")).config.vision_layers == 2


@pytest.mark.parametrize("layer,key", [(2, "attn.in_proj_weight"), (3, "ln_2.bias"), (1, "mlp.c_fc.weight")])
@pytest.mark.parametrize("tower", ["visual.transformer", "transformer"])
def test_clip_block_of_four_missing_a_key_is_named(layer, key, tower, clip4_sd, tmp_path):
    name = f"{tower}.resblocks.{layer}.{key}"
    p = _save_clip(_edited(clip4_sd, {name: DELETE}), tmp_path / "four.pt")
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + "' is missing"):
        load_clip_checkpoint(p)


def test_clip_missing_whole_middle_block_is_named(clip4_sd, tmp_path):
    sd = {k: v for k, v in clip4_sd.items() if not k.startswith("visual.transformer.resblocks.2.")}
    with pytest.raises(CheckpointError, match="vision tower block 2 is missing"):
        load_clip_checkpoint(_save_clip(sd, tmp_path / "gap.pt"))


def test_clip_good_checkpoints_still_load(clip_sd, clip4_sd, tmp_path):
    assert load_clip_checkpoint(_save_clip(clip_sd, tmp_path / "a.pt")).config.vision_layers == 2
    four = load_clip_checkpoint(_save_clip(clip4_sd, tmp_path / "b.safetensors"))
    assert (four.config.vision_layers, four.config.text_layers) == (4, 4)
    train = {"state_dict": {f"module.{k}": v for k, v in clip_sd.items()}, "epoch": 3, "name": "run"}
    assert load_clip_checkpoint(_save_clip(train, tmp_path / "train.pt")).layout == "open_clip_train"


@pytest.mark.parametrize("edit,needles", [
    ({"module.visual.proj": lambda t: _poison(t, NAN)}, ("module.visual.proj", "NaN")),
    ({"module.visual.proj": "x"}, ("module.visual.proj", "str")),
    ({"module.visual.transformer.resblocks.0.ln_1.weight": DELETE},
     ("visual.transformer.resblocks.0.ln_1.weight", "missing")),
])
def test_clip_training_checkpoint_contents_are_checked(edit, needles, clip_sd, tmp_path):
    inner = _edited({f"module.{k}": v for k, v in clip_sd.items()}, edit)
    p = _save_clip({"state_dict": inner, "epoch": 3}, tmp_path / "train.pt")
    with pytest.raises(CheckpointError) as e:
        load_clip_checkpoint(p)
    for n in needles:
        assert n in e.value.message, e.value.message


def test_clip_top_level_container_that_is_not_a_dict(tmp_path):
    p = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], p)
    with pytest.raises(CheckpointError, match="holds a list, expected a dict of tensors"):
        load_clip_checkpoint(p)
    torch.save({}, p)
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_clip_checkpoint(p)
    torch.save({1: torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="non-string key 1"):
        load_clip_checkpoint(p)


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hfclip") / "clip"
    tiny_hf_clip().save_pretrained(d)
    return d


@pytest.mark.parametrize("content,needle", [("[1, 2, 3]", "holds a JSON list"), ('"clip"', "holds JSON str"),
                                            ("null", "holds JSON NoneType"), ("{not json", "not readable JSON")])
def test_clip_hf_config_that_is_not_an_object(content, needle, hf_clip_dir, tmp_path):
    d = tmp_path / "clip"
    shutil.copytree(hf_clip_dir, d)
    (d / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=needle) as e:
        load_clip_checkpoint(d)
    assert "config.json" in e.value.message


@pytest.mark.parametrize("name,edit,needle", [
    ("vision_model.encoder.layers.1.self_attn.k_proj.weight", lambda t: _poison(t, NAN), "NaN"),
    ("text_model.embeddings.token_embedding.weight", lambda t: _poison(t, -INF), "Inf"),
    ("vision_model.encoder.layers.0.mlp.fc1.weight", lambda t: t.to(torch.int16), "int16"),
    ("vision_model.embeddings.patch_embedding.weight", lambda t: t.reshape(-1), "must be 4-D"),
    ("visual_projection.weight", lambda t: t.reshape(1, *t.shape), "must be 2-D"),
    ("vision_model.embeddings.class_embedding", lambda t: t.reshape(2, -1), "must be 1-D"),
])
def test_clip_hf_directory_weights_are_checked(name, edit, needle, hf_clip_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "clip"
    shutil.copytree(hf_clip_dir, d)
    tensors = load_file(str(d / "model.safetensors"))
    tensors[name] = edit(tensors[name]).contiguous()
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=needle) as e:
        load_clip_checkpoint(d)
    assert name in e.value.message


@pytest.mark.parametrize("name,edit,needle", [
    ("vision_model.encoder.layers.1.self_attn.k_proj.weight", lambda t: t[:, :-1].contiguous(), "has shape"),
    ("vision_model.encoder.layers.1.mlp.fc1.weight", lambda t: t.t().contiguous(), "has shape"),
    ("text_model.encoder.layers.1.self_attn.out_proj.bias", DELETE, "is missing"),
    ("text_model.encoder.layers.0.layer_norm2.weight", lambda t: t[:-1].clone(), "has shape"),
    ("visual_projection.weight", lambda t: t[:, :-1].contiguous(), "has shape"),
    ("vision_model.embeddings.patch_embedding.weight", lambda t: t[:, :1].contiguous(), "(width, 3, patch, patch)"),
    ("vision_model.encoder.layers.1.self_attn.q_proj.weight", lambda t: _poison(t, NAN), "NaN"),
])
def test_hf_clip_state_dict_validator_names_the_tensor(name, edit, needle, hf_clip_dir):
    """``validate_hf_clip_state_dict``: the check of transformers CLIPModel tensors before their
    conversion to open_clip keys (torch.cat of q/k/v, load_state_dict size checks)."""
    from safetensors.torch import load_file

    from rsvlm_edge.export.validate import validate_hf_clip_state_dict

    sd = dict(load_file(str(hf_clip_dir / "model.safetensors")))
    validate_hf_clip_state_dict(dict(sd), hf_clip_dir)  # the good one passes
    validate_hf_clip_state_dict({f"clip.{k}": v for k, v in sd.items()}, hf_clip_dir)
    with pytest.raises(CheckpointError) as e:
        validate_hf_clip_state_dict(_edited(sd, {name: edit}), hf_clip_dir)
    assert name in e.value.message and needle in e.value.message, e.value.message


def test_clip_hf_directory_bin_with_a_string_value(hf_clip_dir, tmp_path):
    from safetensors.torch import load_file

    d = tmp_path / "clip"
    shutil.copytree(hf_clip_dir, d)
    tensors: dict[str, Any] = dict(load_file(str(d / "model.safetensors")))
    (d / "model.safetensors").unlink()
    tensors["logit_scale"] = "2.6592"
    torch.save(tensors, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="'logit_scale' holds a str where a tensor is expected"):
        load_clip_checkpoint(d)


# --- LLaVA --------------------------------------------------------------------------------------

def _index_name(d: Path) -> str | None:
    return next((n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json") if (d / n).is_file()), None)


def _load_any(p: Path) -> dict[str, Any]:
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(p)))
    return torch.load(p, weights_only=True)


def _save_any(tensors: dict[str, Any], p: Path) -> None:
    if p.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(p))
    else:
        torch.save(tensors, p)


def edit_llava(d: Path, edits: dict[str, Any]) -> None:
    """Apply ``edits`` (name -> new value, callable(old) -> new, or DELETE) to the checkpoint's files,
    keeping its index json consistent."""
    index = _index_name(d)
    if index:
        meta = json.loads((d / index).read_text())
        where = {k: d / v for k, v in meta["weight_map"].items()}
    else:
        single = next(d / n for n in ("model.safetensors", "pytorch_model.bin") if (d / n).is_file())
        where = {k: single for k in _load_any(single)}
    for path in sorted({where[k] for k in edits}):
        tensors = _load_any(path)
        for k, v in edits.items():
            if where[k] != path:
                continue
            if v is DELETE:
                tensors.pop(k)
                if index:
                    meta["weight_map"].pop(k)
            else:
                tensors[k] = v(tensors[k]) if callable(v) else v
        _save_any(tensors, path)
    if index:
        (d / index).write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def llava_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    out = {}
    for layout, fmt in (("llava", "bin"), ("llava", "safetensors"), ("hf", "safetensors")):
        d = root / f"{layout}-{fmt}"
        make_tiny_llava(d, layout=layout, fmt=fmt, spec=TinySpec(num_layers=4))
        out[(layout, fmt)] = d
    return out


@pytest.fixture()
def llava_copy(llava_bases, tmp_path) -> Callable[[str, str], Path]:
    def copy(layout: str = "llava", fmt: str = "safetensors") -> Path:
        d = tmp_path / f"{layout}-{fmt}"
        shutil.copytree(llava_bases[(layout, fmt)], d, symlinks=True)
        return d
    return copy


def _names(layout: str) -> dict[str, str]:
    """Original tensor names of the tiny checkpoint in each layout."""
    if layout == "llava":
        return {"dec": "model.layers.{}.self_attn.{}", "mlp": "model.layers.{}.mlp.{}", "emb": "model.embed_tokens.weight",
                "vis": "model.vision_tower.vision_tower.vision_model.", "proj": "model.mm_projector.0.weight",
                "lm": "lm_head.weight"}
    return {"dec": "language_model.model.layers.{}.self_attn.{}", "mlp": "language_model.model.layers.{}.mlp.{}",
            "emb": "language_model.model.embed_tokens.weight", "vis": "vision_tower.",
            "proj": "multi_modal_projector.linear_1.weight", "lm": "language_model.lm_head.weight"}


LLAVA_CASES = {
    # name: (edits built from _names(layout), needles)
    "nan-in-layer": (lambda n: {n["dec"].format(2, "q_proj.weight"): lambda t: _poison(t, NAN)}, ("q_proj.weight", "NaN")),
    "inf-in-embedding": (lambda n: {n["emb"]: lambda t: _poison(t, INF)}, ("embed_tokens.weight", "Inf")),
    "nan-in-vision": (lambda n: {n["vis"] + "encoder.layers.1.mlp.fc2.weight": lambda t: _poison(t, NAN)},
                      ("encoder.layers.1.mlp.fc2.weight", "NaN")),
    "int8-projector": (lambda n: {n["proj"]: lambda t: (t * 100).to(torch.int8)}, ("int8", "floating point")),
    "int32-lm-head": (lambda n: {n["lm"]: lambda t: t.to(torch.int32)}, ("lm_head.weight", "int32")),
    "3d-embed-tokens": (lambda n: {n["emb"]: lambda t: t.reshape(t.shape[0], 2, -1)}, ("embed_tokens.weight", "must be 2-D")),
    "1d-patch-embedding": (lambda n: {n["vis"] + "embeddings.patch_embedding.weight": lambda t: t.reshape(-1)},
                           ("patch_embedding.weight", "must be 4-D")),
    "2d-norm": (lambda n: {n["dec"].format(1, "q_proj.weight").replace("self_attn.q_proj", "input_layernorm"):
                           lambda t: t.reshape(1, -1)}, ("input_layernorm.weight", "must be 1-D")),
    "missing-k-proj-layer-2-of-4": (lambda n: {n["dec"].format(2, "k_proj.weight"): DELETE},
                                    ("layers.2.k_proj.weight", "missing")),
    "missing-down-proj-layer-3-of-4": (lambda n: {n["mlp"].format(3, "down_proj.weight"): DELETE},
                                       ("layers.3.down_proj.weight", "missing")),
    "missing-vision-bias": (lambda n: {n["vis"] + "encoder.layers.1.self_attn.q_proj.bias": DELETE},
                            ("encoder.layers.1.self_attn.q_proj.bias", "missing")),
    "narrow-o-proj": (lambda n: {n["dec"].format(1, "o_proj.weight"): lambda t: t[:, :-1].contiguous()},
                      ("layers.1.o_proj.weight", "has shape")),
    "transposed-up-proj": (lambda n: {n["mlp"].format(3, "up_proj.weight"): lambda t: t.t().contiguous()},
                           ("layers.3.up_proj.weight", "has shape")),
    "short-vision-fc1": (lambda n: {n["vis"] + "encoder.layers.2.mlp.fc1.weight": lambda t: t[:-1].clone()},
                         ("encoder.layers.2.mlp.fc1.weight", "has shape")),
}


@pytest.mark.parametrize("layout,fmt", [("llava", "bin"), ("llava", "safetensors"), ("hf", "safetensors")])
@pytest.mark.parametrize("case", sorted(LLAVA_CASES))
def test_llava_checkpoint_is_refused_naming_the_tensor(case, layout, fmt, llava_copy):
    make_edits, needles = LLAVA_CASES[case]
    d = llava_copy(layout, fmt)
    edit_llava(d, make_edits(_names(layout)))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(d)
    for n in needles:
        assert n in e.value.message, e.value.message
    assert e.value.fix


@pytest.mark.parametrize("value,needle", [("a string", "str"), (7, "int"), ({"w": 1}, "nested dict"),
                                          ([1, 2], "list"), (None, "NoneType")])
def test_llava_bin_shard_with_a_non_tensor_value(value, needle, llava_copy):
    d = llava_copy("llava", "bin")
    name = "model.layers.1.self_attn.v_proj.weight"
    edit_llava(d, {name: (lambda _t: {"weight": _t}) if isinstance(value, dict) else value})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(d)
    assert f"'{name}' holds a {needle} where a tensor is expected" in e.value.message, e.value.message
    assert "pytorch_model-0000" in e.value.message  # the file is named too


def test_llava_good_checkpoints_still_load(llava_bases):
    for d in llava_bases.values():
        ckpt = load_checkpoint(d)
        assert ckpt.config.decoder.num_layers == 4 and ckpt.config.vision.num_layers == 3


@pytest.mark.parametrize("content,needle", [("[1, 2]", "holds a JSON list"), ("42", "holds JSON int"),
                                            ('"x"', "holds JSON str"), ("", "not readable JSON")])
@pytest.mark.parametrize("layout", ["llava", "hf"])
def test_llava_config_that_is_not_an_object(content, needle, layout, llava_copy):
    d = llava_copy(layout, "safetensors")
    (d / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=needle) as e:
        load_checkpoint(d)
    assert "config.json" in e.value.message


@pytest.mark.parametrize("key,value,needle", [
    ("hidden_size", "64", "'hidden_size' is '64', expected an integer"),
    ("num_attention_heads", 0, "'num_attention_heads' is 0"),
    ("num_hidden_layers", -1, "'num_hidden_layers' is -1"),
    ("num_key_value_heads", 3, "not a multiple of num_key_value_heads 3"),
    ("vocab_size", 3.5, "'vocab_size' is 3.5"),
    ("rms_norm_eps", "NaN", "'rms_norm_eps'"),
    ("rope_theta", -1.0, "'rope_theta' is -1.0"),
    ("mm_vision_select_layer", "last", "'mm_vision_select_layer' is 'last'"),
    ("mm_projector_type", ["mlp"], "projector type ['mlp'] is not supported"),
    ("image_aspect_ratio", "anyres", "image_aspect_ratio 'anyres' is not supported"),
    ("rope_scaling", "linear", "rope settings are 'linear'"),
    ("architectures", 5, None),  # not a list: ignored, the checkpoint loads
])
def test_llava_invalid_config_values_name_the_key(key, value, needle, llava_copy):
    d = llava_copy("llava", "safetensors")
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg).replace('"NaN"', "NaN"))
    if needle is None:
        load_checkpoint(d)
        return
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(d)
    assert needle in e.value.message, e.value.message


@pytest.mark.parametrize("where,key,value,needle", [
    ("text_config", "hidden_size", "64", "text_config: 'hidden_size' is '64'"),
    ("text_config", "num_attention_heads", 0, "text_config: 'num_attention_heads' is 0"),
    ("text_config", "rms_norm_eps", -1, "text_config: 'rms_norm_eps' is -1"),
    ("vision_config", "patch_size", [14], "vision_config: 'patch_size' is [14]"),
    (None, "vision_config", [1], "vision_config is not an object"),
    (None, "text_config", "llama", "has no text_config"),
    (None, "vision_feature_layer", "last", "vision_feature_layer"),  # named by transformers' own check
])
def test_llava_hf_config_values_name_the_key(where, key, value, needle, llava_copy):
    d = llava_copy("hf", "safetensors")
    cfg = json.loads((d / "config.json").read_text())
    (cfg[where] if where else cfg)[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(d)
    assert needle in e.value.message, e.value.message


@pytest.mark.parametrize("value,needle", [("abc", "'image_mean' is 'abc'"), ([0.5, 0.5], "three finite numbers"),
                                          ([0.5, "x", 0.5], "three finite numbers"), (None, "'image_mean' is None")])
def test_llava_preprocessor_config_values_are_checked(value, needle, llava_copy):
    d = llava_copy("llava", "safetensors")
    (d / "preprocessor_config.json").write_text(json.dumps({"image_mean": value}))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(d)
    assert needle in e.value.message and "preprocessor_config.json" in e.value.message
    (d / "preprocessor_config.json").write_text(json.dumps({"image_std": [0.2, 0.0, 0.3]}))
    with pytest.raises(CheckpointError, match="image_std"):
        load_checkpoint(d)


# --- shard index -------------------------------------------------------------------------------

def _index(d: Path) -> tuple[Path, dict[str, Any]]:
    p = d / _index_name(d)
    return p, json.loads(p.read_text())


@pytest.mark.parametrize("weight_map,needle", [
    ([["model.norm.weight", "model-00001-of-00002.safetensors"]], "'weight_map' is a JSON list"),
    ("model-00001-of-00002.safetensors", "'weight_map' is a JSON str"),
    ({}, "'weight_map' is a JSON dict"),
    (None, "'weight_map' is missing"),
])
def test_llava_weight_map_that_is_not_an_object(weight_map, needle, llava_copy):
    d = llava_copy("llava", "safetensors")
    p, meta = _index(d)
    if weight_map is None:
        meta.pop("weight_map")
    else:
        meta["weight_map"] = weight_map
    p.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(d)
    assert needle in e.value.message and p.name in e.value.message


def test_llava_index_that_is_a_list_and_bad_shard_names(llava_copy):
    d = llava_copy("llava", "safetensors")
    p, meta = _index(d)
    p.write_text(json.dumps([meta]))
    with pytest.raises(CheckpointError, match="holds a JSON list"):
        read_tensors(d)
    for bad in (5, "", None):
        wm = dict(meta["weight_map"])
        wm["model.norm.weight"] = bad
        p.write_text(json.dumps({"weight_map": wm}))
        with pytest.raises(CheckpointError, match="expected a file name"):
            read_tensors(d)


def _retarget(d: Path, name: str, new_entry: str) -> str:
    """Point the index entry of the shard holding ``name`` (and all its tensors) at ``new_entry``;
    return the old shard file name."""
    p, meta = _index(d)
    old = meta["weight_map"][name]
    meta["weight_map"] = {k: (new_entry if v == old else v) for k, v in meta["weight_map"].items()}
    p.write_text(json.dumps(meta))
    return old


@pytest.fixture()
def spy_reads(monkeypatch):
    """Every weight file the loaders open (safetensors and torch.load)."""
    import safetensors.torch

    seen: list[str] = []
    real_load_file, real_torch_load = safetensors.torch.load_file, torch.load

    def load_file(path, *a, **k):
        seen.append(str(path))
        return real_load_file(path, *a, **k)

    def torch_load(path, *a, **k):
        seen.append(str(path))
        return real_torch_load(path, *a, **k)

    monkeypatch.setattr(safetensors.torch, "load_file", load_file)
    monkeypatch.setattr(torch, "load", torch_load)
    return seen


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_shard_entry_with_dotdot_is_refused_without_reading_it(fmt, llava_copy, tmp_path, spy_reads):
    d = llava_copy("llava", fmt)
    ext = "safetensors" if fmt == "safetensors" else "bin"
    old = _retarget(d, "model.norm.weight", f"../outside.{ext}")
    shutil.copy(d / old, tmp_path / f"outside.{ext}")  # exists and is valid: the refusal is the check's
    with pytest.raises(CheckpointError, match=rf"'\.\./outside\.{ext}', which is outside the checkpoint directory"):
        load_checkpoint(d)
    assert not any("outside" in s for s in spy_reads)
    _retarget(d, "model.norm.weight", f"sub/../../outside.{ext}")
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        load_checkpoint(d)


def test_shard_entry_with_an_absolute_path_is_refused(llava_copy, tmp_path, spy_reads):
    d = llava_copy("llava", "safetensors")
    target = tmp_path / "abs" / "elsewhere.safetensors"
    target.parent.mkdir()
    old = _retarget(d, "model.norm.weight", str(target))
    shutil.copy(d / old, target)
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        load_checkpoint(d)
    assert not any("elsewhere" in s for s in spy_reads)


def test_shard_that_is_a_symlink_out_of_the_directory_is_refused(llava_copy, tmp_path, spy_reads):
    d = llava_copy("llava", "safetensors")
    _, meta = _index(d)
    shard = meta["weight_map"]["model.norm.weight"]
    outside = tmp_path / "outside_shard.safetensors"
    shutil.move(str(d / shard), outside)
    (d / shard).symlink_to(outside)
    with pytest.raises(CheckpointError, match=f"'{shard}', a symlink that leaves the checkpoint directory"):
        load_checkpoint(d)
    assert not any("outside_shard" in s for s in spy_reads) and not any(s.endswith(shard) for s in spy_reads)


def test_symlinked_subdirectory_out_of_the_checkpoint_is_refused(llava_copy, tmp_path):
    d = llava_copy("llava", "safetensors")
    outside = tmp_path / "outside_dir"
    outside.mkdir()
    old = _retarget(d, "model.norm.weight", "shards/part.safetensors")
    shutil.move(str(d / old), outside / "part.safetensors")
    (d / "shards").symlink_to(outside, target_is_directory=True)
    with pytest.raises(CheckpointError, match="symlink that leaves the checkpoint directory"):
        load_checkpoint(d)


def test_single_weights_file_that_is_a_symlink_out_is_refused(llava_copy, tmp_path):
    d = llava_copy("hf", "safetensors")
    outside = tmp_path / "model_elsewhere.safetensors"
    shutil.move(str(d / "model.safetensors"), outside)
    (d / "model.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="'model.safetensors', a symlink that leaves"):
        load_checkpoint(d)


def test_symlinks_inside_the_directory_and_the_hf_hub_cache_layout_are_accepted(llava_bases, tmp_path):
    """Links that stay inside are fine, and so is the Hugging Face hub cache (snapshot files are
    symlinks into the repo's own ``blobs`` directory)."""
    src = llava_bases[("llava", "safetensors")]
    inside = tmp_path / "inside"
    shutil.copytree(src, inside)
    _, meta = _index(inside)
    shard = meta["weight_map"]["model.norm.weight"]
    (inside / "real").mkdir()
    shutil.move(str(inside / shard), inside / "real" / shard)
    (inside / shard).symlink_to(Path("real") / shard)
    assert load_checkpoint(inside).config.decoder.num_layers == 4

    repo = tmp_path / "hub" / "models--org--tiny-llava"
    snap, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(src.iterdir())):
        blob = blobs / f"{i:04d}deadbeef"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    assert load_checkpoint(snap).config.decoder.num_layers == 4


def test_tensor_in_two_shards_is_refused(llava_copy):
    d = llava_copy("llava", "safetensors")
    _, meta = _index(d)
    shards = sorted(set(meta["weight_map"].values()))
    name = next(k for k, v in meta["weight_map"].items() if v == shards[0])
    from safetensors.torch import load_file, save_file

    second = dict(load_file(str(d / shards[1])))
    second[name] = load_file(str(d / shards[0]))[name]
    save_file(second, str(d / shards[1]))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' is in both"):
        load_checkpoint(d)


def test_vision_tower_directory_gets_the_same_checks(llava_bases, tmp_path):
    """``--vision-tower DIR`` is read with the same reader: its hostile contents are refused too."""
    from rsvlm_edge.export.llava_checkpoint import read_vision_tower

    model_dir = tmp_path / "tower"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="holds a JSON list"):
        read_vision_tower(model_dir)
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "/etc/passwd"}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        read_vision_tower(model_dir)


# --- through the CLI ----------------------------------------------------------------------------

def _assert_cli_refusal(r, out: Path, *needles: str) -> None:
    assert r.returncode == 2, r.stderr + r.stdout
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
    assert sum(ln.startswith("error:") for ln in lines) == 1, r.stderr
    assert sum(ln.startswith("fix:") for ln in lines) == 1, r.stderr
    text = " ".join(r.stderr.split())
    for n in needles:
        assert n in text, text
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temp dirs


@pytest.mark.parametrize("case", ["nan-in-block", "int-weight", "str-value", "1d-conv", "missing-block-key"])
def test_cli_export_clip_refuses_hostile_checkpoints(case, clip_sd, tmp_path):
    edits, needles = CLIP_CASES[case]
    p = _save_clip(_edited(clip_sd, edits), tmp_path / "bad.pt")
    out = tmp_path / "out" / "x.rsvlm"
    out.parent.mkdir()
    _assert_cli_refusal(run_cli("export", "clip", str(p), "-o", str(out)), out, *needles)


def test_cli_export_clip_refuses_a_list_config(hf_clip_dir, tmp_path):
    d = tmp_path / "clip"
    shutil.copytree(hf_clip_dir, d)
    (d / "config.json").write_text("[]")
    out = tmp_path / "out" / "x.rsvlm"
    out.parent.mkdir()
    _assert_cli_refusal(run_cli("export", "clip", str(d), "-o", str(out)), out, "config.json", "JSON list")


@pytest.mark.parametrize("case", ["nan-in-layer", "int8-projector", "3d-embed-tokens", "missing-k-proj-layer-2-of-4",
                                  "weight-map-list", "config-list", "dotdot-shard", "absolute-shard", "symlink-shard"])
def test_cli_export_vlm_refuses_hostile_checkpoints(case, llava_copy, tmp_path):
    d = llava_copy("llava", "safetensors")
    needles: tuple[str, ...]
    if case in LLAVA_CASES:
        make_edits, needles = LLAVA_CASES[case]
        edit_llava(d, make_edits(_names("llava")))
    elif case == "weight-map-list":
        p, meta = _index(d)
        p.write_text(json.dumps({"weight_map": list(meta["weight_map"].items())}))
        needles = ("weight_map", "JSON list")
    elif case == "config-list":
        (d / "config.json").write_text("[1]")
        needles = ("config.json", "JSON list")
    elif case == "dotdot-shard":
        _retarget(d, "model.norm.weight", "../x.safetensors")
        needles = ("../x.safetensors", "outside the checkpoint directory")
    elif case == "absolute-shard":
        _retarget(d, "model.norm.weight", "/etc/hostname")
        needles = ("/etc/hostname", "outside the checkpoint directory")
    else:
        _, meta = _index(d)
        shard = meta["weight_map"]["model.norm.weight"]
        shutil.move(str(d / shard), tmp_path / "elsewhere.safetensors")
        (d / shard).symlink_to(tmp_path / "elsewhere.safetensors")
        needles = (shard, "symlink that leaves")
    out = tmp_path / "out" / "v.rsvlm"
    out.parent.mkdir()
    _assert_cli_refusal(run_cli("export", "vlm", str(d), "-o", str(out), "--weights", "fp32"), out, *needles)
