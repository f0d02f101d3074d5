"""Chat templates (as LLaVA's conversation.py builds them) and GeoChat's task prefixes / boxes.

A template turns a user question into the prompt text with one ``<image>`` placeholder; the
runtime splits the prompt at the placeholder and splices the image feature rows there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import InputError

IMAGE_PLACEHOLDER = "<image>"

_LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)


def _sep_style_two(system: str, question: str) -> str:
    # LLaVA SeparatorStyle.TWO: "{system} USER: {msg} ASSISTANT:"
    return f"{system} USER: {question} ASSISTANT:"


def _llama_2(system: str, question: str) -> str:
    # LLaVA SeparatorStyle.LLAMA_2: "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{msg} [/INST]"
    return f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{question} [/INST]"


TEMPLATES = {
    "llava_v1": (_LLAVA_V1_SYSTEM, _sep_style_two),
    "vicuna_v1": (_VICUNA_V1_SYSTEM, _sep_style_two),
    "llama_2": (_LLAVA_LLAMA_2_SYSTEM, _llama_2),
}


def build_prompt(template: str, question: str, with_image: bool = True) -> str:
    """The full prompt for one question; the image goes first, on its own line (LLaVA style)."""
    if template not in TEMPLATES:
        raise InputError(f"unknown chat template '{template}'", f"use one of {', '.join(TEMPLATES)}")
    if IMAGE_PLACEHOLDER in question:
        raise InputError(f"the question contains '{IMAGE_PLACEHOLDER}'", "leave it out; the image is placed automatically")
    system, style = TEMPLATES[template]
    message = f"{IMAGE_PLACEHOLDER}\n{question}" if with_image else question
    return style(system, message)


def tokenize_with_image(tokenizer, prompt: str, bos_token_id: int | None) -> list[list[int]]:
    """Token chunks around each ``<image>``, as LLaVA's ``tokenizer_image_token``: every chunk is
    encoded on its own with the tokenizer's special tokens, and chunks after the first lose their
    leading BOS. The image's feature rows go between consecutive chunks."""
    chunks = []
    for i, text in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        ids = list(tokenizer.encode(text).ids)
        if i > 0 and ids and bos_token_id is not None and ids[0] == bos_token_id:
            ids = ids[1:]
        chunks.append(ids)
    return chunks


# ---- GeoChat ----

GEOCHAT_TASKS = {"grounding": "[grounding]", "refer": "[refer]", "identify": "[identify]"}


def geochat_question(task: str | None, question: str) -> str:
    """Prefix a question with a GeoChat task token ([grounding], [refer], [identify])."""
    if task is None:
        return question
    if task not in GEOCHAT_TASKS:
        raise InputError(f"unknown GeoChat task '{task}'", f"use one of {', '.join(GEOCHAT_TASKS)}")
    return f"{GEOCHAT_TASKS[task]} {question}"


@dataclass(frozen=True)
class RotatedBox:
    """A box in pixels (x1, y1, x2, y2) plus its rotation angle in degrees, as GeoChat emits."""

    x1: float
    y1: float
    x2: float
    y2: float
    angle: float


_BOX = re.compile(r"\{\s*<(-?\d+(?:\.\d+)?)>\s*<(-?\d+(?:\.\d+)?)>\s*<(-?\d+(?:\.\d+)?)>\s*<(-?\d+(?:\.\d+)?)>\s*(?:\|\s*<(-?\d+(?:\.\d+)?)>\s*)?\}")


def parse_geochat_boxes(text: str, width: int, height: int, padded: bool = False) -> list[RotatedBox]:
    """Every ``{<x1><y1><x2><y2>|<θ>}`` in ``text`` (coordinates on a 0-100 scale) as pixel boxes
    in an image of ``width`` x ``height``. A missing ``|<θ>`` means angle 0. ``padded``: the model
    saw the image padded to a square (LLaVA ``image_aspect_ratio == "pad"``), so the scale is the
    square's side and the padding offset is removed."""
    if width <= 0 or height <= 0:
        raise InputError(f"image size {width}x{height} is not positive", "pass the size of the image the boxes refer to")
    if padded:
        side = max(width, height)
        sx, sy, dx, dy = side, side, (side - width) // 2, (side - height) // 2
    else:
        sx, sy, dx, dy = width, height, 0, 0
    boxes = []
    for m in _BOX.finditer(text):
        x1, y1, x2, y2 = (float(m.group(i)) for i in range(1, 5))
        angle = float(m.group(5)) if m.group(5) is not None else 0.0
        boxes.append(RotatedBox(x1 * sx / 100 - dx, y1 * sy / 100 - dy, x2 * sx / 100 - dx, y2 * sy / 100 - dy, angle))
    return boxes
