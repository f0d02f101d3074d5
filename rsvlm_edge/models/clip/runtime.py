"""``ClipRuntime``: batched image/text embedding, zero-shot classification and retrieval over a
CLIP bundle. Imports numpy, onnxruntime and tokenizers only (never torch).

The ``image`` and ``text`` graph parts run on graph backends chosen by the backend registry.

Thread safety: one runtime may be shared by any number of threads, and every method then returns
exactly (bit for bit) what the same call returns when made alone. The graph sessions are run
concurrently (onnxruntime's ``InferenceSession.run`` is thread-safe), the tokenizer is only read,
and the one piece of shared mutable state, the class-embedding cache, is guarded by a lock and
hands out read-only arrays, so no caller can change what another one gets.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...backends import open_graph
from ...bundle import Bundle
from ...errors import InputError
from ...images import IMAGE_SUFFIXES, ImageInput, clip_pixels
from .prompts import check_labels, fill_template, resolve_templates
from .tokenizer import ClipTokenizer


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class Classification:
    """Zero-shot result: ``probs`` (N, C) softmax over labels, ``labels`` (C)."""

    labels: list[str]
    probs: np.ndarray

    def top(self, k: int = 1) -> list[list[tuple[str, float]]]:
        """Per image, the k best (label, probability) pairs, best first."""
        k = min(k, len(self.labels))
        order = np.argsort(-self.probs, axis=1)[:, :k]
        return [[(self.labels[j], float(self.probs[i, j])) for j in row] for i, row in enumerate(order)]


CLASS_CACHE_SIZE = 64  # label sets whose class embeddings are kept


def clip_batch_bytes(bundle: Bundle, batch: int, max_batch: int | None = None) -> int:
    """Estimated memory (bytes) of preparing and encoding ``batch`` images at once: their uint8
    pixels, plus the graph's float input and activations for at most ``max_batch`` of them (the
    runtime never sends more to the graph at once). For refusing a batch size before allocating."""
    m = bundle.model
    s = bundle.manifest.preprocess.image_size
    tokens = (s // m.patch_size) ** 2 + 1
    heads = max(m.vision_width // m.vision_head_width, 1)
    in_graph = 4 * (3 * s * s + 12 * tokens * m.vision_width + heads * tokens * tokens)
    cap = bundle.manifest.max_batch if max_batch is None else max_batch
    return int(batch) * 3 * s * s + min(int(batch), cap) * in_graph


@dataclass
class LoadedPixels:
    """Result of ``ClipRuntime.load_pixels``: uint8 (K, S, S, 3) pixels of the images that could be
    read, their indices in the input, and (index, reason) for each image that could not."""

    pixels: np.ndarray
    kept: list[int]
    skipped: list[tuple[int, str]]


class ClipRuntime:
    """A loaded CLIP bundle. Inputs of any batch size are split into batches of ``max_batch``
    (default: the bundle's; a smaller positive value may be given, not a larger one).

    Safe to share across threads (see the module docstring): concurrent calls return exactly what
    they return alone.
    """

    def __init__(self, bundle: Bundle, backend: str = "auto", threads: int | None = None,
                 max_batch: int | None = None) -> None:
        if bundle.architecture != "clip":
            raise InputError(f"'{bundle.path}' is a {bundle.architecture} bundle, not a CLIP bundle",
                             "use `rsvlm-edge ask` / `caption` for VLM bundles")
        m = bundle.manifest
        for name, value in (("threads", threads), ("max_batch", max_batch)):
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
                raise InputError(f"{name} must be a positive integer (got {value!r})",
                                 f"pass e.g. {name}=2, or leave it out")
        if max_batch is not None and max_batch > m.max_batch:
            raise InputError(f"max_batch {max_batch} is larger than the {m.max_batch} the bundle was exported for",
                             f"pass max_batch <= {m.max_batch}, or re-export with a larger --max-batch")
        self.bundle = bundle
        self.image_size: int = m.preprocess.image_size
        self.max_batch: int = int(max_batch) if max_batch is not None else m.max_batch
        self.logit_scale: float = m.model.logit_scale
        self._image = open_graph(m.parts["image"], bundle.part_file("image"), backend, "image", threads=threads)
        self._text = open_graph(m.parts["text"], bundle.part_file("text"), backend, "text", threads=threads)
        self._image_in, self._text_in = m.parts["image"].inputs[0].name, m.parts["text"].inputs[0].name
        self.backend = self._image.backend
        self.tokenizer = ClipTokenizer(bundle.file(m.tokenizer.file), m.tokenizer.context_length)
        self.default_templates: str = m.prompts.get("default", "satellite")
        self._class_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def embed_dim(self) -> int:
        return int(self.bundle.model.embed_dim)

    def batch_bytes(self, batch: int) -> int:
        """Estimated memory (bytes) of preparing and encoding ``batch`` images at once (see
        ``clip_batch_bytes``)."""
        return clip_batch_bytes(self.bundle, batch, self.max_batch)

    def load_pixels(self, images: Sequence[ImageInput], skip_errors: bool = False) -> LoadedPixels:
        """Decode and prepare ``images`` one by one. An image that cannot be read raises its
        ``InputError`` (naming the file), or with ``skip_errors`` is left out and reported."""
        s = self.image_size
        kept: list[int] = []
        skipped: list[tuple[int, str]] = []
        out: list[np.ndarray] = []
        for i, img in enumerate(images):
            try:
                out.append(clip_pixels([img], s)[0])
            except InputError as e:
                if not skip_errors:
                    raise
                skipped.append((i, e.message))
                continue
            kept.append(i)
        px = np.stack(out) if out else np.zeros((0, s, s, 3), np.uint8)
        return LoadedPixels(px, kept, skipped)

    def pixels(self, images: Sequence[ImageInput] | np.ndarray) -> np.ndarray:
        """Decode + resize + crop to uint8 (N, S, S, 3); a ready uint8 (N, S, S, 3) array passes through."""
        s = self.image_size
        if isinstance(images, np.ndarray) and images.ndim == 4:
            if images.dtype != np.uint8 or images.shape[1:] != (s, s, 3):
                raise InputError(f"image batch has shape {images.shape} {images.dtype}, expected uint8 (N, {s}, {s}, 3)",
                                 "pass a list of images to have them resized and cropped")
            return np.ascontiguousarray(images)
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence | np.ndarray):
            images = [images]  # a single path / PIL image
        return clip_pixels(list(images), s)

    def encode_images(self, images: Sequence[ImageInput] | np.ndarray, normalize: bool = True) -> np.ndarray:
        """float32 (N, E) image embeddings (L2-normalised unless ``normalize=False``)."""
        px = self.pixels(images)
        out = np.concatenate([self._image.run({self._image_in: px[i:i + self.max_batch]})[0]
                              for i in range(0, len(px), self.max_batch)])
        return l2_normalize(out) if normalize else out

    def encode_texts(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """float32 (N, E) text embeddings (L2-normalised unless ``normalize=False``)."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise InputError("no texts given", "pass at least one string")
        ids = self.tokenizer(list(texts))
        out = np.concatenate([self._text.run({self._text_in: ids[i:i + self.max_batch]})[0]
                              for i in range(0, len(ids), self.max_batch)])
        return l2_normalize(out) if normalize else out

    def class_embeddings(self, labels: Sequence[str], templates: str | Sequence[str] | None = None) -> np.ndarray:
        """float32 (C, E): per label, the normalised mean of its normalised template embeddings."""
        labels = check_labels(labels)
        tmpl = resolve_templates(templates if templates is not None else self.default_templates)
        key = (tuple(labels), tmpl)
        with self._cache_lock:
            hit = self._class_cache.get(key)
            if hit is not None:
                self._class_cache.move_to_end(key)
        if hit is None:
            emb = self.encode_texts([fill_template(t, c) for c in labels for t in tmpl])
            hit = l2_normalize(emb.reshape(len(labels), len(tmpl), -1).mean(axis=1))
            hit.flags.writeable = False  # shared by every caller: nobody may change it in place
            with self._cache_lock:
                self._class_cache[key] = hit
                while len(self._class_cache) > CLASS_CACHE_SIZE:
                    self._class_cache.popitem(last=False)
        return hit

    def classify(self, images: Sequence[ImageInput] | np.ndarray, labels: Sequence[str],
                 templates: str | Sequence[str] | None = None) -> Classification:
        """Zero-shot scene classification: softmax(logit_scale * cos(image, class))."""
        labels = check_labels(labels)
        cls = self.class_embeddings(labels, templates)
        return self._softmax(self.encode_images(images), labels, cls)

    def classify_embeddings(self, image_embeddings: np.ndarray, labels: Sequence[str],
                            templates: str | Sequence[str] | None = None) -> Classification:
        """``classify`` on L2-normalised image embeddings (N, E) already computed by ``encode_images``."""
        labels = check_labels(labels)
        return self._softmax(np.asarray(image_embeddings, dtype=np.float32), labels,
                             self.class_embeddings(labels, templates))

    def _softmax(self, image_embeddings: np.ndarray, labels: list[str], cls: np.ndarray) -> Classification:
        logits = self.logit_scale * image_embeddings @ cls.T
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return Classification(labels, p / p.sum(axis=1, keepdims=True))

    def retrieve(self, query: str | ImageInput | np.ndarray, image_embeddings: np.ndarray,
                 k: int = 10) -> list[tuple[int, float]]:
        """Top-k rows of ``image_embeddings`` (N, E) by cosine to ``query`` (text, image, or (E,) embedding)."""
        db = np.asarray(image_embeddings, dtype=np.float32)
        if db.ndim != 2 or db.shape[1] != self.embed_dim:
            raise InputError(f"image_embeddings has shape {db.shape}, expected (N, {self.embed_dim})",
                             "pass embeddings made by encode_images / `rsvlm-edge embed` with this bundle")
        if isinstance(query, str) and not _looks_like_path(query):
            q = self.encode_texts([query])[0]
        elif isinstance(query, np.ndarray) and query.ndim == 1:
            if query.shape[0] != self.embed_dim:
                raise InputError(f"query embedding has {query.shape[0]} dims, expected {self.embed_dim}")
            q = l2_normalize(query.astype(np.float32))
        else:
            q = self.encode_images([query])[0]
        scores = l2_normalize(db) @ q
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [(int(i), float(scores[i])) for i in top]


def _looks_like_path(s: str) -> bool:
    return Path(s).suffix.lower() in IMAGE_SUFFIXES and Path(s).exists()
