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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from clip_models import (  # noqa: E402
    LABELS,
    TEXTS,
    cos,
    export_hf_and_open_clip,
    image_parity,
    save_bare,
    text_parity,
    tiny_hf_clip,
    tiny_open_clip,
    top1_agreement,
)

import rsvlm_edge  # noqa: E402
from rsvlm_edge.export.clip import export_clip, synthetic_rs_images  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as d_s:
        d = Path(d_s)
        model = tiny_open_clip()
        ckpt = save_bare(model, d / "tiny.pt")
        b32 = rsvlm_edge.load(export_clip(ckpt, d / "fp32.rsvlm", max_batch=8).path)
        print("| check | batch | min cosine | max abs diff |\n|---|---:|---:|---:|")
        for bs in (1, 3, 17):
            got, ref = image_parity(b32, model, bs)
            print(f"| fp32 image vs open_clip | {bs} | {cos(got, ref).min():.7f} | {np.abs(got - ref).max():.2e} |")
            got, ref = text_parity(b32, model, bs)
            print(f"| fp32 text vs open_clip | {bs} | {cos(got, ref).min():.7f} | {np.abs(got - ref).max():.2e} |")
        rh, ro = (rsvlm_edge.load(b.path) for b in export_hf_and_open_clip(tiny_hf_clip(), d))
        px = synthetic_rs_images(3, 48, seed=2)
        a, b = rh.encode_images(px), ro.encode_images(px)
        print(f"| HF CLIPModel dir vs open_clip format, image | 3 | {cos(a, b).min():.7f} | {np.abs(a - b).max():.2e} |")
        a, b = rh.encode_texts(TEXTS), ro.encode_texts(TEXTS)
        print(f"| HF CLIPModel dir vs open_clip format, text | {len(TEXTS)} | {cos(a, b).min():.7f} | {np.abs(a - b).max():.2e} |")
        for prec in ("fp16", "int8"):
            rt = rsvlm_edge.load(export_clip(ckpt, d / f"{prec}.rsvlm", precision=prec).path)
            px = synthetic_rs_images(64, 64, seed=77)
            c = cos(rt.encode_images(px), b32.encode_images(px))
            agree = top1_agreement(rt, b32, px)
            print(f"| {prec} image vs fp32 bundle (64 synthetic, {len(LABELS)} labels) | 64 | {c.min():.5f} "
                  f"(mean {c.mean():.5f}) | top-1 agreement {agree:.1%} |")


if __name__ == "__main__":
    main()
