"""Step-by-step comparison of two bundles of one VLM (``rsvlm-edge compare``): the reference (say fp16)
answers greedily; both are then teacher-forced on the reference's tokens and their logits compared at
every step (cosine), with how often the candidate's own choice is the reference's token. The measure of
issue 12's w4 goal (worst step cosine >= 0.98 against the unquantised model), on the user's own
checkpoint, images and questions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ...errors import InputError
from ...images import ImageInput
from .runtime import VlmRuntime


@dataclass
class StepComparison:
    """One sequence: ``steps`` compared (up to and including the reference's EOS), the worst and mean logits
    cosine, the fraction of steps where the candidate's argmax is the reference's token, the reference's
    answer."""

    image: str
    question: str
    steps: int
    worst_cosine: float
    mean_cosine: float
    top1_agreement: float
    reference_answer: str

    def to_dict(self) -> dict:
        return asdict(self)


def _same_model(reference: VlmRuntime, candidate: VlmRuntime) -> None:
    ref, cand = reference.config, candidate.config
    for what, a, b in (("vocabulary size", ref.decoder.vocab_size, cand.decoder.vocab_size),
                       ("decoder width", ref.decoder.hidden_size, cand.decoder.hidden_size),
                       ("decoder layers", ref.decoder.num_layers, cand.decoder.num_layers),
                       ("image tokens", ref.vision.num_tokens, cand.vision.num_tokens)):
        if a != b:
            raise InputError(f"the two bundles are not one model: {what} {a} vs {b}",
                             "compare two exports of the same checkpoint (e.g. --weights fp16 and --weights w4)")


def check_steps(steps: int) -> None:
    if steps < 1:
        raise InputError(f"--steps {steps} compares nothing", "pass --steps 1 or more (32: issue 12's measure)")


def compare_runtimes(reference: VlmRuntime, candidate: VlmRuntime, images: Sequence[ImageInput],
                     questions: Sequence[str], steps: int = 32) -> list[StepComparison]:
    """Compare ``candidate`` with ``reference`` on each (image, question) pair for ``steps`` greedy tokens of
    the reference (see the module docstring)."""
    check_steps(steps)
    if len(images) != len(questions) or not images:
        raise InputError(f"{len(images)} images and {len(questions)} questions", "pass one question per image")
    _same_model(reference, candidate)
    prompts = [reference.build_prompt(q) for q in questions]
    chunks = [reference.tokenize(p) for p in prompts]
    if [candidate.tokenize(p) for p in prompts] != chunks:
        raise InputError("the two bundles tokenize the prompts differently",
                         "compare two exports of the same checkpoint (their tokenizer.json must agree)")
    longest = max(sum(len(c) for c in ch) + reference.num_image_tokens * (len(ch) - 1) for ch in chunks)
    room = min(reference.decoder.max_seq, candidate.decoder.max_seq) - longest
    if steps > room:
        raise InputError(f"--steps {steps}: the prompt ({longest} tokens incl. the image) leaves room for {room} steps "
                         "in the KV cache", f"pass --steps {max(room, 1)} or fewer")
    # The reference decodes greedily once (its logits and tokens); the candidate is fed those tokens.
    want = reference.teacher_forced_logits(list(images), chunks, greedy_steps=steps - 1)
    tokens = want.argmax(-1)  # (B, steps)
    got = candidate.teacher_forced_logits(list(images), chunks, tokens[:, :-1])
    out = []
    for b in range(len(chunks)):
        eos = [t for t, tok in enumerate(tokens[b]) if int(tok) in reference.eos_ids]
        n = eos[0] + 1 if eos else steps  # the steps the reference answers in, its EOS included
        w, g = want[b, :n].astype(np.float64), got[b, :n].astype(np.float64)
        cos = (w * g).sum(-1) / (np.linalg.norm(w, axis=-1) * np.linalg.norm(g, axis=-1))
        name = str(images[b]) if isinstance(images[b], (str, os.PathLike)) else f"image {b}"
        out.append(StepComparison(
            image=name, question=questions[b], steps=n, worst_cosine=float(cos.min()), mean_cosine=float(cos.mean()),
            top1_agreement=float((g.argmax(-1) == tokens[b, :n]).mean()),
            reference_answer=reference.decode_text(tokens[b, :n].tolist())))
    return out
