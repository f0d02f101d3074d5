"""Tiny seeded LLaVA checkpoints for tests and the builtin timing model (needs torch + transformers).

``make_tiny_llava`` builds a random ``LlavaForConditionalGeneration`` with the real transformers
classes and saves it either as a transformers directory (``layout="hf"``) or in the original LLaVA
repo layout (``layout="llava"``: renamed keys, LLaVA config.json, sharded ``.bin`` or
``.safetensors`` with an index json). A small byte-level BPE ``tokenizer.json`` with ``<unk>``,
``<s>``, ``</s>`` and ``<image>`` is written next to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<image>"]  # ids 0, 1, 2, 3
_CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT: What is in this satellite image? Describe the airport, the river and the roads.",
    "[grounding] [refer] [identify] How many ships are in the harbour? There are three planes.",
]


@dataclass(frozen=True)
class TinySpec:
    text_model_type: str = "llama"  # llama | mistral | qwen2
    tie_word_embeddings: bool = False
    vocab_size: int = 320
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_hidden: int = 64  # heads = width / 64, as inferred for LLaVA-layout checkpoints
    vision_layers: int = 3
    vision_intermediate: int = 128
    image_size: int = 32
    patch_size: int = 8
    max_positions: int = 512
    initializer_range: float = 0.2  # large enough that greedy decoding is never decided by near-ties
    seed: int = 0


def make_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def make_hf_model(spec: TinySpec):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, MistralConfig, Qwen2Config

    torch.manual_seed(spec.seed)
    config_class = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[spec.text_model_type]
    text = config_class(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=spec.initializer_range,
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=max(1, spec.vision_hidden // 64),
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=3,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=(spec.image_size // spec.patch_size) ** 2,
        initializer_range=spec.initializer_range,
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # every matrix at the spec scale (transformers inits some to zero or identity)
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, spec.initializer_range)
            elif name.endswith("_proj.bias"):  # Qwen2's qkv bias
                p.normal_(0.0, spec.initializer_range)
    return model


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


# TinyLlama-1.1B decoder + CLIP ViT-L/14-336 vision tower (the builtin timing model).
TINYLLAVA_1B = TinySpec(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_layers=22,
    num_heads=32,
    num_kv_heads=4,
    vision_hidden=1024,
    vision_layers=24,
    vision_intermediate=4096,
    image_size=336,
    patch_size=14,
    max_positions=2048,
    initializer_range=0.02,
)


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
