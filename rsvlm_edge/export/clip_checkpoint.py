"""CLIP checkpoints: find the layout, infer the architecture from the tensors, build open_clip.

Layouts read:
- ``open_clip``: a bare open_clip/OpenAI-key state dict (RemoteCLIP, GeoRSCLIP ``.pt``), or
  ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` (file or hub-style directory).
- ``open_clip_train``: an open_clip training checkpoint ``{'state_dict': {'module.…'}, 'epoch': …}``
  (SkyCLIP).
- ``hf_clip``: a transformers ``CLIPModel`` directory (config.json + model.safetensors or
  pytorch_model.bin), converted to open_clip keys.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, InputError
from .torch_io import load_tensor_file, read_json
from .validate import validate_clip_state_dict, validate_hf_clip_state_dict

ACTIVATIONS = ("gelu", "quick_gelu")
KNOWN_ARCHS = {
    # name: (vision width, layers, patch, image size)
    "ViT-B-32": (768, 12, 32, 224),
    "ViT-B-16": (768, 12, 16, 224),
    "ViT-L-14": (1024, 24, 14, 224),
    "ViT-L-14-336": (1024, 24, 14, 336),
    "ViT-H-14": (1280, 32, 14, 224),
    "ViT-bigG-14": (1664, 48, 14, 224),
}
# Without a preset: ViT-H/bigG exist only as LAION-trained open_clip models (nn.GELU); the other ViT
# sizes default to OpenAI's QuickGELU (OpenAI-initialised RS models: RemoteCLIP, GeoRSCLIP-B/32, SkyCLIP-L/14).
GELU_BY_DEFAULT = ("ViT-H-14", "ViT-bigG-14")

# Activation per released model, as each project's own code builds it (README "Activation per released
# model" cites file and line). "*" = every architecture. open_clip <= 2.28 built pretrained='openai'
# models with QuickGELU (factory.create_model -> load_openai_model); from 2.29 on the same call builds
# the plain config (GELU) and warns, so the QuickGELU of the papers is the reference.
_OPENAI_EVAL = "builds it with pretrained='openai' (QuickGELU in the open_clip of its paper)"
PRESET_RULES: dict[str, dict[str, tuple[str, str]]] = {
    "remoteclip": {"*": ("quick_gelu", f"RemoteCLIP's evaluation code (retrieval.py) {_OPENAI_EVAL}")},
    "georsclip": {
        "ViT-B-32": ("quick_gelu", f"GeoRSCLIP's inference.py {_OPENAI_EVAL}"),
        "ViT-H-14": ("gelu", "GeoRSCLIP's inference.py builds ViT-H/14 with pretrained='laion2b_s32b_b79k' (GELU)"),
    },
    "skyclip": {
        "ViT-B-32": ("gelu", "SkyCLIP ViT-B/32 was trained from LAION laion2b_e16 and SkyScript's notebooks load "
                             "it without force_quick_gelu (GELU)"),
        "ViT-L-14": ("quick_gelu", "SkyCLIP ViT-L/14 was trained from OpenAI weights and SkyScript's notebooks load "
                                   "it with force_quick_gelu"),
    },
    "openai": {"*": ("quick_gelu", "OpenAI CLIP weights were trained with QuickGELU")},
    "laion": {"*": ("gelu", "LAION-trained open_clip weights use nn.GELU")},
}
PRESETS = tuple(PRESET_RULES)
# Released file / folder names -> preset (matched case-insensitively on the file name, then on up to
# three enclosing folders, nearest first): RemoteCLIP-{RN50,ViT-B-32,ViT-L-14}.pt (HF chendelong/RemoteCLIP),
# RS5M_ViT-B-32.pt / RS5M_ViT-H-14.pt (HF Zilun/GeoRSCLIP), SkyCLIP_ViT_{B32,L14}_*.zip and
# CLIP_ViT_L14_LAION_RS.zip (SkyScript; the .pt inside keeps the folder name), hub folders such as
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K or timm/vit_base_patch32_clip_224.openai.
_NAME_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("remoteclip", re.compile(r"remote[-_ ]?clip", re.I)),
    ("georsclip", re.compile(r"geo[-_ ]?rs[-_ ]?clip|(?:^|[^a-z0-9])rs5m", re.I)),
    ("skyclip", re.compile(r"sky[-_ ]?clip|skyscript|clip_vit_l14_laion_rs", re.I)),
    ("laion", re.compile(r"laion(?:2b|400m|5b|[-_]?aesthetic)", re.I)),
    ("openai", re.compile(r"(?:^|[^a-z0-9])openai(?:$|[^a-z0-9])", re.I)),
)


def preset_from_path(path: str | Path) -> tuple[str, str] | None:
    """(preset, matched name) from a released file or folder name, or None."""
    p = Path(path)
    names = [p.name] + [q.name for q in list(p.parents)[:3]]
    for name in names:
        for preset, pattern in _NAME_PATTERNS:
            if name and pattern.search(name):
                return preset, name
    return None


def choose_activation(arch: str, activation: str | None = None, preset: str | None = None,
                      source: str | Path | None = None, hf_act: str | None = None) -> tuple[str, str]:
    """(activation, reason). Order: explicit ``activation``; explicit ``preset``; a transformers
    config's ``hidden_act``; a preset recognised from the file name; the family default."""
    if activation is not None:
        if activation not in ACTIVATIONS:
            raise CheckpointError(f"unknown activation '{activation}'", f"choose one of {', '.join(ACTIVATIONS)}")
        return activation, f"--activation {activation} given (overrides presets and file names)"
    if preset is not None:
        if preset not in PRESET_RULES:
            raise InputError(f"unknown preset '{preset}'", f"choose one of {', '.join(PRESETS)}")
        return _preset_activation(preset, arch, f"--preset {preset}")
    if hf_act is not None:
        act = "quick_gelu" if hf_act == "quick_gelu" else "gelu"
        return act, f"the transformers config.json says hidden_act '{hf_act}'"
    found = preset_from_path(source) if source is not None else None
    if found is not None:
        return _preset_activation(found[0], arch, f"preset {found[0]} recognised from the name '{found[1]}'")
    act, why = _family_default(arch)
    return act, (f"no preset recognised from the file name: {why}; pass --preset "
                 f"{'|'.join(PRESETS)} or --activation if the checkpoint was trained otherwise")


def _family_default(arch: str) -> tuple[str, str]:
    if arch in GELU_BY_DEFAULT:
        return "gelu", f"architecture {arch} exists only as LAION-trained open_clip weights (GELU)"
    return "quick_gelu", f"architecture {arch} defaults to OpenAI's QuickGELU"


def _preset_activation(preset: str, arch: str, how: str) -> tuple[str, str]:
    rules = PRESET_RULES[preset]
    rule = rules.get(arch) or rules.get("*")
    if rule is not None:
        return rule[0], f"{how}: {rule[1]}"
    act, why = _family_default(arch)
    released = ", ".join(k for k in rules)
    return act, f"{how}, but {preset} was released as {released} only, not {arch}: {why}"
REQUIRED_KEYS = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                 "visual.proj", "token_embedding.weight", "positional_embedding", "text_projection")


@dataclass(frozen=True)
class ClipConfig:
    """Everything needed to rebuild the open_clip model; stored in the bundle manifest."""

    name: str  # "ViT-B-32", ... or "custom"
    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_head_width: int
    vision_mlp_ratio: float
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp_ratio: float
    context_length: int
    vocab_size: int
    activation: str  # "gelu" | "quick_gelu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def vision_heads(self) -> int:
        return self.vision_width // self.vision_head_width


@dataclass
class ClipCheckpoint:
    state_dict: dict[str, Any]  # open_clip keys, torch tensors
    config: ClipConfig
    layout: str  # "open_clip" | "open_clip_train" | "hf_clip"
    source: Path
    activation_reason: str = ""  # why config.activation was chosen (manifest model.activation_reason)


def _count_layers(sd: dict[str, Any], prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def _strip_prefix(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _default_head_width(width: int) -> int:
    return {1280: 80, 1664: 104}.get(width, 64)


def infer_open_clip_config(sd: dict[str, Any], activation: str | None, source: Path,
                           vision_heads: int | None = None, text_heads: int | None = None,
                           preset: str | None = None) -> ClipConfig:
    """Infer the architecture from open_clip-key tensors (heads: from args, else open_clip's defaults);
    the activation from ``choose_activation`` (``activation`` > ``preset`` > file name > family)."""
    if any(k.startswith("visual.layer1.") or k.startswith("visual.attnpool.") for k in sd):
        raise CheckpointError(
            f"'{source}' is a ResNet CLIP (e.g. RN50); rsvlm-edge runs ViT CLIPs only",
            "use the ViT-B/32, ViT-L/14 or ViT-H/14 variant of the checkpoint",
        )
    if any(k.startswith("visual.trunk.") for k in sd):
        raise CheckpointError(f"'{source}' is a timm-backbone open_clip model, not supported",
                              "use a ViT CLIP with the standard open_clip VisionTransformer")
    missing = [k for k in REQUIRED_KEYS if k not in sd]
    if missing:
        sample = ", ".join(sorted(sd)[:6])
        raise CheckpointError(
            f"'{source}' does not have the open_clip CLIP key layout (missing {', '.join(missing[:3])}; has e.g. {sample})",
            "pass an open_clip / RemoteCLIP / GeoRSCLIP state dict, a SkyCLIP training checkpoint, or a transformers CLIPModel directory",
        )
    conv = sd["visual.conv1.weight"]
    vision_width, _, patch, _ = conv.shape
    n_pos = sd["visual.positional_embedding"].shape[0]
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid + 1 != n_pos:
        raise CheckpointError(f"'{source}': visual.positional_embedding has {n_pos} rows, not 1 + a square grid")
    image_size = grid * patch
    vision_layers = _count_layers(sd, "visual.transformer.resblocks.")
    vision_mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / vision_width
    text_width = sd["token_embedding.weight"].shape[1]
    text_layers = _count_layers(sd, "transformer.resblocks.")
    text_mlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width
    embed_dim = sd["text_projection"].shape[1]
    name = "custom"
    for arch, spec in KNOWN_ARCHS.items():
        if spec == (vision_width, vision_layers, patch, image_size):
            name = arch
    activation, _ = choose_activation(name, activation, preset, source)
    head_width = vision_width // vision_heads if vision_heads else _default_head_width(vision_width)
    return ClipConfig(
        name=name, embed_dim=int(embed_dim), image_size=int(image_size), patch_size=int(patch),
        vision_width=int(vision_width), vision_layers=vision_layers, vision_head_width=int(head_width),
        vision_mlp_ratio=float(vision_mlp), text_width=int(text_width), text_layers=text_layers,
        text_heads=int(text_heads or max(1, text_width // 64)), text_mlp_ratio=float(text_mlp),
        context_length=int(sd["positional_embedding"].shape[0]),
        vocab_size=int(sd["token_embedding.weight"].shape[0]), activation=activation,
    )


def hf_to_open_clip(hf: dict[str, Any]) -> dict[str, Any]:
    """Rename transformers ``CLIPModel`` tensors to open_clip keys (q/k/v fused into in_proj)."""
    import torch

    hf = _strip_prefix(hf, "clip.")
    out: dict[str, Any] = {}

    def tower(src: str, dst: str, n_layers: int) -> None:
        for i in range(n_layers):
            s, d = f"{src}.encoder.layers.{i}", f"{dst}.resblocks.{i}"
            for p in ("weight", "bias"):
                out[f"{d}.attn.in_proj_{p}"] = torch.cat(
                    [hf[f"{s}.self_attn.{x}_proj.{p}"] for x in ("q", "k", "v")], dim=0)
                out[f"{d}.attn.out_proj.{p}"] = hf[f"{s}.self_attn.out_proj.{p}"]
                out[f"{d}.ln_1.{p}"] = hf[f"{s}.layer_norm1.{p}"]
                out[f"{d}.ln_2.{p}"] = hf[f"{s}.layer_norm2.{p}"]
                out[f"{d}.mlp.c_fc.{p}"] = hf[f"{s}.mlp.fc1.{p}"]
                out[f"{d}.mlp.c_proj.{p}"] = hf[f"{s}.mlp.fc2.{p}"]

    v, t = "vision_model", "text_model"
    tower(v, "visual.transformer", _count_layers(hf, f"{v}.encoder.layers."))
    tower(t, "transformer", _count_layers(hf, f"{t}.encoder.layers."))
    out["visual.conv1.weight"] = hf[f"{v}.embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = hf[f"{v}.embeddings.class_embedding"]
    out["visual.positional_embedding"] = hf[f"{v}.embeddings.position_embedding.weight"]
    for p in ("weight", "bias"):
        out[f"visual.ln_pre.{p}"] = hf[f"{v}.pre_layrnorm.{p}"]
        out[f"visual.ln_post.{p}"] = hf[f"{v}.post_layernorm.{p}"]
        out[f"ln_final.{p}"] = hf[f"{t}.final_layer_norm.{p}"]
    out["visual.proj"] = hf["visual_projection.weight"].t().contiguous()
    out["text_projection"] = hf["text_projection.weight"].t().contiguous()
    out["token_embedding.weight"] = hf[f"{t}.embeddings.token_embedding.weight"]
    out["positional_embedding"] = hf[f"{t}.embeddings.position_embedding.weight"]
    out["logit_scale"] = hf["logit_scale"]
    return out


def _load_hf_dir(d: Path, activation: str | None, preset: str | None = None) -> ClipCheckpoint:
    cfg = read_json(d / "config.json")
    if cfg.get("model_type") not in ("clip", None) or "vision_config" not in cfg:
        raise CheckpointError(
            f"'{d}' holds a transformers '{cfg.get('model_type')}' model, not a CLIPModel",
            "pass a CLIPModel directory (model_type 'clip') or an open_clip state dict",
        )
    weights = next((d / n for n in ("model.safetensors", "pytorch_model.bin") if (d / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"'{d}' has a config.json but no model.safetensors or pytorch_model.bin",
                              "copy the weights file into the directory")
    for key in ("vision_config", "text_config"):
        if not isinstance(cfg.get(key, {}), dict):
            raise CheckpointError(f"'{d / 'config.json'}': '{key}' is a JSON {type(cfg[key]).__name__}, not an object",
                                  "restore config.json from the checkpoint's source")
    hf = load_tensor_file(weights)
    validate_hf_clip_state_dict(hf, weights)
    try:
        sd = hf_to_open_clip(hf)
    except KeyError as e:
        raise CheckpointError(f"'{weights}' lacks the CLIPModel tensor {e}", "the checkpoint is incomplete; export it again with save_pretrained") from None
    vc, tc = cfg["vision_config"], cfg.get("text_config", {})
    conf = infer_open_clip_config(sd, "quick_gelu", weights, vision_heads=vc.get("num_attention_heads", 12),
                                  text_heads=tc.get("num_attention_heads", 8))
    act, reason = choose_activation(conf.name, activation, preset, d, hf_act=str(vc.get("hidden_act", "quick_gelu")))
    return ClipCheckpoint(sd, replace(conf, activation=act), "hf_clip", d, reason)


def load_clip_checkpoint(path: str | Path, activation: str | None = None, preset: str | None = None) -> ClipCheckpoint:
    """Read any supported CLIP checkpoint into open_clip keys plus an inferred ``ClipConfig``.

    The activation: ``activation`` if given, else the ``preset`` (remoteclip | georsclip | skyclip |
    openai | laion), else a transformers config's ``hidden_act``, else the preset recognised from the
    released file name, else the family default; ``activation_reason`` says which and why."""
    p = Path(path)
    if activation is not None and activation not in ACTIVATIONS:
        raise CheckpointError(f"unknown activation '{activation}'", f"choose one of {', '.join(ACTIVATIONS)}")
    if preset is not None and preset not in PRESET_RULES:
        raise InputError(f"unknown preset '{preset}'", f"choose one of {', '.join(PRESETS)}")
    if not p.exists():
        raise CheckpointError(f"checkpoint '{p}' does not exist", "check the path")
    if p.is_dir():
        if (p / "config.json").is_file() and not (p / "open_clip_config.json").is_file():
            return _load_hf_dir(p, activation, preset)
        files = [p / n for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")]
        found = next((f for f in files if f.is_file()), None)
        if found is None:
            raise CheckpointError(f"directory '{p}' holds no CLIP weights",
                                  "expected config.json + model.safetensors (transformers) or open_clip_model.safetensors")
        p = found
    raw = load_tensor_file(p)
    layout = "open_clip"
    if "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw, layout = raw["state_dict"], "open_clip_train"
    sd = _strip_prefix(_strip_prefix(raw, "module."), "_orig_mod.")
    if "vision_model.embeddings.patch_embedding.weight" in sd:
        validate_hf_clip_state_dict(sd, p)
        sd, layout = hf_to_open_clip(sd), "hf_clip"
    validate_clip_state_dict(sd, p)  # names bad tensors / blocks
    conf = infer_open_clip_config(sd, "quick_gelu", p)
    act, reason = choose_activation(conf.name, activation, preset, p)
    return ClipCheckpoint(sd, replace(conf, activation=act), layout, p, reason)


def build_open_clip(ckpt: ClipCheckpoint):
    """The open_clip ``CLIP`` module with the checkpoint's weights, in eval mode (fp32)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    c = ckpt.config
    model = CLIP(
        embed_dim=c.embed_dim,
        vision_cfg=CLIPVisionCfg(layers=c.vision_layers, width=c.vision_width, head_width=c.vision_head_width,
                                 mlp_ratio=c.vision_mlp_ratio, patch_size=c.patch_size, image_size=c.image_size),
        text_cfg=CLIPTextCfg(context_length=c.context_length, vocab_size=c.vocab_size, width=c.text_width,
                             heads=c.text_heads, layers=c.text_layers, mlp_ratio=c.text_mlp_ratio),
        quick_gelu=c.activation == "quick_gelu",
    )
    sd = {k: v.float() for k, v in ckpt.state_dict.items() if k != "attn_mask"}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise CheckpointError(
            f"'{ckpt.source}' does not match the inferred {c.name} architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
            "the checkpoint may be truncated or of an unsupported variant",
        )
    return model.eval()
