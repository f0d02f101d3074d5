#!/usr/bin/env python3
"""Parity report for the CLIP path (the numbers the tests assert on, printed): exported bundles vs
open_clip / transformers fp32 on the same seeded tiny weights, and INT8 vs fp32.

    PYTHONPATH=$PWD:$PWD/tests python bench/parity_clip.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from clip_models import (  # noqa: E402
    LABELS,
    TEXTS,
    cos,
    open_clip_image_embeds,
    open_clip_text_embeds,
    save_bare,
    tiny_hf_clip,
    tiny_open_clip,
)

import rsvlm_edge  # noqa: E402
from rsvlm_edge.export.clip import export_clip, synthetic_rs_images  # noqa: E402
from rsvlm_edge.export.clip_checkpoint import hf_to_open_clip  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as d_s:
        d = Path(d_s)
        model = tiny_open_clip()
        ckpt = save_bare(model, d / "tiny.pt")
        b32 = rsvlm_edge.load(export_clip(ckpt, d / "fp32.rsvlm", max_batch=8).path)
        print("| check | batch | min cosine | max abs diff |\n|---|---:|---:|---:|")
        for bs in (1, 3, 17):
            px = synthetic_rs_images(bs, 64, seed=bs)
            got, ref = b32.encode_images(px, normalize=False), open_clip_image_embeds(model, px)
            print(f"| fp32 image vs open_clip | {bs} | {cos(got, ref).min():.7f} | {np.abs(got - ref).max():.2e} |")
            texts = [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(bs)]
            got, ref = b32.encode_texts(texts, normalize=False), open_clip_text_embeds(model, texts)
            print(f"| fp32 text vs open_clip | {bs} | {cos(got, ref).min():.7f} | {np.abs(got - ref).max():.2e} |")
        hf = tiny_hf_clip()
        hf.save_pretrained(d / "hf")
        torch.save(hf_to_open_clip(hf.state_dict()), d / "oc.pt")
        rh = rsvlm_edge.load(export_clip(d / "hf", d / "hf.rsvlm").path)
        ro = rsvlm_edge.load(export_clip(d / "oc.pt", d / "oc.rsvlm", activation="quick_gelu").path)
        px = synthetic_rs_images(3, 48, seed=2)
        a, b = rh.encode_images(px), ro.encode_images(px)
        print(f"| HF CLIPModel dir vs open_clip format, image | 3 | {cos(a, b).min():.7f} | {np.abs(a - b).max():.2e} |")
        a, b = rh.encode_texts(TEXTS), ro.encode_texts(TEXTS)
        print(f"| HF CLIPModel dir vs open_clip format, text | {len(TEXTS)} | {cos(a, b).min():.7f} | {np.abs(a - b).max():.2e} |")
        for prec in ("fp16", "int8"):
            rt = rsvlm_edge.load(export_clip(ckpt, d / f"{prec}.rsvlm", precision=prec).path)
            px = synthetic_rs_images(64, 64, seed=77)
            c = cos(rt.encode_images(px), b32.encode_images(px))
            agree = (rt.classify(px, LABELS).probs.argmax(1) == b32.classify(px, LABELS).probs.argmax(1)).mean()
            print(f"| {prec} image vs fp32 bundle (64 synthetic, {len(LABELS)} labels) | 64 | {c.min():.5f} "
                  f"(mean {c.mean():.5f}) | top-1 agreement {agree:.1%} |")


if __name__ == "__main__":
    main()
