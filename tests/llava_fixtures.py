"""Tiny seeded LLaVA checkpoints for the tests: the package's own model maker
(``rsvlm_edge.export.builtin``) saved as a transformers directory (``layout="hf"``) or in the
original LLaVA repo layout (``layout="llava"``: renamed keys, LLaVA config.json, sharded ``.bin`` or
``.safetensors`` with an index json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rsvlm_edge.export.builtin import TinySpec, make_hf_model, make_tokenizer

__all__ = ["TinySpec", "make_hf_model", "make_tokenizer", "make_tiny_llava", "save_llava_layout", "_llava_name"]


def _llava_name(name: str) -> str:
    for old, new in (
        ("model.language_model.", "model."),
        ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
        ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
        ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ):
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def save_llava_layout(model, dest: Path, fmt: str = "bin", shards: int = 2, model_type: str = "llava") -> None:
    """Save ``model`` as an original LLaVA repo checkpoint (sharded, with an index json)."""
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    state = {_llava_name(k): v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    per = -(-len(names) // shards)
    ext = "bin" if fmt == "bin" else "safetensors"
    stem = "pytorch_model" if fmt == "bin" else "model"
    weight_map: dict[str, str] = {}
    for i in range(shards):
        part = {n: state[n] for n in names[i * per : (i + 1) * per]}
        fname = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        if fmt == "bin":
            torch.save(part, dest / fname)
        else:
            from safetensors.torch import save_file

            save_file(part, str(dest / fname))
        weight_map.update({n: fname for n in part})
    (dest / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    tc = model.config.text_config
    vc = model.config.vision_config
    config: dict[str, Any] = {
        "architectures": ["GeoChatLlamaForCausalLM" if model_type == "geochat" else "LlavaLlamaForCausalLM"],
        "model_type": model_type,
        "vocab_size": tc.vocab_size,
        "hidden_size": tc.hidden_size,
        "intermediate_size": tc.intermediate_size,
        "num_hidden_layers": tc.num_hidden_layers,
        "num_attention_heads": tc.num_attention_heads,
        "num_key_value_heads": tc.num_key_value_heads,
        "max_position_embeddings": tc.max_position_embeddings,
        "rms_norm_eps": tc.rms_norm_eps,
        "rope_theta": 10000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": vc.hidden_size,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad",
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2))


def make_tiny_llava(
    dest: str | Path,
    layout: str = "hf",
    fmt: str = "bin",
    spec: TinySpec = TinySpec(),
    model_type: str = "llava",
    dtype: str = "float32",
):
    """Write a random LLaVA checkpoint + tokenizer.json to ``dest``; returns the HF model."""
    import torch

    dest = Path(dest)
    model = make_hf_model(spec)
    if dtype == "float16":
        model = model.to(torch.float16)
    if layout == "hf":
        model.save_pretrained(dest)
    elif layout == "llava":
        save_llava_layout(model, dest, fmt=fmt, model_type=model_type)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    make_tokenizer(spec.vocab_size - 4).save(str(dest / "tokenizer.json"))
    return model
