"""CLIP text tokenisation from the bundle's ``tokenizer.json`` (HF ``tokenizers``, no torch).

Matches open_clip's ``tokenize``: <start_of_text> tokens <end_of_text>, zero padded to the context
length; text longer than the context is truncated and its last token replaced by <end_of_text>.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"


class ClipTokenizer:
    def __init__(self, path: str | Path, context_length: int = 77) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.context_length = context_length
        self.sot_id = self.tokenizer.token_to_id(SOT_TOKEN)
        self.eot_id = self.tokenizer.token_to_id(EOT_TOKEN)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """int64 (len(texts), context_length) token ids."""
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for i, enc in enumerate(self.tokenizer.encode_batch(list(texts))):
            ids = enc.ids[: self.context_length]
            if ids[-1] != self.eot_id:
                ids[-1] = self.eot_id
            out[i, : len(ids)] = ids
        return out
