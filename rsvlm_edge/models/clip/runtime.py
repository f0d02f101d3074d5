"""``ClipRuntime``: batched image/text embedding, zero-shot classification and retrieval over a
CLIP bundle. Imports numpy, onnxruntime and tokenizers only (never torch).

The ``image`` and ``text`` graph parts run on graph backends chosen by the backend registry. A
runtime may be shared by several threads: the graph sessions are thread-safe and the class-embedding
cache is guarded by a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...backends import open_graph
from ...bundle import Bundle
from ...errors import InputError
from ...images import IMAGE_SUFFIXES, ImageInput, clip_pixels
from .prompts import check_labels, resolve_templates
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


class ClipRuntime:
    """A loaded CLIP bundle. Inputs of any batch size are split into the bundle's ``max_batch``."""

    def __init__(self, bundle: Bundle, backend: str = "auto", threads: int | None = None) -> None:
        if bundle.architecture != "clip":
            raise InputError(f"'{bundle.path}' is a {bundle.architecture} bundle, not a CLIP bundle",
                             "use `rsvlm-edge ask` / `caption` for VLM bundles")
        self.bundle = bundle
        m = bundle.manifest
        self.image_size: int = m.preprocess.image_size
        self.max_batch: int = m.max_batch
        self.logit_scale: float = m.model.logit_scale
        self._image = open_graph(m.parts["image"], bundle.part_file("image"), backend, "image", threads=threads)
        self._text = open_graph(m.parts["text"], bundle.part_file("text"), backend, "text", threads=threads)
        self._image_in, self._text_in = m.parts["image"].inputs[0].name, m.parts["text"].inputs[0].name
        self.backend = self._image.backend
        self.tokenizer = ClipTokenizer(bundle.file(m.tokenizer.file), m.tokenizer.context_length)
        self.default_templates: str = m.prompts.get("default", "satellite")
        self._class_cache: dict[tuple, np.ndarray] = {}
        self._cache_lock = threading.Lock()

    @property
    def embed_dim(self) -> int:
        return int(self.bundle.model.embed_dim)

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
        if hit is None:
            emb = self.encode_texts([t.format(c) for c in labels for t in tmpl])
            hit = l2_normalize(emb.reshape(len(labels), len(tmpl), -1).mean(axis=1))
            with self._cache_lock:
                self._class_cache[key] = hit
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
