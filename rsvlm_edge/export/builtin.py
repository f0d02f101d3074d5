"""Seeded random LLaVA models built with the real transformers classes (export side: needs torch +
transformers): the built-in timing model ``builtin:tinyllava-1b`` (``TINYLLAVA_1B``) and, through
``make_hf_model`` / ``make_tokenizer``, the small models the tests build.

``write_hf_llava`` saves a random ``LlavaForConditionalGeneration`` as a transformers directory with
a small byte-level BPE ``tokenizer.json`` (``<unk>``, ``<s>``, ``</s>``, ``<image>``) next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        MistralConfig,
        Qwen2Config,
    )

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


def write_hf_llava(dest: str | Path, spec: TinySpec, dtype: str = "float32"):
    """Write a seeded random transformers ``LlavaForConditionalGeneration`` directory + tokenizer.json
    to ``dest``; returns the model."""
    import torch

    dest = Path(dest)
    model = make_hf_model(spec)
    if dtype == "float16":
        model = model.to(torch.float16)
    model.save_pretrained(dest)
    make_tokenizer(spec.vocab_size - 4).save(str(dest / "tokenizer.json"))
    return model


# ---- built-in models: seeded random weights in the real architectures, exported with our own exporters ----

def build_builtin_clip(name: str, precision: str, out: Path) -> None:
    """Seeded random open_clip weights -> state dict (cached) -> CLIP bundle at ``out``."""
    from ..builtin import BUILTIN_CLIP, cache_dir
    from .clip import export_clip

    arch, act = BUILTIN_CLIP[name]
    ckpt = cache_dir() / f"{name}-seed0.pt"
    if not ckpt.exists():
        import open_clip
        import torch

        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=act == "quick_gelu")
        tmp = ckpt.with_suffix(".pt.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(ckpt)
    export_clip(ckpt, out, precision=precision, activation=act, overwrite=True, n_synthetic_calib=32)


def build_builtin_vlm(name: str, ckpt: Path, bundle: Path, progress=None) -> None:
    """The seeded TinyLlama-1.1B + CLIP-L/14-336 transformers checkpoint (cached) -> fp16 bundle."""
    import os

    from ..builtin import RANDOM_WEIGHTS_NOTE
    from .llava import export_vlm

    step = progress or (lambda _msg: None)
    if not (ckpt / "config.json").is_file():
        step(f"building builtin:{name}: {RANDOM_WEIGHTS_NOTE}")
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        write_hf_llava(tmp, TINYLLAVA_1B, dtype="float16")
        os.replace(tmp, ckpt)
    export_vlm(ckpt, bundle, weights="fp16", overwrite=True, verify=False, progress=step)


if __name__ == "__main__":  # the child process of rsvlm_edge.builtin.builtin_clip_bundle
    import sys

    from ..errors import RsvlmError
    from ..progress import console

    try:
        build_builtin_clip(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
    except RsvlmError as e:
        console.print(f"[bold red]error:[/bold red] {e.message}", highlight=False)
        sys.exit(2)
