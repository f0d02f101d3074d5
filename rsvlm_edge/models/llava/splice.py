"""Input embeddings of a batch of prompts with the image feature rows spliced in at ``<image>``
(LLaVA's ``prepare_inputs_labels_for_multimodal``), right-padded to the longest prompt."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ...errors import InputError
from .prompts import IMAGE_PLACEHOLDER


def splice_one(b: int, chunks: Sequence[Sequence[int]], features: np.ndarray | None,
               embed_tokens: Callable[[np.ndarray], np.ndarray], vocab_size: int) -> np.ndarray:
    """(T_b, C) embeddings of prompt ``b``: token chunks with ``features[b]`` between them."""
    n_images = len(chunks) - 1
    if features is None and n_images:
        raise InputError(f"prompt {b} has an {IMAGE_PLACEHOLDER} but no image was given", "pass an image")
    if features is not None and n_images != 1:
        raise InputError(f"prompt {b} needs exactly one {IMAGE_PLACEHOLDER}, has {n_images}", "use one image per prompt")
    parts: list[np.ndarray] = []
    for i, ids in enumerate(chunks):
        ids_arr = np.asarray(ids, dtype=np.int64)
        if ids_arr.size and (ids_arr.min() < 0 or ids_arr.max() >= vocab_size):
            raise InputError(f"prompt {b} has token ids outside the vocabulary", "use the bundle's tokenizer")
        parts.append(embed_tokens(ids_arr))
        if i < n_images:
            parts.append(features[b].astype(np.float32))
    return np.concatenate(parts, axis=0)


def prompt_embeddings(chunks: Sequence[Sequence[Sequence[int]]], features: np.ndarray | None,
                      embed_tokens: Callable[[np.ndarray], np.ndarray], vocab_size: int, hidden: int,
                      max_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (B, T, hidden) float32 embeddings and each prompt's length (B,) int64."""
    batch = len(chunks)
    if batch == 0:
        raise InputError("no prompts given", "pass at least one prompt")
    if batch > max_batch:
        raise InputError(f"batch of {batch} exceeds max_batch {max_batch}", "use generate(), which splits batches")
    if features is not None and features.shape[0] != batch:
        raise InputError(f"{features.shape[0]} images for {batch} prompts", "pass one image per prompt")
    rows = [splice_one(b, chunks[b], features, embed_tokens, vocab_size) for b in range(batch)]
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    if lengths.min() < 1:
        raise InputError("a prompt has no tokens", "pass a non-empty question")
    embeds = np.zeros((batch, int(lengths.max()), hidden), dtype=np.float32)
    for b, r in enumerate(rows):
        embeds[b, :len(r)] = r
    return embeds, lengths
