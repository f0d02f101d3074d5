"""Reading LLaVA-class checkpoints (export time only: imports torch).

Accepted layouts, detected from the tensor names:

* ``llava``: the original LLaVA repo (GeoChat, RS-LLaVA, VHM): ``model.embed_tokens``,
  ``model.layers.N.*``, ``model.norm``, ``lm_head``, ``model.mm_projector.{0,2}`` (or
  ``model.mm_projector.weight`` for a linear projector) and
  ``model.vision_tower.vision_tower.vision_model.*``. Config keys: ``mm_vision_select_layer``,
  ``mm_vision_select_feature``, ``mm_projector_type``, ``image_aspect_ratio``. Such a config has no
  CLIP vision config, so the vision tower shape is inferred from the tensors: width from the patch
  embedding, patch size from its kernel, layers by counting, image size from the number of
  position embeddings, heads = width / 64 (true for every OpenAI CLIP ViT), QuickGELU. GeoChat
  (model_type or architectures naming GeoChat) is exported at 504 px, its position embeddings
  interpolated bicubic with align_corners=True as GeoChat's clip_encoder does. Checkpoints saved
  without the vision tower take it from a CLIP model directory (``vision_tower=``).
* ``hf``: transformers ``LlavaForConditionalGeneration`` directories, as saved by 4.x and 5.x
  (``language_model.model.*`` / ``language_model.lm_head`` / ``vision_tower.[vision_model.]*`` /
  ``multi_modal_projector.linear_{1,2}``) and the in-memory 5.x names (``model.language_model.*``,
  ``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``lm_head``).

Weights come from ``model.safetensors``, ``pytorch_model.bin`` or sharded files with an index
json. ``.bin`` files are loaded with ``torch.load(weights_only=True)`` only.

Everything is returned under canonical names: decoder ``embed_tokens.weight``,
``layers.N.{q,k,v,o}_proj.{weight,bias}``, ``layers.N.{gate,up,down}_proj.weight``,
``layers.N.{input,post_attention}_layernorm.weight``, ``norm.weight``, ``lm_head.weight``;
vision = transformers ``CLIPVisionModel`` names (``embeddings.*``, ``pre_layrnorm.*``,
``encoder.layers.N.*``); projector ``fc1.*`` [``fc2.*``].
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..images import OPENAI_MEAN, OPENAI_STD
from ..models.llava.config import DecoderConfig, VisionConfig, VlmConfig

GEOCHAT_IMAGE_SIZE = 504  # GeoChat's clip_encoder interpolates CLIP-L/14-336 to 504 px (36x36)

_LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    # layout -> role -> prefixes (first match wins)
    "llava": {
        "decoder": ("model.",),
        "lm_head": ("lm_head.",),
        "projector": ("model.mm_projector.",),
        "vision": ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower.vision_tower."),
    },
    "hf": {
        "decoder": ("language_model.model.", "model.language_model."),
        "lm_head": ("language_model.lm_head.", "lm_head."),
        "projector": ("multi_modal_projector.", "model.multi_modal_projector."),
        "vision": (
            "vision_tower.vision_model.",
            "vision_tower.",
            "model.vision_tower.vision_model.",
            "model.vision_tower.",
        ),
    },
}

_DECODER_RENAMES = (
    (re.compile(r"^layers\.(\d+)\.self_attn\.([qkvo])_proj\."), r"layers.\1.\2_proj."),
    (re.compile(r"^layers\.(\d+)\.mlp\.(gate|up|down)_proj\."), r"layers.\1.\2_proj."),
)


@dataclass
class VlmCheckpoint:
    """A checkpoint read into canonical names (torch tensors) plus what the bundle needs."""

    source: Path
    layout: str
    config: VlmConfig
    decoder: Mapping[str, Any]  # a dict, or rotate.RotatedDecoder after export --rotate
    vision: dict[str, Any]
    projector: dict[str, Any]
    preprocess: dict[str, Any]
    template: str
    notes: list[str] = field(default_factory=list)


def read_tensors(ckpt_dir: Path) -> dict[str, Any]:
    """All tensors of a checkpoint directory (single file or shards with an index json).

    A shard index must be a JSON object whose ``weight_map`` maps tensor names to file names inside
    the checkpoint directory (no absolute paths, no '..', no symlinks leaving it); every tensor is
    read from exactly one shard."""
    from .validate import check_names, checkpoint_file

    candidates = [
        ("model.safetensors.index.json", None),
        ("pytorch_model.bin.index.json", None),
        (None, "model.safetensors"),
        (None, "pytorch_model.bin"),
    ]
    for index_name, single in candidates:
        if index_name and (ckpt_dir / index_name).is_file():
            index_path = checkpoint_file(ckpt_dir, index_name, f"checkpoint directory '{ckpt_dir}'")
            weight_map = _read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                kind = "missing" if weight_map is None else f"a JSON {type(weight_map).__name__}"
                raise CheckpointError(
                    f"{index_path} is not a valid shard index ('weight_map' is {kind}, expected an object "
                    "mapping tensor names to shard files)",
                    "re-download the checkpoint's index json",
                )
            check_names(weight_map, index_path)
            shards = {}
            for shard in weight_map.values():
                if shard not in shards:
                    shards[shard] = checkpoint_file(ckpt_dir, shard, index_path)
            tensors: dict[str, Any] = {}
            origin: dict[str, str] = {}
            for shard in sorted(shards):
                part = _read_file(shards[shard])
                for name in part:
                    if name in origin:
                        raise CheckpointError(
                            f"tensor '{name}' is in both '{origin[name]}' and '{shard}' of {index_path}",
                            "re-download the checkpoint (shards from different versions are mixed)",
                        )
                    origin[name] = shard
                tensors.update(part)
            missing = set(weight_map) - tensors.keys()
            if missing:
                raise CheckpointError(
                    f"{index_path} lists {len(missing)} tensors its shards do not contain (e.g. {sorted(missing)[0]})",
                    "re-download the checkpoint",
                )
            return tensors
        if single and (ckpt_dir / single).is_file():
            return _read_file(checkpoint_file(ckpt_dir, single, f"checkpoint directory '{ckpt_dir}'"))
    found = sorted(p.name for p in ckpt_dir.iterdir())[:10]
    raise CheckpointError(
        f"no weights in '{ckpt_dir}' (looked for model.safetensors, pytorch_model.bin and their *.index.json; found {found})",
        "point at the checkpoint directory that holds config.json and the weight files",
    )


def _read_file(path: Path) -> dict[str, Any]:
    """One weight file: name -> tensor (``torch_io.load_tensor_file`` refuses non-tensor values,
    integer or non-finite weights and wrong-rank tensors, naming them)."""
    from .torch_io import load_tensor_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint shard '{path}' is missing", "re-download the checkpoint (all shards)")
    obj = load_tensor_file(path)
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return dict(obj)


def detect_layout(names: list[str]) -> str:
    if any(n.startswith("model.mm_projector.") for n in names):
        return "llava"
    if any(n.startswith(("language_model.model.", "model.language_model.")) for n in names):
        return "hf"
    raise CheckpointError(
        f"unknown checkpoint key layout (first keys: {sorted(names)[:4]})",
        "expected an original LLaVA checkpoint (model.mm_projector.*) or a transformers "
        "LlavaForConditionalGeneration directory (language_model.*, multi_modal_projector.*)",
    )


def _take(tensors: dict[str, Any], prefixes: tuple[str, ...], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    for prefix in prefixes:
        part = {
            k[len(prefix) :]: v
            for k, v in tensors.items()
            if k.startswith(prefix) and not any(k.startswith(e) for e in exclude)
        }
        if part:
            return part
    return {}


def split_parts(tensors: dict[str, Any], layout: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(decoder, vision, projector) under canonical names."""
    spec = _LAYOUTS[layout]
    exclude = ("model.mm_projector.", "model.vision_tower.", "model.multi_modal_projector.")
    decoder = _take(tensors, spec["decoder"], exclude)
    if decoder and all(k.startswith("language_model.") for k in decoder):  # 5.x in-memory nesting
        decoder = {k[len("language_model.") :]: v for k, v in decoder.items()}
    out: dict[str, Any] = {}
    for name, value in decoder.items():
        for pattern, repl in _DECODER_RENAMES:
            name = pattern.sub(repl, name)
        out[name] = value
    for name, value in _take(tensors, spec["lm_head"]).items():
        out[f"lm_head.{name}"] = value
    vision = _take(tensors, spec["vision"])
    projector_raw = _take(tensors, spec["projector"])
    projector: dict[str, Any] = {}
    for name, value in projector_raw.items():
        head, _, leaf = name.rpartition(".")
        if head == "":  # linear projector saved as mm_projector.{weight,bias}
            projector[f"fc1.{leaf}"] = value
        elif head.isdigit():  # nn.Sequential(Linear, GELU, Linear): 0 -> fc1, 2 -> fc2
            projector[f"fc{int(head) // 2 + 1}.{leaf}"] = value
        elif head.startswith("linear_"):
            projector[f"fc{head[len('linear_'):]}.{leaf}"] = value
        else:
            raise CheckpointError(f"unknown projector tensor '{name}'", "only linear and mlp2x_gelu projectors are supported")
    return out, vision, projector


_REQUIRED = object()


def _cfg_int(cfg: dict[str, Any], key: str, default: Any = _REQUIRED, minimum: int | None = 1,
             where: str = "config.json") -> int:
    """An integer setting of a config, refused with the key named when absent or not an integer."""
    value = cfg.get(key, default)
    if value is _REQUIRED:
        raise CheckpointError(f"{where} has no '{key}'", "restore the checkpoint's config.json")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        want = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise CheckpointError(f"{where}: '{key}' is {value!r:.60}, expected {want}", "restore the checkpoint's config.json")
    return value


def _cfg_float(cfg: dict[str, Any], key: str, default: float, where: str = "config.json") -> float:
    """A positive finite float setting of a config."""
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{where}: '{key}' is {value!r:.60}, expected a positive finite number",
                              "restore the checkpoint's config.json")
    return float(value)


def _decoder_config(cfg: dict[str, Any], decoder: dict[str, Any]) -> DecoderConfig:
    from .validate import block_indices

    model_type = cfg.get("model_type", "llama")
    if model_type not in ("llama", "mistral", "qwen2"):
        # LLaVA repos name their own model_type (llava, llava_llama, geochat); the decoder is LLaMA.
        model_type = "llama"
    hidden = _cfg_int(cfg, "hidden_size")
    heads = _cfg_int(cfg, "num_attention_heads")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise CheckpointError(f"config.json: rope settings are {rope!r:.60}, expected an object",
                              "restore the checkpoint's config.json")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise CheckpointError(
            f"RoPE scaling type '{rope_type}' is not supported yet", "use a checkpoint with plain RoPE"
        )
    theta = _cfg_float(rope, "rope_theta", _cfg_float(cfg, "rope_theta", 10000.0))
    eos = cfg.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    bos = cfg.get("bos_token_id")
    for key, value in (("bos_token_id", bos), ("eos_token_id", eos)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise CheckpointError(f"config.json: '{key}' is {value!r:.60}, expected a token id",
                                  "restore the checkpoint's config.json")
    head_dim = cfg.get("head_dim") or None
    dc = DecoderConfig(
        model_type=model_type,
        vocab_size=_cfg_int(cfg, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_cfg_int(cfg, "intermediate_size"),
        num_layers=_cfg_int(cfg, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=_cfg_int(cfg, "num_key_value_heads") if cfg.get("num_key_value_heads") is not None else heads,
        head_dim=_cfg_int(cfg, "head_dim") if head_dim is not None else hidden // heads,
        rms_norm_eps=_cfg_float(cfg, "rms_norm_eps", 1e-6),
        rope_theta=theta,
        max_position_embeddings=_cfg_int(cfg, "max_position_embeddings", 2048),
        attention_bias="layers.0.q_proj.bias" in decoder,
        bos_token_id=bos,
        eos_token_id=eos,
    )
    if dc.num_heads % dc.num_kv_heads:
        raise CheckpointError(f"config.json: num_attention_heads {dc.num_heads} is not a multiple of "
                              f"num_key_value_heads {dc.num_kv_heads}", "restore the checkpoint's config.json")
    if dc.head_dim < 1:
        raise CheckpointError(f"config.json: hidden_size {hidden} / num_attention_heads {heads} gives head_dim 0",
                              "restore the checkpoint's config.json")
    expect = {
        "embed_tokens.weight": (dc.vocab_size, dc.hidden_size),
        "layers.0.q_proj.weight": (dc.num_heads * dc.head_dim, dc.hidden_size),
        "layers.0.k_proj.weight": (dc.num_kv_heads * dc.head_dim, dc.hidden_size),
        "layers.0.gate_proj.weight": (dc.intermediate_size, dc.hidden_size),
        "norm.weight": (dc.hidden_size,),
    }
    for name, shape in expect.items():
        if name not in decoder:
            raise CheckpointError(f"decoder tensor '{name}' is missing from the checkpoint", "re-download the checkpoint")
        if tuple(decoder[name].shape) != shape:
            raise CheckpointError(
                f"decoder tensor '{name}' has shape {tuple(decoder[name].shape)}, config.json implies {shape}",
                "the config.json does not belong to these weights",
            )
    layers = set(block_indices(decoder, "layers.", "decoder layer", "the checkpoint"))
    if layers != set(range(dc.num_layers)):
        raise CheckpointError(
            f"checkpoint has decoder layers {sorted(layers)[:3]}..{max(layers, default=-1)}, config.json says {dc.num_layers}",
            "re-download the checkpoint (a shard may be missing)",
        )
    return dc


def infer_vision_config(
    vision: dict[str, Any], vcfg: dict[str, Any] | None, select_layer: int, select_feature: str, image_size: int | None
) -> tuple[VisionConfig, int]:
    """Vision config (from ``vcfg`` when given, else from tensor shapes) and the checkpoint's
    own position-embedding grid. ``image_size`` overrides the resolution (pos-emb interpolation)."""
    from .validate import block_indices

    try:
        patch_w = vision["embeddings.patch_embedding.weight"]
        pos = vision["embeddings.position_embedding.weight"]
    except KeyError:
        raise CheckpointError(
            "the checkpoint has no vision tower weights (LLaVA-1.5 style checkpoints load CLIP separately)",
            "pass --vision-tower DIR with a local copy of the CLIP model named by mm_vision_tower",
        ) from None
    width, channels, patch, patch_w2 = patch_w.shape  # 4-D: checked when the file was read
    if channels != 3 or patch != patch_w2 or min(width, patch) < 1:
        raise CheckpointError(f"vision tensor 'embeddings.patch_embedding.weight' has shape {tuple(patch_w.shape)}, "
                              "expected (width, 3, patch, patch)", "the checkpoint is corrupt; restore it from its source")
    if pos.dim() != 2 or pos.shape[0] < 2:
        raise CheckpointError(f"vision tensor 'embeddings.position_embedding.weight' has shape {tuple(pos.shape)}, "
                              "expected (1 + grid*grid, width)", "the checkpoint is corrupt; restore it from its source")
    grid0 = math.isqrt(pos.shape[0] - 1)
    if grid0 * grid0 != pos.shape[0] - 1:
        raise CheckpointError(f"vision position embedding has {pos.shape[0]} rows, not 1 + a square grid")
    layers = len(block_indices(vision, "encoder.layers.", "vision layer", "the checkpoint"))
    if layers == 0 or "encoder.layers.0.mlp.fc1.weight" not in vision:
        raise CheckpointError("the vision tower has no transformer layers (vision tensor "
                              "'encoder.layers.0.mlp.fc1.weight' is missing)", "re-download the checkpoint")
    if vcfg is not None and not isinstance(vcfg, dict):
        raise CheckpointError(f"the vision config is a JSON {type(vcfg).__name__}, expected an object",
                              "restore the checkpoint's config.json")
    vcfg = vcfg or {}
    size = image_size or _cfg_int(vcfg, "image_size", int(grid0 * patch), where="vision config")
    if size % patch:
        raise CheckpointError(f"image size {size} is not a multiple of the patch size {patch}")
    if not -layers <= select_layer <= layers:
        raise CheckpointError(f"vision select layer {select_layer} is out of range for {layers} layers")
    heads = _cfg_int(vcfg, "num_attention_heads", max(1, int(width) // 64), where="vision config")
    if width % heads:
        raise CheckpointError(f"vision config: width {width} is not a multiple of num_attention_heads {heads}",
                              "restore the checkpoint's config.json")
    act = vcfg.get("hidden_act", "quick_gelu")
    from transformers.activations import ACT2FN

    if not isinstance(act, str) or act not in ACT2FN:
        raise CheckpointError(f"vision config: hidden_act {act!r:.40} is not an activation transformers knows",
                              "restore the checkpoint's config.json (CLIP towers use quick_gelu)")
    return (
        VisionConfig(
            hidden_size=int(width),
            intermediate_size=int(vision["encoder.layers.0.mlp.fc1.weight"].shape[0]),
            num_layers=layers,
            num_heads=heads,
            patch_size=int(patch),
            image_size=int(size),
            layer_norm_eps=_cfg_float(vcfg, "layer_norm_eps", 1e-5, where="vision config"),
            hidden_act=str(act),
            select_layer=int(select_layer),
            select_feature=select_feature,
        ),
        grid0,
    )


_CONFIG_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "max_position_embeddings", "head_dim", "image_size", "patch_size")


def _check_config_types(cfg: dict[str, Any], where: str) -> None:
    """The shape settings a config gives are positive integers, eps/theta positive finite numbers and
    RoPE settings an object: checked before transformers sees them, so the key is named."""
    for key in _CONFIG_INTS:
        if cfg.get(key) is not None:
            _cfg_int(cfg, key, where=where)
    for key in ("rms_norm_eps", "layer_norm_eps", "rope_theta"):
        if cfg.get(key) is not None:
            _cfg_float(cfg, key, 1.0, where=where)
    for key in ("rope_scaling", "rope_parameters"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise CheckpointError(f"{where}: rope settings are {cfg[key]!r:.60}, expected an object",
                                  "restore the checkpoint's config.json")


def _complete_llava_config(ckpt_dir: Path, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(text_config, vision_config) with transformers' defaults filled in: configs saved as a
    diff against the defaults (e.g. llava-hf/llava-1.5-7b-hf) omit hidden_size, layers, heads..."""
    if not isinstance(cfg.get("text_config"), dict):
        raise CheckpointError(f"{ckpt_dir / 'config.json'} has no text_config", "expected a LlavaConfig config.json")
    _check_config_types(cfg["text_config"], "config.json text_config")
    if cfg.get("vision_config") is not None:
        if not isinstance(cfg["vision_config"], dict):
            raise CheckpointError(f"{ckpt_dir / 'config.json'}: vision_config is not an object",
                                  "expected a LlavaConfig config.json")
        _check_config_types(cfg["vision_config"], "config.json vision_config")
    from transformers import AutoConfig

    try:
        full = AutoConfig.from_pretrained(str(ckpt_dir))
    except Exception as e:  # transformers / huggingface_hub raise many types for a bad config
        raise CheckpointError(
            f"{ckpt_dir / 'config.json'} is not a config transformers can read ({e.__class__.__name__}: {str(e)[:200]})",
            "expected a LlavaForConditionalGeneration config (model_type 'llava')",
        ) from None
    return full.text_config.to_dict(), full.vision_config.to_dict()


def _complete_llama_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """An original LLaVA config.json (LLaMA keys + mm_* keys) with LlamaConfig's defaults filled in."""
    from transformers import LlamaConfig

    _check_config_types(cfg, "config.json")
    keys = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "auto_map")}
    try:
        return LlamaConfig(**keys).to_dict()
    except Exception as e:  # transformers / huggingface_hub raise many types for a bad config
        raise CheckpointError(f"config.json has invalid LLaMA settings ({e.__class__.__name__}: {str(e)[:200]})",
                              "restore the checkpoint's config.json") from None


def _read_json(path: Path) -> dict[str, Any]:
    from .torch_io import read_json

    return read_json(path)


def read_vision_tower(src: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """CLIP vision weights (canonical names) and vision config from a transformers CLIPModel or
    CLIPVisionModel directory (e.g. a local copy of openai/clip-vit-large-patch14-336)."""
    tower_dir = Path(src)
    if not (tower_dir / "config.json").is_file():
        raise CheckpointError(f"vision tower '{tower_dir}' has no config.json", "pass a transformers CLIP model directory")
    cfg = _read_json(tower_dir / "config.json")
    tensors = read_tensors(tower_dir)
    vision = _take(tensors, ("vision_model.",)) or {
        k: v for k, v in tensors.items() if k.startswith(("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm."))
    }
    if not vision:
        raise CheckpointError(f"'{tower_dir}' holds no CLIP vision weights (vision_model.*)", "pass a CLIP model directory")
    return vision, cfg.get("vision_config", cfg)


def load_checkpoint(
    src: str | Path, image_size: int | None = None, template: str | None = None, vision_tower: str | Path | None = None
) -> VlmCheckpoint:
    """Read a LLaVA-class checkpoint directory into canonical tensors and a ``VlmConfig``.

    ``vision_tower``: a CLIP model directory to take the vision weights from, for checkpoints
    saved without them (LLaVA loads ``mm_vision_tower`` separately)."""
    ckpt_dir = Path(src)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint directory '{ckpt_dir}' does not exist", "pass the directory holding config.json")
    if not (ckpt_dir / "config.json").is_file():
        raise CheckpointError(f"'{ckpt_dir}' has no config.json", "pass the checkpoint directory (with config.json)")
    cfg = _read_json(ckpt_dir / "config.json")  # refuses anything but a JSON object
    tensors = read_tensors(ckpt_dir)
    layout = detect_layout(list(tensors))
    decoder, vision, projector = split_parts(tensors, layout)
    notes: list[str] = []

    if layout == "hf":
        text_cfg, vision_cfg = _complete_llava_config(ckpt_dir, cfg)
        select_layer = cfg.get("vision_feature_layer", -2)
        if isinstance(select_layer, list):
            raise CheckpointError("multi-layer vision_feature_layer is not supported", "use a single select layer")
        select_layer = _cfg_int(cfg, "vision_feature_layer", -2, minimum=None)
        select_feature = "patch" if cfg.get("vision_feature_select_strategy", "default") == "default" else "cls_patch"
        proj_act = cfg.get("projector_hidden_act", "gelu")
        if proj_act != "gelu":
            raise CheckpointError(f"projector activation '{proj_act}' is not supported", "only gelu projectors")
        projector_type = "mlp2x_gelu" if "fc2.weight" in projector else "linear"
        aspect = "resize"
        dec_cfg = text_cfg
        if "tie_word_embeddings" not in dec_cfg and cfg.get("tie_word_embeddings"):
            dec_cfg = {**dec_cfg, "tie_word_embeddings": True}
    else:
        vision_cfg = None
        select_layer = _cfg_int(cfg, "mm_vision_select_layer", -2, minimum=None)
        select_feature = cfg.get("mm_vision_select_feature", "patch")
        projector_type = cfg.get("mm_projector_type", "linear")
        aspect = cfg.get("image_aspect_ratio", "square")
        dec_cfg = _complete_llama_config(cfg)
        archs = cfg.get("architectures") or []
        is_geochat = "geochat" in str(cfg.get("model_type", "")).lower() or any(
            "geochat" in str(a).lower() for a in (archs if isinstance(archs, list) else [archs])
        )
        if is_geochat and image_size is None:
            image_size = GEOCHAT_IMAGE_SIZE
            notes.append("GeoChat: vision position embeddings interpolated to 504 px (36x36), as GeoChat's clip_encoder")
    if projector_type not in ("linear", "mlp2x_gelu"):
        raise CheckpointError(f"projector type {projector_type!r:.60} is not supported", "supported: linear, mlp2x_gelu")
    if select_feature not in ("patch", "cls_patch"):
        raise CheckpointError(f"vision select feature {select_feature!r:.60} is not supported", "supported: patch, cls_patch")
    if aspect not in ("square", "pad", "resize", None):
        raise CheckpointError(f"image_aspect_ratio {aspect!r:.60} is not supported", "supported: square, pad")

    if "lm_head.weight" not in decoder:
        if dec_cfg.get("tie_word_embeddings") and "embed_tokens.weight" in decoder:
            decoder["lm_head.weight"] = decoder["embed_tokens.weight"]
        else:
            raise CheckpointError("the checkpoint has no lm_head weight", "re-download the checkpoint")
    dc = _decoder_config(dec_cfg, decoder)
    if vision_tower is not None:
        vision, vision_cfg = read_vision_tower(vision_tower)
        notes.append(f"vision tower weights from {vision_tower}")
    vc, grid0 = infer_vision_config(vision, vision_cfg, select_layer, select_feature, image_size)
    if vc.grid != grid0:
        vision = dict(vision)
        vision["embeddings.position_embedding.weight"] = interpolate_pos_embedding(
            vision["embeddings.position_embedding.weight"], vc.grid
        )
        notes.append(f"vision position embeddings interpolated {grid0}x{grid0} -> {vc.grid}x{vc.grid} (bicubic, align_corners)")
    last = "fc2.weight" if projector_type == "mlp2x_gelu" else "fc1.weight"
    for name in ("fc1.weight", last):
        if name not in projector:
            raise CheckpointError(f"projector tensor '{name}' is missing from the checkpoint "
                                  f"(mm_projector_type {projector_type})", "re-download the checkpoint")
    if projector["fc1.weight"].shape[1] != vc.hidden_size:
        raise CheckpointError(
            f"projector input width {projector['fc1.weight'].shape[1]} != vision width {vc.hidden_size}",
            "the projector and vision tower do not belong together",
        )
    if projector[last].shape[0] != dc.hidden_size:
        raise CheckpointError(
            f"projector output width {projector[last].shape[0]} != decoder width {dc.hidden_size}",
            "the projector and decoder do not belong together",
        )
    from .validate import validate_llava_parts

    validate_llava_parts(decoder, vision, projector, dc, vc, projector_type, ckpt_dir)

    mean, std = OPENAI_MEAN, OPENAI_STD
    pp_path = ckpt_dir / "preprocessor_config.json"
    if pp_path.is_file():
        pp = _read_json(pp_path)
        mean = _norm_stats(pp, "image_mean", mean, pp_path)
        std = _norm_stats(pp, "image_std", std, pp_path)
        if min(std) <= 0:
            raise CheckpointError(f"{pp_path}: image_std {list(std)} has a value <= 0", "restore preprocessor_config.json")
    preprocess = {
        "image_size": vc.image_size,
        # transformers' CLIPImageProcessor (LLaVA's processor) crops at (margin // 2).
        "crop_rounding": "floor",
        "pad_to_square": aspect == "pad",
        # LLaVA / GeoChat expand2square: tuple(int(x * 255) for x in image_processor.image_mean).
        "fill_rgb": [int(m * 255) for m in mean],
        "mean": list(mean),
        "std": list(std),
    }
    return VlmCheckpoint(
        source=ckpt_dir,
        layout=layout,
        config=VlmConfig(decoder=dc, vision=vc, projector_type=projector_type),
        decoder=decoder,
        vision=vision,
        projector=projector,
        preprocess=preprocess,
        template=template or "llava_v1",
        notes=notes,
    )


def _norm_stats(pp: dict[str, Any], key: str, default: tuple[float, ...], where: Path) -> tuple[float, ...]:
    """Three finite numbers (image_mean / image_std of a preprocessor config)."""
    value = pp.get(key, default)
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise CheckpointError(f"{where}: '{key}' is {value!r:.80}, expected three finite numbers (R, G, B)",
                              "restore preprocessor_config.json from the checkpoint source")
    return tuple(float(v) for v in value)


def interpolate_pos_embedding(pos: Any, grid: int) -> Any:
    """CLS row kept; the square patch grid resized bicubic with align_corners=True (GeoChat)."""
    import torch

    cls_row, patches = pos[:1], pos[1:]
    g0 = math.isqrt(patches.shape[0])
    width = patches.shape[1]
    img = patches.float().T.reshape(1, width, g0, g0)
    img = torch.nn.functional.interpolate(img, size=grid, mode="bicubic", align_corners=True)
    return torch.cat([cls_row.float(), img.reshape(width, grid * grid).T], dim=0).to(pos.dtype)
