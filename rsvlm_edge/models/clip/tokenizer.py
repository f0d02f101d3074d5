"""CLIP text tokenisation from the bundle's ``tokenizer.json`` (HF ``tokenizers``, no torch).

Gives the ids of open_clip's ``tokenize`` (``SimpleTokenizer`` with ``clean='lower'``), step by step:

1. clean: ``ftfy.fix_text``, ``html.unescape`` twice, strip, collapse whitespace (``str.split``), lower-case;
2. split into words with open_clip's own regular expression (the ``regex`` package, ``IGNORECASE``), whose
   first alternatives are open_clip's special-token names ``<start_of_text>`` / ``<end_of_text>``;
3. a word that is exactly one of those names becomes that special id (open_clip's BPE cache maps them);
   every other word is UTF-8 byte-encoded and split by the bundle's BPE model (vocabulary + merges from
   ``tokenizer.json``, end-of-word suffix ``</w>``);
4. ``[SOT] ids [EOT]``, zero padded to the context length; a longer sequence is cut to the context
   length and its last position set to EOT.

So, like open_clip, ``<|endoftext|>`` / ``<|startoftext|>`` in a label are ordinary text (``<``, ``|``,
``endof``, ...), while ``<end_of_text>`` / ``<start_of_text>`` (any case, when a word starts there) are
special ids. Only the BPE model is read from ``tokenizer.json``; its normalizer, pre-tokenizer, added
tokens and post-processor are ignored, so files written by older exporters (which registered
``<|startoftext|>`` / ``<|endoftext|>`` as added special tokens that HF would parse out of user text)
give the same ids.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import BundleError, InputError, RsvlmError

SOT_TOKEN = "<|startoftext|>"  # names of the ids 49406 / 49407 in our tokenizer.json
EOT_TOKEN = "<|endoftext|>"
# open_clip's names for the same ids; its word pattern matches them in (cleaned) text.
OPEN_CLIP_SOT = "<start_of_text>"
OPEN_CLIP_EOT = "<end_of_text>"
# open_clip.tokenizer.SimpleTokenizer.pat, compiled with regex.IGNORECASE.
WORD_PATTERN = (OPEN_CLIP_SOT + "|" + OPEN_CLIP_EOT
                + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")

_CACHE_MAX = 65536  # words; cleared when full (labels repeat across templates and calls)


def bytes_to_unicode() -> dict[int, str]:
    """open_clip's byte -> printable character table (GPT-2 byte-level BPE), in open_clip's order
    (printable bytes first: the order of the first 256 vocabulary entries)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_ENCODER = [c for _, c in sorted(bytes_to_unicode().items())]  # indexed by byte


def clean_text(text: str) -> str:
    """open_clip's ``_clean_lower``: ``whitespace_clean(basic_clean(text)).lower()``."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """``ClipTokenizer(path, context_length)(texts)`` -> int64 ``(len(texts), context_length)`` ids."""

    def __init__(self, path: str | Path, context_length: int = 77) -> None:
        try:
            import regex
        except ImportError as e:  # pragma: no cover - a runtime dependency
            raise RsvlmError("the CLIP tokenizer needs the 'regex' package (open_clip's word splitter)",
                             "pip install regex") from e
        from tokenizers import Tokenizer, models

        if isinstance(context_length, bool) or not isinstance(context_length, int | np.integer) or context_length < 1:
            raise InputError(f"context_length {context_length!r} must be a positive integer",
                             "use the bundle's context_length (77 for CLIP)")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise BundleError(f"cannot read CLIP tokenizer '{path}': {e}",
                              "re-export the bundle (`rsvlm-edge export clip`)") from e
        model = tok.model
        sot = tok.token_to_id(SOT_TOKEN)
        eot = tok.token_to_id(EOT_TOKEN)
        if sot is None:
            sot = tok.token_to_id(OPEN_CLIP_SOT)
        if eot is None:
            eot = tok.token_to_id(OPEN_CLIP_EOT)
        if not isinstance(model, models.BPE) or model.end_of_word_suffix != "</w>" or sot is None or eot is None:
            raise BundleError(f"'{path}' is not a CLIP BPE tokenizer (BPE with '</w>' suffix and "
                              f"{SOT_TOKEN}/{EOT_TOKEN})", "re-export the bundle (`rsvlm-edge export clip`)")
        self.path = Path(path)
        self.context_length = int(context_length)
        self.sot_id = int(sot)
        self.eot_id = int(eot)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self._model = model
        self._pattern = regex.compile(WORD_PATTERN, regex.IGNORECASE)
        self._special = {OPEN_CLIP_SOT: (self.sot_id,), OPEN_CLIP_EOT: (self.eot_id,)}
        self._cache: dict[str, tuple[int, ...]] = {}

    def _word_ids(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is None:
            ids = self._special.get(word)
            if ids is None:
                encoded = "".join(_BYTE_ENCODER[b] for b in word.encode("utf-8"))
                ids = tuple(t.id for t in self._model.tokenize(encoded))
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """BPE ids of one text, without SOT/EOT (open_clip's ``SimpleTokenizer.encode``); stops once
        ``limit`` ids are collected when given."""
        ids: list[int] = []
        for m in self._pattern.finditer(clean_text(text)):
            ids.extend(self._word_ids(m.group()))
            if limit is not None and len(ids) >= limit:
                break
        return ids

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        """int64 (len(texts), context_length) token ids, identical to ``open_clip.tokenize``."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        n_ctx = self.context_length
        out = np.zeros((len(texts), n_ctx), dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text {i} is a {type(text).__name__}, not a string", "pass labels as str")
            # Ids past the context are cut anyway; n_ctx of them is enough to know the result. (ftfy
            # joins surrogate pairs and replaces lone surrogates with U+FFFD, so every word encodes.)
            tokens = [self.sot_id, *self.encode(text, limit=n_ctx), self.eot_id]
            if len(tokens) > n_ctx:
                tokens = tokens[:n_ctx]
                tokens[-1] = self.eot_id
            out[i, : len(tokens)] = tokens
        return out
