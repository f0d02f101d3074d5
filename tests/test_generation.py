"""run_generation (models/llava/generation.py) with a decoder that can return greedy ids itself (the CUDA
decoder's ``decode_greedy``: argmax on the device, only ids come back) against the same decoder returning
logits: the same tokens, and no logits fetched per step while decoding greedily."""

from __future__ import annotations

import numpy as np

from rsvlm_edge.models.llava.generation import run_generation, sample_with_uniforms

VOCAB = 13
EOS = 12


class LogitsDecoder:
    """Next-token logits that depend on the fed token and the sequence's length (no ties)."""

    def __init__(self) -> None:
        self.lengths = np.zeros(0, np.int64)
        self.fed: list[list[int]] = []
        self.logits_calls = 0

    def logits_for(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ids), VOCAB), np.float32)
        for b, (tok, n) in enumerate(zip(ids, self.lengths)):
            out[b] = np.cos(np.arange(VOCAB) * (1.0 + 0.37 * tok) + 0.11 * n)
            out[b, EOS] = 1.5 if n >= 9 + b else -5.0  # sequence b ends at its length 9 + b
        return out

    def prefill(self, embeds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        self.lengths = np.asarray(lengths, np.int64).copy()
        return self.logits_for(np.ones(len(lengths), np.int64))

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        self.logits_calls += 1
        self.fed.append([int(t) for t in token_ids])
        self.lengths += 1
        return self.logits_for(np.asarray(token_ids))


class GreedyDecoder(LogitsDecoder):
    def decode_greedy(self, token_ids: np.ndarray) -> np.ndarray:
        self.fed.append([int(t) for t in token_ids])
        self.lengths += 1
        return self.logits_for(np.asarray(token_ids)).argmax(axis=1)


class SamplingDecoder(GreedyDecoder):
    """decode_sample as the CUDA decoder does it: the step, then the nucleus draw with the given uniforms."""

    def decode_sample(self, token_ids: np.ndarray, temperature: float, top_p: float, uniforms: np.ndarray):
        self.fed.append([int(t) for t in token_ids])
        self.lengths += 1
        return sample_with_uniforms(self.logits_for(np.asarray(token_ids)), temperature, top_p, uniforms)


def generate(decoder, temperature: float = 0.0):
    embeds = np.zeros((3, 4, 8), np.float32)
    return run_generation(decoder, lambda ids: " ".join(map(str, ids)), embeds, np.array([4, 2, 3]), 12,
                          temperature=temperature, top_p=0.9, eos_ids={EOS}, seed=3)


def test_greedy_ids_from_the_decoder_give_the_same_tokens_without_fetching_logits():
    plain, greedy = LogitsDecoder(), GreedyDecoder()
    want, got = generate(plain), generate(greedy)
    assert got.tokens == want.tokens and got.texts == want.texts
    assert any(ids[-1] == EOS for ids in want.tokens) and len({len(ids) for ids in want.tokens}) > 1
    assert greedy.fed == plain.fed  # finished sequences fed the dummy token 0 on both paths
    assert greedy.logits_calls == 0 and plain.logits_calls == len(plain.fed) > 0


def test_sampling_reads_logits_unless_the_decoder_samples():
    greedy = GreedyDecoder()
    want = generate(LogitsDecoder(), temperature=0.8)
    out = generate(greedy, temperature=0.8)
    assert greedy.logits_calls == len(greedy.fed) > 0
    assert out.tokens == want.tokens  # same seed, same draws
    sampler = SamplingDecoder()
    got = generate(sampler, temperature=0.8)
    assert sampler.logits_calls == 0 and len(sampler.fed) > 0
    assert got.tokens == want.tokens  # the device draw takes the host path's uniforms, one per sequence per step
