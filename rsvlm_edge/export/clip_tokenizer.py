"""Build CLIP's byte-level BPE tokenizer as a ``tokenizers`` ``tokenizer.json`` from open_clip's
vocabulary file, so the runtime tokenises without open_clip or torch.

The runtime (``rsvlm_edge.models.clip.tokenizer.ClipTokenizer``) reads only the BPE model (vocabulary,
merges, ``</w>`` suffix) from this file and does open_clip's cleaning (ftfy, html.unescape, whitespace,
lower-case) and word splitting itself. The normalizer / pre-tokenizer / post-processor written here are an
approximation for tools that load the file with HF ``tokenizers`` directly. ``<|startoftext|>`` /
``<|endoftext|>`` (ids 49406 / 49407) are in the vocabulary but are not registered as added tokens, so
``tokenizers`` never parses them out of user text (open_clip treats them as ordinary text). Files written
before this change registered them as added special tokens; the runtime ignores that.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

from ..models.clip.tokenizer import bytes_to_unicode


def write_clip_tokenizer(dest: Path) -> None:
    """Write ``tokenizer.json`` equivalent to open_clip's SimpleTokenizer (vocab 49408)."""
    from open_clip.tokenizer import default_bpe
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<|endoftext|>",
                               end_of_word_suffix="</w>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])],
    )
    try:
        tok.save(str(dest))
    except Exception as e:  # tokenizers (Rust) raises a bare Exception "... (os error N)" for I/O failures
        m = re.search(r"\(os error (\d+)\)", str(e))
        if m is None:
            raise
        errno_ = int(m.group(1))
        raise OSError(errno_, os.strerror(errno_), str(dest)) from None
