"""``VlmRuntime``: LLaVA-class generation from a bundle (no torch).

The ``vision`` graph part (CLIP tower + projector) runs on a graph backend and the ``decoder`` part
on a decoder backend, both chosen by the backend registry from the user's preference. Prompts are
built from the bundle's chat template, split at ``<image>`` and tokenised chunk by chunk like LLaVA's
``tokenizer_image_token``; the image's feature rows are spliced in at the split (``splice.py``); the
decode loop lives in ``generation.py``, the step functions in ``decoder.py``.

Thread safety: one runtime may be shared by any number of threads. Every method returns exactly
(bit for bit) what the same call returns when made alone: image encoding (``encode_images``) runs
concurrently (onnxruntime sessions are thread-safe); generations (``generate*``,
``first_step_logits``) are serialised on the runtime's one KV cache with a lock, and sampling uses a
generator seeded per call, so concurrent callers neither see nor disturb each other's state. A
``stream`` callback must not call back into the same runtime's generation (that would deadlock); it
is refused with an error. For parallel decoding, give each thread its own runtime.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from ...backends import open_graph
from ...bundle import Bundle, open_bundle
from ...errors import BundleError, InputError
from .config import VlmConfig
from .decoder import load_weights, open_llama_decoder
from .generation import GenerationResult, GenerationStats, StreamCallback, check_sampling, check_seed, run_generation
from .preprocess import ImageInput, preprocess_images
from .prompts import build_prompt, tokenize_with_image
from .splice import prompt_embeddings

DEFAULT_EXTRA_POSITIONS = 1024


def _check_count(name: str, value: object, fix: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or int(value) < 1:
        raise InputError(f"{name} must be a positive integer (got {value!r})", fix)


def generation_bytes(config: VlmConfig, batch: int, positions: int) -> int:
    """Estimated memory (bytes) that generating ``batch`` sequences of ``positions`` positions
    touches beyond the weights: the used part of the float32 KV cache, prefill activations and
    logits, image features and pixels (for a memory check before allocating anything)."""
    dc, vc = config.decoder, config.vision
    kv = 2 * 4 * dc.num_layers * dc.num_kv_heads * dc.head_dim * positions
    prefill = 4 * positions * (6 * dc.hidden_size + 3 * dc.intermediate_size + dc.num_heads * positions)
    logits = 4 * 2 * dc.vocab_size
    vision = 4 * vc.num_tokens * (dc.hidden_size + 4 * vc.hidden_size) + 4 * 3 * vc.image_size ** 2
    return int(batch) * int(kv + prefill + logits + vision)


class VlmRuntime:
    """Runs a LLaVA-class bundle: ``generate(images, prompts, ...)``.

    ``max_batch`` (default: the bundle's) and ``max_seq`` (default: image tokens + 1024, at most the
    model's context) size the KV cache; both must be positive integers and ``max_seq`` may not
    exceed the model's context (``max_position_embeddings``). Safe to share across threads (see
    the module docstring): concurrent calls return exactly what they return alone.
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike[str],
        backend: str = "auto",
        max_batch: int | None = None,
        max_seq: int | None = None,
        threads: int | None = None,
    ) -> None:
        if not isinstance(bundle, Bundle):
            bundle = open_bundle(bundle)
        if bundle.architecture != "llava":
            raise BundleError(f"bundle '{bundle.path}' is a {bundle.architecture} bundle, not a VLM",
                              "use rsvlm_edge.load(), or `rsvlm-edge classify` / `embed` for CLIP bundles")
        if max_batch is not None:
            _check_count("max_batch", max_batch, "pass e.g. max_batch=8 (or leave it out for the bundle's)")
            max_batch = int(max_batch)
        if max_seq is not None:
            _check_count("max_seq", max_seq, "pass e.g. max_seq=2048 (or leave it out)")
            max_seq = int(max_seq)
        if threads is not None:
            _check_count("threads", threads, "pass e.g. threads=2 (or leave it out for all cores)")
        m = bundle.manifest
        self.bundle = bundle
        self.config = VlmConfig.from_dict(m.model.model_dump())
        context = self.config.decoder.max_position_embeddings
        if max_seq is not None and max_seq > context:
            raise InputError(f"max_seq {max_seq} exceeds the model's context of {context} positions",
                             f"pass max_seq <= {context}")
        self.preprocess = m.preprocess
        self.template: str = m.prompts.get("template", "llava_v1")
        self.stop_strings: list[str] = list(m.prompts.get("stop", []))
        self.tokenizer = _load_tokenizer(bundle.file(m.tokenizer.file))
        vision_part = m.parts["vision"]
        self.vision = open_graph(vision_part, bundle.part_file("vision"), backend, "vision", threads=threads)
        self._vision_in = vision_part.inputs[0].name
        dc = self.config.decoder
        if max_batch is None:
            max_batch = m.max_batch
        if max_seq is None:
            max_seq = min(dc.max_position_embeddings, self.config.vision.num_tokens + DEFAULT_EXTRA_POSITIONS)
        self.decoder = open_llama_decoder(dc, load_weights(bundle.part_file("decoder")), max_batch, max_seq, backend)
        self.eos_ids = frozenset({dc.eos_token_id} if dc.eos_token_id is not None else ())
        self.backends = {"vision": f"{self.vision.backend}:{self.vision.provider}", "decoder": self.decoder.ops.name}
        self._generate_lock = threading.Lock()
        self._generating_thread: int | None = None

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
        return self.vision.run({self._vision_in: batch})[0]

    def tokenize(self, prompt: str) -> list[list[int]]:
        """Token chunks of ``prompt`` around its ``<image>`` (see ``tokenize_with_image``)."""
        return tokenize_with_image(self.tokenizer, prompt, self.config.decoder.bos_token_id)

    def build_prompt(self, question: str, with_image: bool = True, template: str | None = None) -> str:
        return build_prompt(template or self.template, question, with_image)

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- generation ----

    def generate(self, images: ImageInput | Sequence[ImageInput] | None, prompts: str | Sequence[str],
                 **options) -> list[str]:
        """Answer each question about its image (pairs are batched together); returns the texts.

        ``images`` may be one image for all prompts, a list (one per prompt) or None (text only).
        ``options`` are those of ``generate_with_stats``: ``max_new_tokens`` (128), ``temperature`` (0 =
        greedy), ``top_p`` (1.0), ``stop`` (extra stop strings; the model's EOS always stops),
        ``stream`` (``stream(i, piece)`` is called with each new piece of text of sequence ``i``),
        ``template`` (chat template override), ``seed`` (0).
        """
        return self.generate_with_stats(images, prompts, **options)[0]

    def generate_with_stats(
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
    ) -> tuple[list[str], GenerationStats]:
        """``generate`` plus the timings and token counts of this call."""
        check_sampling(temperature, top_p, max_new_tokens)
        check_seed(seed)
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
            raise InputError(f"{len(image_list)} images for {len(questions)} prompts",
                             "pass one image per prompt, or a single image")
        texts = [self.build_prompt(q, with_image=image_list is not None, template=template) for q in questions]
        chunks = [self.tokenize(t) for t in texts]
        results: list[str] = []
        total = GenerationStats()
        step = self.max_batch
        for start in range(0, len(texts), step):
            sub_images = None if image_list is None else image_list[start:start + step]
            res = self.generate_result(
                sub_images, chunks[start:start + step], max_new_tokens=max_new_tokens, temperature=temperature,
                top_p=top_p, stop=stop, stream=None if stream is None else (lambda i, piece, o=start: stream(o + i, piece)),
                seed=(int(seed) + start) % 2**63)
            results += res.texts
            total.add(res.stats)
        return results, total

    def generate_tokens(self, images, chunks, max_new_tokens: int = 128, **kw) -> list[list[int]]:
        """Token-level generation for pre-tokenised prompts (see ``generate_result``)."""
        return self.generate_result(images, chunks, max_new_tokens=max_new_tokens, **kw).tokens

    def generate_result(
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
    ) -> GenerationResult:
        """``chunks[b]`` are the token chunks of prompt ``b``; one image's features go between
        consecutive chunks. ``images`` are images or precomputed features ``(B, N, hidden)``. Tokens
        end with the EOS token when the model stopped on it. ``ignore_eos`` (for timing runs) always
        generates ``max_new_tokens``."""
        check_sampling(temperature, top_p, max_new_tokens)
        check_seed(seed)
        t0 = time.perf_counter()
        features = self._features(images)
        vision_s = time.perf_counter() - t0
        with self._exclusive():
            embeds, lengths = self._prompt_embeddings(chunks, features)
            if int(lengths.max()) + max_new_tokens > self.decoder.max_seq:
                raise InputError(
                    f"prompt ({int(lengths.max())} tokens incl. image) + max_new_tokens ({max_new_tokens}) exceeds the "
                    f"KV cache of {self.decoder.max_seq} positions",
                    "lower max_new_tokens, or create the runtime with a larger max_seq",
                )
            result = run_generation(
                self.decoder, self.decode_text, embeds, lengths, max_new_tokens, temperature, top_p,
                eos_ids=frozenset() if ignore_eos else self.eos_ids,
                stop_strings=[] if ignore_eos else [*self.stop_strings, *(stop or [])],
                stream=stream, seed=seed)
        result.stats.vision_s = vision_s
        return result

    def first_step_logits(self, images: Sequence[ImageInput] | np.ndarray | None,
                          chunks: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
        """Logits ``(B, vocab)`` after the prompt (prefill only), for checks against a reference."""
        features = self._features(images)
        with self._exclusive():
            embeds, lengths = self._prompt_embeddings(chunks, features)
            return self.decoder.prefill(embeds, lengths)

    def teacher_forced_logits(self, images: Sequence[ImageInput] | np.ndarray | None,
                              chunks: Sequence[Sequence[Sequence[int]]], tokens: np.ndarray | None = None,
                              greedy_steps: int = 0) -> np.ndarray:
        """Logits ``(B, T + 1, vocab)`` float32: after the prompt, then after each of ``tokens`` ``(B, T)`` fed in
        turn (teacher forcing: every sequence goes on with the given tokens, whatever it would choose); without
        ``tokens``, T = ``greedy_steps`` and each step is fed this runtime's own argmax (greedy decoding, whose
        tokens are then ``logits.argmax(-1)``). For comparing two bundles of one model step by step
        (``rsvlm-edge compare``)."""
        vocab = self.config.decoder.vocab_size
        if tokens is not None:
            tokens = np.asarray(tokens)
            if tokens.ndim != 2 or tokens.shape[0] != len(chunks) or tokens.dtype.kind not in "iu":
                raise InputError(f"teacher-forced tokens have shape {tokens.shape} and dtype {tokens.dtype}",
                                 f"pass integer token ids of shape ({len(chunks)}, steps)")
            if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
                raise InputError("teacher-forced token ids outside the vocabulary", f"pass ids in [0, {vocab})")
        features = self._features(images)
        with self._exclusive():
            embeds, lengths = self._prompt_embeddings(chunks, features)
            steps = greedy_steps if tokens is None else tokens.shape[1]
            if int(lengths.max()) + steps > self.decoder.max_seq:
                raise InputError(f"prompt ({int(lengths.max())} tokens incl. image) + {steps} steps exceeds the KV "
                                 f"cache of {self.decoder.max_seq} positions",
                                 "compare fewer steps, or create the runtime with a larger max_seq")
            out = np.empty((len(chunks), steps + 1, vocab), np.float32)
            out[:, 0] = self.decoder.prefill(embeds, lengths)
            for t in range(steps):
                fed = out[:, t].argmax(-1) if tokens is None else tokens[:, t]
                out[:, t + 1] = self.decoder.decode(np.ascontiguousarray(fed, dtype=np.int64))
        return out

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the decoder (KV cache) for one generation; refuse re-entry from the same thread
        (a stream callback generating on the same runtime), which would otherwise deadlock."""
        me = threading.get_ident()
        if self._generating_thread == me:
            raise InputError("generate was called on a runtime from inside one of its own stream callbacks",
                             "collect the text in the callback and generate after the call returns, or use a "
                             "second runtime")
        with self._generate_lock:
            self._generating_thread = me
            try:
                yield
            finally:
                self._generating_thread = None

    def _prompt_embeddings(self, chunks, features) -> tuple[np.ndarray, np.ndarray]:
        dc = self.config.decoder
        return prompt_embeddings(chunks, features, self.decoder.embed_tokens, dc.vocab_size, dc.hidden_size,
                                 self.decoder.max_batch)

    def _features(self, images: Sequence[ImageInput] | np.ndarray | None) -> np.ndarray | None:
        """Image features: float arrays (B, N, hidden) pass through; images are encoded."""
        if images is None:
            return None
        if isinstance(images, np.ndarray) and images.dtype != np.uint8:
            expected = (self.num_image_tokens, self.config.decoder.hidden_size)
            if images.ndim != 3 or images.shape[1:] != expected or not np.isfinite(images).all():
                raise InputError(f"image features have shape {images.shape} (or non-finite values)",
                                 f"expected finite (B, {expected[0]}, {expected[1]}) features or uint8 images")
            return images
        return self.encode_images(list(images))


def _load_tokenizer(path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad json
        raise BundleError(f"cannot read tokenizer '{path.name}' of bundle '{path.parent}' ({str(e)[:200]})",
                          "re-export the bundle") from None

