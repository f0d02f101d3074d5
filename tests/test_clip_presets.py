"""Activation per released model (issue 7, "Activation per released model"): ``--preset
remoteclip|georsclip|skyclip|openai|laion``, recognition of the released file names, the reason
printed and kept in the manifest (``model.activation_reason``), ``--activation`` over everything.

The rules follow each project's own loading code (README, "Activation per released model"):
RemoteCLIP retrieval.py and GeoRSCLIP inference.py build with ``pretrained='openai'`` (QuickGELU in
open_clip <= 2.28), GeoRSCLIP ViT-H/14 with ``laion2b_s32b_b79k`` (GELU), SkyCLIP ViT-B/32 from
``laion2b_e16`` without ``force_quick_gelu`` (GELU), SkyCLIP ViT-L/14 with ``force_quick_gelu``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_models import cos, open_clip_image_embeds, save_bare, tiny_open_clip
from util import run_cli

from rsvlm_edge.errors import CheckpointError, InputError
from rsvlm_edge.export import clip_checkpoint as cc
from rsvlm_edge.export.clip import export_clip, synthetic_rs_images

fidelity = pytest.mark.campaign("fidelity")

# (preset, architecture) -> activation, per the projects' code
RULES = [
    ("remoteclip", "ViT-B-32", "quick_gelu"), ("remoteclip", "ViT-L-14", "quick_gelu"),
    ("georsclip", "ViT-B-32", "quick_gelu"), ("georsclip", "ViT-H-14", "gelu"),
    ("skyclip", "ViT-B-32", "gelu"), ("skyclip", "ViT-L-14", "quick_gelu"),
    ("openai", "ViT-B-32", "quick_gelu"), ("openai", "ViT-L-14-336", "quick_gelu"),
    ("laion", "ViT-B-32", "gelu"), ("laion", "ViT-H-14", "gelu"),
]

# released names (file, or the folder the release unpacks to) -> preset
NAMES = [
    ("RemoteCLIP-ViT-B-32.pt", "remoteclip"),  # HF chendelong/RemoteCLIP, README hf_hub_download
    ("RemoteCLIP-ViT-L-14.pt", "remoteclip"),
    ("checkpoints/RemoteCLIP_ViT-B-32.pt", "remoteclip"),  # README retrieval.py example spelling
    ("RS5M_ViT-B-32.pt", "georsclip"),  # HF Zilun/GeoRSCLIP, RS5M README
    ("GeoRSCLIP/ckpt/RS5M_ViT-H-14.pt", "georsclip"),
    ("SkyCLIP_ViT_B32_top50pct/epoch_20.pt", "skyclip"),  # SkyScript README zip names
    ("SkyCLIP_ViT_L14_top30pct_filtered_by_CLIP_laion_RS/epoch_20.pt", "skyclip"),
    ("CLIP_ViT_L14_LAION_RS/epoch_20.pt", "skyclip"),
    ("models--laion--CLIP-ViT-H-14-laion2B-s32B-b79K/snapshots/0123abc/open_clip_pytorch_model.bin", "laion"),
    ("timm--vit_base_patch32_clip_224.openai/open_clip_pytorch_model.bin", "openai"),
    ("ViT-B-32.pt", None),
    ("finetuned/my_clip_epoch3.pt", None),
]


@fidelity
@pytest.mark.parametrize("preset,arch,expected", RULES)
def test_preset_rules(preset, arch, expected):
    act, reason = cc.choose_activation(arch, preset=preset)
    assert act == expected
    assert reason.startswith(f"--preset {preset}")


@fidelity
@pytest.mark.parametrize("name,preset", NAMES)
def test_released_names_recognised(name, preset):
    found = cc.preset_from_path(Path("/data") / name)
    assert (found[0] if found else None) == preset


@fidelity
def test_activation_overrides_everything():
    for preset in (None, *cc.PRESETS):
        for act in cc.ACTIVATIONS:
            got, reason = cc.choose_activation("ViT-B-32", activation=act, preset=preset,
                                               source="SkyCLIP_ViT_B32_top50pct/epoch_20.pt", hf_act="gelu")
            assert got == act and "--activation" in reason


@fidelity
def test_order_preset_then_hf_config_then_name_then_family():
    sky = "SkyCLIP_ViT_B32_top50pct/epoch_20.pt"
    assert cc.choose_activation("ViT-B-32", preset="openai", source=sky, hf_act="gelu")[0] == "quick_gelu"
    act, reason = cc.choose_activation("ViT-B-32", source=sky, hf_act="quick_gelu")
    assert act == "quick_gelu" and "config.json" in reason
    act, reason = cc.choose_activation("ViT-B-32", source=sky)
    assert act == "gelu" and "skyclip" in reason and "SkyCLIP_ViT_B32_top50pct" in reason
    act, reason = cc.choose_activation("ViT-B-32", source="ViT-B-32.pt")
    assert act == "quick_gelu" and "no preset recognised" in reason and "--preset" in reason
    assert cc.choose_activation("ViT-H-14", source="x.pt")[0] == "gelu"


@fidelity
def test_preset_without_a_rule_for_the_arch_falls_back_and_says_so():
    act, reason = cc.choose_activation("ViT-B-16", preset="skyclip")
    assert act == "quick_gelu" and "ViT-B-32, ViT-L-14 only" in reason
    act, reason = cc.choose_activation("ViT-L-14", preset="georsclip")
    assert act == "quick_gelu" and "not ViT-L-14" in reason


@fidelity
def test_unknown_preset_and_activation_refused(tmp_path):
    ckpt = save_bare(tiny_open_clip(), tmp_path / "RemoteCLIP-ViT-B-32.pt")
    with pytest.raises(InputError, match="unknown preset 'nope'") as e:
        cc.load_clip_checkpoint(ckpt, preset="nope")
    assert "skyclip" in e.value.fix
    with pytest.raises(CheckpointError, match="unknown activation"):
        cc.load_clip_checkpoint(ckpt, activation="relu")


def _meta_state_dict(arch: str) -> dict:
    import open_clip
    from open_clip.model import CLIP

    with torch.device("meta"):  # real shapes, no memory
        return CLIP(**open_clip.get_model_config(arch)).state_dict()


@fidelity
@pytest.mark.parametrize("name,arch,expected", [
    ("RemoteCLIP-ViT-B-32.pt", "ViT-B-32", "quick_gelu"),
    ("RemoteCLIP-ViT-L-14.pt", "ViT-L-14", "quick_gelu"),
    ("RS5M_ViT-B-32.pt", "ViT-B-32", "quick_gelu"),
    ("RS5M_ViT-H-14.pt", "ViT-H-14", "gelu"),
    ("SkyCLIP_ViT_B32_top50pct/epoch_20.pt", "ViT-B-32", "gelu"),  # was QuickGELU before presets
    ("SkyCLIP_ViT_L14_top30pct/epoch_20.pt", "ViT-L-14", "quick_gelu"),
    ("ViT-B-32.pt", "ViT-B-32", "quick_gelu"),
])
def test_real_architectures_under_released_names(name, arch, expected):
    cfg = cc.infer_open_clip_config(_meta_state_dict(arch), None, Path("/models") / name)
    assert cfg.name == arch and cfg.activation == expected


# ---------------------------------------------------------------- end to end, tiny seeded models
@pytest.fixture
def tiny_as(monkeypatch):
    """Let the tiny open_clip shape (width 128, 2 layers, patch 16, 64 px) stand for a released
    architecture, so that the per-architecture rules apply to a model that exports in seconds."""
    def use(arch: str) -> None:
        monkeypatch.setattr(cc, "KNOWN_ARCHS", {arch: (128, 2, 16, 64)})
    return use


def _save_skyclip(model, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 20, "name": path.parent.name,
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@fidelity
def test_skyclip_b32_exports_with_gelu_and_matches_open_clip_gelu(tmp_path, tiny_as):
    import rsvlm_edge

    tiny_as("ViT-B-32")
    gelu_model = tiny_open_clip(seed=4, quick_gelu=False)
    ckpt = _save_skyclip(gelu_model, tmp_path / "SkyCLIP_ViT_B32_top50pct" / "epoch_20.pt")
    b = export_clip(ckpt, tmp_path / "sky-b32.rsvlm")
    m = json.loads((b.path / "manifest.json").read_text())["model"]
    assert m["name"] == "ViT-B-32" and m["activation"] == "gelu"
    assert "skyclip" in m["activation_reason"] and "laion2b_e16" in m["activation_reason"]
    assert b.manifest.model.activation_reason == m["activation_reason"]
    px = synthetic_rs_images(4, 64, seed=8)
    got = rsvlm_edge.load(b.path).encode_images(px, normalize=False)
    ref_gelu = open_clip_image_embeds(gelu_model, px)
    quick = tiny_open_clip(seed=4, quick_gelu=True)  # same weights, the old (wrong) activation
    ref_quick = open_clip_image_embeds(quick, px)
    assert cos(got, ref_gelu).min() >= 0.9999
    assert 1 - cos(got, ref_quick).min() > 10 * (1 - cos(got, ref_gelu).min())


@fidelity
def test_skyclip_l14_exports_with_quick_gelu(tmp_path, tiny_as):
    tiny_as("ViT-L-14")
    ckpt = _save_skyclip(tiny_open_clip(seed=5), tmp_path / "SkyCLIP_ViT_L14_top30pct" / "epoch_20.pt")
    b = export_clip(ckpt, tmp_path / "sky-l14.rsvlm")
    assert b.manifest.model.activation == "quick_gelu"
    assert "force_quick_gelu" in b.manifest.model.activation_reason


@fidelity
@pytest.mark.parametrize("name,arch,expected", [("RS5M_ViT-B-32.pt", "ViT-B-32", "quick_gelu"),
                                                ("RS5M_ViT-H-14.pt", "ViT-H-14", "gelu"),
                                                ("RemoteCLIP-ViT-B-32.pt", "ViT-B-32", "quick_gelu")])
def test_bare_released_files_load_with_project_activation(tmp_path, tiny_as, name, arch, expected):
    tiny_as(arch)
    ckpt = save_bare(tiny_open_clip(seed=6, quick_gelu=expected == "quick_gelu"), tmp_path / name)
    loaded = cc.load_clip_checkpoint(ckpt)
    assert loaded.config.activation == expected and loaded.config.name == arch
    assert loaded.activation_reason and ("openai" in loaded.activation_reason or "laion2b" in loaded.activation_reason)


@fidelity
def test_explicit_preset_and_activation_in_export(tmp_path, tiny_as):
    tiny_as("ViT-B-32")
    ckpt = _save_skyclip(tiny_open_clip(seed=7), tmp_path / "SkyCLIP_ViT_B32_top50pct" / "epoch_20.pt")
    b = export_clip(ckpt, tmp_path / "forced.rsvlm", activation="quick_gelu", preset="laion")
    assert b.manifest.model.activation == "quick_gelu" and "--activation" in b.manifest.model.activation_reason
    b = export_clip(ckpt, tmp_path / "openai.rsvlm", preset="openai")
    assert b.manifest.model.activation == "quick_gelu"
    assert b.manifest.model.activation_reason.startswith("--preset openai")


@fidelity
def test_hf_clip_directory_reason_names_its_config(tmp_path):
    from clip_models import tiny_hf_clip

    d = tmp_path / "hf"
    tiny_hf_clip().save_pretrained(d)
    ck = cc.load_clip_checkpoint(d)
    assert ck.config.activation == "quick_gelu" and "config.json" in ck.activation_reason
    assert cc.load_clip_checkpoint(d, preset="laion").config.activation == "gelu"


# ---------------------------------------------------------------- CLI
def _activation_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("activation ")]


@fidelity
def test_cli_prints_activation_and_reason_from_file_name(tmp_path):
    ckpt = save_bare(tiny_open_clip(seed=1), tmp_path / "RemoteCLIP-ViT-B-32.pt")
    out = tmp_path / "remote.rsvlm"
    r = run_cli("export", "clip", str(ckpt), "-o", str(out))
    assert r.returncode == 0, r.stderr
    lines = _activation_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("activation quick_gelu:") and "remoteclip" in lines[0] and "retrieval.py" in lines[0]
    m = json.loads((out / "manifest.json").read_text())["model"]
    assert m["activation"] == "quick_gelu" and m["activation_reason"] == lines[0].split(": ", 1)[1]


@fidelity
def test_cli_preset_and_activation_options(tmp_path):
    ckpt = save_bare(tiny_open_clip(seed=2, quick_gelu=False), tmp_path / "RemoteCLIP-ViT-B-32.pt")
    r = run_cli("export", "clip", str(ckpt), "-o", str(tmp_path / "a.rsvlm"), "--preset", "laion")
    assert r.returncode == 0, r.stderr
    assert _activation_lines(r.stderr)[0].startswith("activation gelu: --preset laion")
    r = run_cli("export", "clip", str(ckpt), "-o", str(tmp_path / "b.rsvlm"), "--preset", "laion",
                "--activation", "quick_gelu")
    assert r.returncode == 0, r.stderr
    assert _activation_lines(r.stderr)[0].startswith("activation quick_gelu: --activation quick_gelu given")


@fidelity
@pytest.mark.parametrize("args,needle", [(["--preset", "nope"], "unknown --preset 'nope'"),
                                         (["--activation", "relu"], "unknown --activation 'relu'")])
def test_cli_bad_preset_or_activation_exit_2(tmp_path, args, needle):
    ckpt = save_bare(tiny_open_clip(), tmp_path / "m.pt")
    out = tmp_path / "x.rsvlm"
    r = run_cli("export", "clip", str(ckpt), "-o", str(out), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert any(line.startswith("error:") and needle in line for line in r.stderr.splitlines()), r.stderr
    assert "fix:" in r.stderr and not out.exists()
    assert np.all([not p.name.startswith(".x") for p in tmp_path.iterdir()])
