"""The decode loop: sampling, EOS and stop strings, streaming, timing.

``run_generation`` drives a ``LlamaDecoder`` (prefill once, then one ``decode`` per token) for a
batch of prompt embeddings and returns a ``GenerationResult`` (tokens, texts and the timings of this
call). It holds no state between calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError

StreamCallback = Callable[[int, str], None]


@dataclass
class GenerationStats:
    """Timings (seconds) and token counts of one generation call."""

    vision_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompt_tokens: list[int] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    decode_steps: int = 0

    def add(self, other: "GenerationStats") -> None:
        self.vision_s += other.vision_s
        self.prefill_s += other.prefill_s
        self.decode_s += other.decode_s
        self.prompt_tokens += other.prompt_tokens
        self.new_tokens += other.new_tokens
        self.decode_steps += other.decode_steps


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # new token ids per sequence (ending with EOS when it stopped there)
    texts: list[str]  # decoded answers, cut at the first stop string
    stats: GenerationStats


API_NAMES = {"temperature": "temperature", "top_p": "top_p", "max_new_tokens": "max_new_tokens"}


def check_sampling(temperature: float, top_p: float, max_new_tokens: int,
                   names: dict[str, str] = API_NAMES) -> None:
    """Refuse NaN/negative temperatures, top_p outside (0, 1] and non-positive token budgets.
    ``names``: how the caller spells each option in messages (the CLI passes ``--top-p`` etc.)."""
    real = (int, float, np.floating, np.integer)
    t, p, m = names["temperature"], names["top_p"], names["max_new_tokens"]
    if not isinstance(temperature, real) or isinstance(temperature, bool) or not math.isfinite(temperature) \
            or temperature < 0:
        raise InputError(f"{t} must be a finite number >= 0 (got {temperature!r})",
                         f"use 0 for greedy decoding, or e.g. {t} 0.7")
    if not isinstance(top_p, real) or isinstance(top_p, bool) or not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise InputError(f"{p} must be in (0, 1] (got {top_p!r})", f"e.g. {p} 0.9 (1 keeps every token)")
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputError(f"{m} must be an integer >= 1 (got {max_new_tokens!r})", f"e.g. {m} 128")


def check_seed(seed: int, what: str = "seed") -> None:
    """Seeds are integers in 0 .. 2**63 - 1 (numpy's ``default_rng`` refuses negative ones)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= int(seed) < 2**63:
        raise InputError(f"{what} must be an integer in 0..2**63-1 (got {seed!r})", f"e.g. {what} 0")


def sample_next(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """Greedy when ``temperature == 0``; else softmax(logits / T) restricted to the top-p nucleus, one
    ``rng.random()`` draw per row (``sample_with_uniforms``).

    A temperature so small that ``logits / T`` overflows is the greedy limit and is decoded greedily."""
    if temperature <= 0.0:
        return np.argmax(logits, axis=-1)
    return sample_with_uniforms(logits, temperature, top_p, rng.random(logits.shape[0]))


def sample_with_uniforms(logits: np.ndarray, temperature: float, top_p: float, uniforms: np.ndarray) -> np.ndarray:
    """The sampling rule with the draws given (``uniforms`` (B,) in [0, 1)): the numpy op set's
    ``top_p_sample`` (``backends/decoder_numpy.py``), which the native ``top_p_sample`` (CPU and CUDA,
    ``include/rsvlm_edge/top_p_sample.h``) implements too."""
    from ...backends.decoder_numpy import top_p_sample

    return top_p_sample(logits, uniforms, temperature, top_p)


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None


def run_generation(
    decoder,
    decode_text: Callable[[list[int]], str],
    embeds: np.ndarray,
    lengths: np.ndarray,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_ids: set[int] | frozenset[int] = frozenset(),
    stop_strings: Sequence[str] = (),
    stream: StreamCallback | None = None,
    seed: int = 0,
) -> GenerationResult:
    """Prefill ``embeds`` (B, T, C) with ``lengths`` (B,) and decode up to ``max_new_tokens``.

    On a decoder with ``decode_greedy`` / ``decode_sample`` (the CUDA decoder: argmax, or the nucleus draw of
    ``sample_with_uniforms`` on the device with the draws this function takes from its generator) the next ids
    come from it, so that only ids, not (B, vocab) logits, come back per step; the draws are the same as on
    the host path (one per sequence per step)."""
    check_sampling(temperature, top_p, max_new_tokens)
    check_seed(seed)
    batch = embeds.shape[0]
    stats = GenerationStats(prompt_tokens=lengths.tolist())
    rng = np.random.default_rng(seed)
    holdback = max((len(s) for s in stop_strings), default=1) - 1
    generated: list[list[int]] = [[] for _ in range(batch)]
    texts = [""] * batch
    emitted = [0] * batch
    done = np.zeros(batch, dtype=bool)

    t1 = time.perf_counter()
    logits = decoder.prefill(embeds, lengths)
    stats.prefill_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    decode_greedy = getattr(decoder, "decode_greedy", None) if temperature <= 0.0 else None
    decode_sample = getattr(decoder, "decode_sample", None) if temperature > 0.0 else None
    device_ids: np.ndarray | None = None  # the next ids when the decoder gave them
    for step in range(max_new_tokens):
        next_ids = device_ids if device_ids is not None else sample_next(logits, temperature, top_p, rng)
        for b in np.flatnonzero(~done):
            tok = int(next_ids[b])
            generated[b].append(tok)
            if tok in eos_ids:
                done[b] = True
                texts[b] = decode_text(generated[b][:-1])
            else:
                texts[b] = decode_text(generated[b])
                cut = first_stop(texts[b], stop_strings)
                if cut is not None:
                    texts[b] = texts[b][:cut]
                    done[b] = True
            if stream is not None:
                final = done[b] or step == max_new_tokens - 1
                upto = len(texts[b]) if final else max(emitted[b], len(texts[b].rstrip("\ufffd")) - holdback)
                if upto > emitted[b]:
                    stream(int(b), texts[b][emitted[b]:upto])
                    emitted[b] = upto
        if done.all() or step == max_new_tokens - 1:
            break
        # Finished sequences keep decoding a dummy token (their output is already fixed).
        if decode_greedy is not None:
            device_ids = np.asarray(decode_greedy(np.where(done, 0, next_ids)), dtype=np.int64)
        elif decode_sample is not None:
            draws = rng.random(batch)
            device_ids = np.asarray(decode_sample(np.where(done, 0, next_ids), temperature, top_p, draws), dtype=np.int64)
        else:
            logits = decoder.decode(np.where(done, 0, next_ids))
        stats.decode_steps += 1
    stats.decode_s = time.perf_counter() - t2
    stats.new_tokens = [len(g) for g in generated]
    return GenerationResult(generated, texts, stats)
