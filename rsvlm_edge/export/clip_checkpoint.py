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

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .torch_io import load_tensor_file, read_json

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
# LAION-trained families use nn.GELU; OpenAI-initialised ones (RemoteCLIP, GeoRSCLIP-B/32, SkyCLIP) QuickGELU.
GELU_BY_DEFAULT = ("ViT-H-14", "ViT-bigG-14")
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
                           vision_heads: int | None = None, text_heads: int | None = None) -> ClipConfig:
    """Infer the architecture from open_clip-key tensors (heads: from args, else open_clip's defaults)."""
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
    if activation is None:
        activation = "gelu" if name in GELU_BY_DEFAULT else "quick_gelu"
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"unknown activation '{activation}'", f"choose one of {', '.join(ACTIVATIONS)}")
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


def _load_hf_dir(d: Path, activation: str | None) -> ClipCheckpoint:
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
    hf = load_tensor_file(weights)
    try:
        sd = hf_to_open_clip(hf)
    except KeyError as e:
        raise CheckpointError(f"'{weights}' lacks the CLIPModel tensor {e}", "the checkpoint is incomplete; export it again with save_pretrained") from None
    vc, tc = cfg["vision_config"], cfg.get("text_config", {})
    act_hf = vc.get("hidden_act", "quick_gelu")
    act = activation or ("quick_gelu" if act_hf == "quick_gelu" else "gelu")
    conf = infer_open_clip_config(sd, act, weights, vision_heads=vc.get("num_attention_heads", 12),
                                  text_heads=tc.get("num_attention_heads", 8))
    return ClipCheckpoint(sd, conf, "hf_clip", d)


def load_clip_checkpoint(path: str | Path, activation: str | None = None) -> ClipCheckpoint:
    """Read any supported CLIP checkpoint into open_clip keys plus an inferred ``ClipConfig``."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint '{p}' does not exist", "check the path")
    if p.is_dir():
        if (p / "config.json").is_file() and not (p / "open_clip_config.json").is_file():
            return _load_hf_dir(p, activation)
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
        sd, layout = hf_to_open_clip(sd), "hf_clip"
    return ClipCheckpoint(sd, infer_open_clip_config(sd, activation, p), layout, p)


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
