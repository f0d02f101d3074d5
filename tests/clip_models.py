"""Tiny CLIP models built with the real open_clip / transformers classes (fixed seeds), saved in the
real checkpoint formats, and exported once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TEXTS = ["a satellite photo of dense residential area.", "Airport runway with 3 planes!",
         "it's a baseball-diamond", "storage tanks & harbor's ships", "forest", "a river crossing farmland " * 6]
LABELS = ["airport", "beach", "bridge", "desert", "farmland", "forest", "harbor", "river"]


def tiny_open_clip(seed: int = 0, quick_gelu: bool = True):
    """open_clip CLIP: ViT 64px / patch 16 (4x4 grid), width 128, 2 layers; text width 128, 2 layers."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(64, CLIPVisionCfg(layers=2, width=128, head_width=64, patch_size=16, image_size=64),
                 CLIPTextCfg(context_length=77, vocab_size=49408, width=128, heads=2, layers=2),
                 quick_gelu=quick_gelu)
    with torch.no_grad():  # random init leaves class/pos small; make the towers less degenerate
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.05)
    return model.eval()


def tiny_hf_clip(seed: int = 0):
    """transformers CLIPModel with head width 64 (open_clip state dicts do not record head counts, so
    the open_clip-format copy infers heads = width / 64, as for every released ViT-B/L CLIP)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=1, max_position_embeddings=77, eos_token_id=49407,
                         bos_token_id=49406, pad_token_id=0),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                           image_size=48, patch_size=16),
        projection_dim=48)
    return CLIPModel(cfg).eval()


def openai_normalized(pixels_u8: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W), normalised exactly as open_clip's transform."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.from_numpy(pixels_u8).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)


def open_clip_image_embeds(model, pixels_u8: np.ndarray) -> np.ndarray:
    """Reference: open_clip fp32 on uint8 (B, H, W, 3), normalised exactly as open_clip's transform."""
    with torch.no_grad():
        return model.encode_image(openai_normalized(pixels_u8)).numpy()


def open_clip_text_embeds(model, texts: list[str]) -> np.ndarray:
    import open_clip

    with torch.no_grad():
        return model.encode_text(open_clip.tokenize(texts)).numpy()


def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def save_bare(model, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


# ---- the parity comparisons (asserted by test_clip_export, printed by bench/parity_clip.py) ----------

def numbered_texts(n: int) -> list[str]:
    """``n`` distinct texts cycling through TEXTS."""
    return [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(n)]


def image_parity(rt, model, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(bundle, open_clip) unnormalised image embeddings of ``batch`` seeded 64px synthetic images."""
    from rsvlm_edge.export.clip import synthetic_rs_images

    px = synthetic_rs_images(batch, 64, seed=batch)
    return rt.encode_images(px, normalize=False), open_clip_image_embeds(model, px)


def text_parity(rt, model, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(bundle, open_clip) unnormalised text embeddings of ``numbered_texts(batch)``."""
    texts = numbered_texts(batch)
    return rt.encode_texts(texts, normalize=False), open_clip_text_embeds(model, texts)


def export_hf_and_open_clip(hf, d: Path):
    """The same transformers CLIPModel exported as an HF directory and as an open_clip state dict:
    (HF bundle, open_clip bundle)."""
    from rsvlm_edge.export.clip import export_clip
    from rsvlm_edge.export.clip_checkpoint import hf_to_open_clip

    hf.save_pretrained(d / "hf")
    b_hf = export_clip(d / "hf", d / "hf.rsvlm")
    torch.save(hf_to_open_clip(hf.state_dict()), d / "oc.pt")
    return b_hf, export_clip(d / "oc.pt", d / "oc.rsvlm", activation="quick_gelu")


def top1_agreement(rt_a, rt_b, pixels_u8: np.ndarray) -> float:
    """Fraction of images whose zero-shot top-1 label over LABELS is the same for both runtimes."""
    top_a = rt_a.classify(pixels_u8, LABELS).probs.argmax(1)
    return float((top_a == rt_b.classify(pixels_u8, LABELS).probs.argmax(1)).mean())
