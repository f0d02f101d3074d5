"""``VlmRuntime``: LLaVA-class generation from a bundle (no torch).

Vision tower + projector run in ONNX Runtime (``vision.onnx``); the LLaMA decoder runs over a
preallocated KV cache through ``rsvlm_edge.vlm.ops``: the native C++ kernels of ``rsvlm_edge._C``
when the build has them, else the numpy (fp32) reference ops. Prompts are built from the bundle's chat template, split at ``<image>`` and
tokenised chunk by chunk like LLaVA's ``tokenizer_image_token``; the image's feature rows are
spliced in at the split.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..backends.ort import OrtModel
from ..bundle import Bundle, open_bundle
from ..errors import BackendError, BundleError, InputError
from .config import VlmConfig
from .decoder import LlamaDecoder, load_weights
from .image import ImageInput, preprocess_images
from .prompts import IMAGE_PLACEHOLDER, build_prompt, tokenize_with_image

StreamCallback = Callable[[int, str], None]
# The vision tower runs in onnxruntime (CUDA EP where installed, unless "cpu"/"numpy"/"native");
# the decoder on the native kernels ("native": required; "numpy": the reference ops; else: native
# when built, numpy otherwise).
BACKENDS = ("auto", "ort", "cpu", "native", "numpy")


@dataclass
class GenerationStats:
    """Timings of the last ``generate`` call (seconds) and token counts."""

    vision_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompt_tokens: list[int] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    decode_steps: int = 0


def sample_next(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """Greedy when ``temperature == 0``; else softmax(logits / T) restricted to the top-p nucleus."""
    if temperature <= 0.0:
        return np.argmax(logits, axis=-1)
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.empty(logits.shape[0], dtype=np.int64)
    for b in range(logits.shape[0]):
        order = np.argsort(-probs[b], kind="stable")
        sorted_p = probs[b, order]
        keep = int(np.searchsorted(np.cumsum(sorted_p), top_p) + 1) if top_p < 1.0 else len(order)
        nucleus = sorted_p[:keep] / sorted_p[:keep].sum()
        out[b] = order[rng.choice(keep, p=nucleus)]
    return out


class VlmRuntime:
    """Runs a LLaVA-class bundle: ``generate(images, prompts, ...)``."""

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike[str],
        backend: str = "auto",
        max_batch: int = 8,
        max_seq: int | None = None,
        threads: int | None = None,
    ) -> None:
        if not isinstance(bundle, Bundle):
            bundle = open_bundle(bundle)
        if bundle.architecture != "llava":
            raise BundleError(f"bundle '{bundle.path}' is a {bundle.architecture} bundle, not a VLM", "use rsvlm_edge.load()")
        if backend == "trt":
            raise BackendError(
                "backend 'trt' is not available for VLM bundles yet (vision runs in onnxruntime)",
                f"use --backend one of {', '.join(BACKENDS)}",
            )
        if backend not in BACKENDS:
            raise BackendError(f"unknown VLM backend '{backend}'", f"use one of {', '.join(BACKENDS)}")
        self.bundle = bundle
        self.config = VlmConfig.from_dict(bundle.model)
        self.preprocess = bundle.manifest["preprocess"]
        prompts = bundle.manifest.get("prompts", {})
        self.template: str = prompts.get("template", "llava_v1")
        self.stop_strings: list[str] = list(prompts.get("stop", []))
        self.tokenizer = _load_tokenizer(bundle.file(bundle.manifest.get("tokenizer", "tokenizer.json")))
        self.vision = _open_vision(bundle.file("vision.onnx"), backend, threads)
        dc = self.config.decoder
        if max_seq is None:
            max_seq = min(dc.max_position_embeddings, self.config.vision.num_tokens + 1024)
        decoder_backend = backend if backend in ("native", "numpy") else "auto"
        self.decoder = LlamaDecoder(
            dc, load_weights(bundle.file("decoder.safetensors")), max_batch, max_seq, backend=decoder_backend
        )
        self.eos_ids = {dc.eos_token_id} if dc.eos_token_id is not None else set()
        self.backends = {"vision": "ort:" + self.vision.providers[0], "decoder": self.decoder.ops.name}
        self.stats = GenerationStats()

    # ---- pieces ----

    @property
    def max_batch(self) -> int:
        return self.decoder.max_batch

    @property
    def num_image_tokens(self) -> int:
        return self.config.vision.num_tokens

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Projected image features ``(B, N_image_tokens, hidden)`` for a list of images."""
        batch = preprocess_images(images, self.preprocess)
        return self.vision.run({"images": batch})[0]

    def tokenize(self, prompt: str) -> list[list[int]]:
        """Token chunks of ``prompt`` around its ``<image>`` (see ``tokenize_with_image``)."""
        return tokenize_with_image(self.tokenizer, prompt, self.config.decoder.bos_token_id)

    def build_prompt(self, question: str, with_image: bool = True, template: str | None = None) -> str:
        return build_prompt(template or self.template, question, with_image)

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- generation ----

    def generate(
        self,
        images: ImageInput | Sequence[ImageInput] | None,
        prompts: str | Sequence[str],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        stream: StreamCallback | None = None,
        template: str | None = None,
        seed: int = 0,
    ) -> list[str]:
        """Answer each question about its image (pairs are batched together); returns the texts.

        ``images`` may be one image for all prompts, a list (one per prompt) or None (text only).
        ``stop``: extra stop strings (the model's EOS always stops). ``stream(i, piece)`` is called
        with each new piece of text of sequence ``i`` as it is generated.
        """
        questions = [prompts] if isinstance(prompts, str) else list(prompts)
        if not questions:
            raise InputError("no prompts given", "pass at least one question")
        if images is None:
            image_list: list[ImageInput] | None = None
        elif isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4):
            image_list = list(images)
        else:
            image_list = [images] * len(questions)
        if image_list is not None and len(image_list) != len(questions):
            raise InputError(
                f"{len(image_list)} images for {len(questions)} prompts", "pass one image per prompt, or a single image"
            )
        texts = [self.build_prompt(q, with_image=image_list is not None, template=template) for q in questions]
        chunks = [self.tokenize(t) for t in texts]
        results: list[str] = []
        step = self.decoder.max_batch
        total = GenerationStats()
        for start in range(0, len(texts), step):
            sub_images = None if image_list is None else image_list[start : start + step]
            tokens, sub_texts = self._generate(
                sub_images,
                chunks[start : start + step],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=stop,
                stream=None if stream is None else (lambda i, piece, o=start: stream(o + i, piece)),
                seed=seed + start,
            )
            results += sub_texts
            total.vision_s += self.stats.vision_s
            total.prefill_s += self.stats.prefill_s
            total.decode_s += self.stats.decode_s
            total.prompt_tokens += self.stats.prompt_tokens
            total.new_tokens += [len(t) for t in tokens]
            total.decode_steps += self.stats.decode_steps
        self.stats = total
        return results

    def generate_tokens(
        self,
        images: Sequence[ImageInput] | np.ndarray | None,
        chunks: Sequence[Sequence[Sequence[int]]],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        stream: StreamCallback | None = None,
        seed: int = 0,
        ignore_eos: bool = False,
    ) -> list[list[int]]:
        """Token-level generation for pre-tokenised prompts: ``chunks[b]`` are the token chunks
        of prompt ``b``, one image's features go between consecutive chunks. ``images`` are
        images or precomputed features ``(B, N, hidden)``. Returns the new token ids per sequence,
        ending with the EOS token when the model stopped on it. ``ignore_eos`` (for timing runs)
        always generates ``max_new_tokens``."""
        return self._generate(images, chunks, max_new_tokens, temperature, top_p, stop, stream, seed, ignore_eos)[0]

    def _generate(
        self,
        images: Sequence[ImageInput] | np.ndarray | None,
        chunks: Sequence[Sequence[Sequence[int]]],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: Sequence[str] | None,
        stream: StreamCallback | None,
        seed: int,
        ignore_eos: bool = False,
    ) -> tuple[list[list[int]], list[str]]:
        batch = len(chunks)
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
        stats = GenerationStats()
        t0 = time.perf_counter()
        features = self._features(images)
        stats.vision_s = time.perf_counter() - t0
        embeds, lengths = self._prompt_embeddings(chunks, features)
        if int(lengths.max()) + max_new_tokens > self.decoder.max_seq:
            raise InputError(
                f"prompt ({int(lengths.max())} tokens incl. image) + max_new_tokens ({max_new_tokens}) exceeds the "
                f"KV cache of {self.decoder.max_seq} positions",
                "lower max_new_tokens, or create the runtime with a larger max_seq",
            )
        stats.prompt_tokens = lengths.tolist()

        rng = np.random.default_rng(seed)
        eos_ids = set() if ignore_eos else self.eos_ids
        stop_strings = [] if ignore_eos else list(self.stop_strings) + list(stop or [])
        holdback = max((len(s) for s in stop_strings), default=1) - 1
        generated: list[list[int]] = [[] for _ in range(batch)]
        texts = [""] * batch
        emitted = [0] * batch
        done = np.zeros(batch, dtype=bool)

        t1 = time.perf_counter()
        logits = self.decoder.prefill(embeds, lengths)
        stats.prefill_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        for step in range(max_new_tokens):
            next_ids = sample_next(logits, temperature, top_p, rng)
            for b in np.flatnonzero(~done):
                tok = int(next_ids[b])
                generated[b].append(tok)
                if tok in eos_ids:
                    done[b] = True
                    texts[b] = self.decode_text(generated[b][:-1])
                else:
                    texts[b] = self.decode_text(generated[b])
                    cut = _first_stop(texts[b], stop_strings)
                    if cut is not None:
                        texts[b] = texts[b][:cut]
                        done[b] = True
                if stream is not None:
                    final = done[b] or step == max_new_tokens - 1
                    upto = len(texts[b]) if final else max(emitted[b], len(texts[b].rstrip("\ufffd")) - holdback)
                    if upto > emitted[b]:
                        stream(int(b), texts[b][emitted[b] : upto])
                        emitted[b] = upto
            if done.all() or step == max_new_tokens - 1:
                break
            # Finished sequences keep decoding a dummy token (their output is already fixed).
            logits = self.decoder.decode(np.where(done, 0, next_ids))
            stats.decode_steps += 1
        stats.decode_s = time.perf_counter() - t2
        stats.new_tokens = [len(g) for g in generated]
        self.stats = stats
        return generated, texts

    def first_step_logits(self, images: Sequence[ImageInput] | np.ndarray | None, chunks: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
        """Logits ``(B, vocab)`` after the prompt (prefill only), for checks against a reference."""
        embeds, lengths = self._prompt_embeddings(chunks, self._features(images))
        return self.decoder.prefill(embeds, lengths)

    def _prompt_embeddings(self, chunks: Sequence[Sequence[Sequence[int]]], features: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded input embeddings ``(B, T, hidden)`` with the image rows spliced in, and
        each prompt's length."""
        batch = len(chunks)
        if batch == 0:
            raise InputError("no prompts given", "pass at least one prompt")
        if batch > self.decoder.max_batch:
            raise InputError(f"batch of {batch} exceeds max_batch {self.decoder.max_batch}", "use generate(), which splits batches")
        if features is not None and features.shape[0] != batch:
            raise InputError(f"{features.shape[0]} images for {batch} prompts", "pass one image per prompt")
        rows = [self._splice(b, chunks[b], features) for b in range(batch)]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        embeds = np.zeros((batch, int(lengths.max()), self.config.decoder.hidden_size), dtype=np.float32)
        for b, r in enumerate(rows):
            embeds[b, : len(r)] = r
        return embeds, lengths

    def _features(self, images: Sequence[ImageInput] | np.ndarray | None) -> np.ndarray | None:
        """Image features: float arrays (B, N, hidden) pass through; images are encoded."""
        if images is None:
            return None
        if isinstance(images, np.ndarray) and images.dtype != np.uint8:
            if images.ndim != 3 or images.shape[1:] != (self.num_image_tokens, self.config.decoder.hidden_size):
                raise InputError(
                    f"image features have shape {images.shape}",
                    f"expected (B, {self.num_image_tokens}, {self.config.decoder.hidden_size}) or uint8 images",
                )
            return images
        return self.encode_images(list(images))

    def _splice(self, b: int, chunks: Sequence[Sequence[int]], features: np.ndarray | None) -> np.ndarray:
        n_images = len(chunks) - 1
        if features is None and n_images:
            raise InputError(f"prompt {b} has an {IMAGE_PLACEHOLDER} but no image was given", "pass an image")
        if features is not None and n_images != 1:
            raise InputError(f"prompt {b} needs exactly one {IMAGE_PLACEHOLDER}, has {n_images}", "use one image per prompt")
        parts: list[np.ndarray] = []
        for i, ids in enumerate(chunks):
            ids_arr = np.asarray(ids, dtype=np.int64)
            if ids_arr.size and (ids_arr.min() < 0 or ids_arr.max() >= self.config.decoder.vocab_size):
                raise InputError(f"prompt {b} has token ids outside the vocabulary", "use the bundle's tokenizer")
            parts.append(self.decoder.embed_tokens(ids_arr))
            if i < n_images:
                parts.append(features[b].astype(np.float32))
        return np.concatenate(parts, axis=0)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None


def _load_tokenizer(path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad json
        raise BundleError(f"cannot read tokenizer '{path}' ({e})", "re-export the bundle") from None


def _open_vision(path, backend: str, threads: int | None) -> OrtModel:
    providers = ["CPUExecutionProvider"] if backend in ("cpu", "numpy", "native") else None
    return OrtModel(path, providers=providers, threads=threads)
