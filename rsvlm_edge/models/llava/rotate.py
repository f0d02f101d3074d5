"""An orthogonal change of basis of a LLaMA decoder, folded into its weights (QuaRot's R1 and R2: Ashkboos et
al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", 2024; SpinQuant, Liu et al., 2024), so that
int4 / int8 weights quantise with less error and the runtime does not change.

The residual stream ``x`` (rows of C) is carried as ``x R1`` (R1 orthogonal C x C). RMSNorm commutes with
it once the norm gains are folded into the linears that read the norm (``rms(x R1) = rms(x)``), so:
readers (q, k, v, gate, up, lm_head) ``W -> (W diag(g)) R1`` with the gains set to 1; writers (o, down, and
the embedding table and the VLM projector's last linear, which put vectors into the stream)
``W -> R1^T W``, their biases ``b -> b R1``. Each head's values are carried as ``v R2`` (R2: head_dim x
head_dim, one per layer, shared by every head so that grouped-query heads agree): v's rows per head
``R2^T W_v[h]``, its bias ``b_v[h] R2``, o's columns per head ``W_o[:, h] R2``. Attention scores
(q, k, RoPE) are untouched. The rotated model computes the same logits in exact arithmetic (tested to
float rounding); what changes is what the quantiser sees: each weight row mixes all input channels, so the
large-weight input channels of LLaMA checkpoints and heavy-tailed rows no longer set the scale of their
int4 groups (incoherence processing).

``R`` is a randomised Hadamard matrix (``diag(signs) H / sqrt(n)``, applied by the fast Walsh-Hadamard
transform) where ``n`` is a power of two, else a random orthogonal matrix (QR of a Gaussian one); both
seeded, so an export is reproducible.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import DecoderConfig

ROWS_PER_CHUNK = 4096  # rows rotated at once: bounded fp32 temporaries for an embedding table of any size


@dataclass(frozen=True)
class Rotation:
    """An orthogonal ``n x n`` matrix R: ``signs`` (n,) +-1 of a randomised Hadamard matrix, or ``dense``."""

    n: int
    signs: np.ndarray | None = None
    dense: np.ndarray | None = None

    @classmethod
    def seeded(cls, n: int, seed: int) -> "Rotation":
        rng = np.random.default_rng(seed)
        if n >= 1 and n & (n - 1) == 0:
            return cls(n, signs=rng.choice(np.array([-1.0, 1.0], np.float32), n))
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        return cls(n, dense=(q * np.sign(np.diag(r))).astype(np.float32))

    @property
    def kind(self) -> str:
        return "hadamard" if self.signs is not None else "orthogonal"

    def right(self, x: np.ndarray) -> np.ndarray:
        """``x`` (m, n) -> ``x R`` (m, n) float32."""
        if x.ndim != 2 or x.shape[1] != self.n:
            raise ValueError(f"rotation of {self.n} applied to rows of shape {x.shape}")
        out = np.empty(x.shape, np.float32)
        for r0 in range(0, len(x), ROWS_PER_CHUNK):
            rows = x[r0:r0 + ROWS_PER_CHUNK].astype(np.float32)
            if self.dense is not None:
                out[r0:r0 + len(rows)] = rows @ self.dense
            else:
                out[r0:r0 + len(rows)] = _walsh_hadamard(rows * self.signs) * np.float32(self.n ** -0.5)
        return out

    def left_transposed(self, w: np.ndarray) -> np.ndarray:
        """``w`` (n, k) -> ``R^T w`` (n, k) float32."""
        return np.ascontiguousarray(self.right(np.ascontiguousarray(w.T)).T)

    def matrix(self) -> np.ndarray:
        """R itself (n, n) float32 (for tests and small n)."""
        return self.right(np.eye(self.n, dtype=np.float32))


HADAMARD_BLOCK = 64  # the innermost Sylvester factor applied as one dense product (H_n = H_{n/64} (x) H_64)


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1), np.float32)
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _walsh_hadamard(x: np.ndarray) -> np.ndarray:
    """``x`` (m, n), n a power of two -> ``x H_n`` (Sylvester's H, entries +-1), float32: consecutive blocks of
    64 inputs times H_64 (one matrix product), then the butterflies of the outer factors in place (4.8x faster
    than butterflies alone on a TinyLlama gate matrix)."""
    m, n = x.shape
    k = min(n, HADAMARD_BLOCK)
    y = (np.ascontiguousarray(x, dtype=np.float32).reshape(-1, k) @ _sylvester(k)).reshape(m, n)
    half = np.empty((m, n // 2), np.float32)
    h = k
    while h < n:
        pairs = y.reshape(m, n // (2 * h), 2, h)
        a, b, t = pairs[:, :, 0], pairs[:, :, 1], half.reshape(m, n // (2 * h), h)
        np.subtract(a, b, out=t)
        a += b
        b[...] = t
        h *= 2
    return y


@dataclass(frozen=True)
class DecoderRotation:
    """The rotations of one decoder: ``residual`` (R1, C x C) and ``heads[i]`` (R2 of layer i)."""

    residual: Rotation
    heads: tuple[Rotation, ...]
    seed: int

    @classmethod
    def seeded(cls, config: DecoderConfig, seed: int) -> "DecoderRotation":
        return cls(Rotation.seeded(config.hidden_size, seed),
                   tuple(Rotation.seeded(config.head_dim, seed + 1 + i) for i in range(config.num_layers)), seed)

    def record(self) -> dict[str, Any]:
        """What the bundle's manifest records (``schema.DecoderRotationRecord``)."""
        return {"residual": self.residual.kind, "heads": self.heads[0].kind if self.heads else "hadamard",
                "seed": self.seed}

    def projector_output(self, weight: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The VLM projector's last linear (C, k) and bias (C,) writing image features into the rotated stream."""
        return self.residual.left_transposed(weight), None if bias is None else self.residual.right(bias[None])[0]


_UNROTATED = re.compile(r"(layers\.\d+\.(q|k|gate|up)_proj|lm_head)\.bias")
_READERS = {"input_layernorm": ("q_proj", "k_proj", "v_proj"), "post_attention_layernorm": ("gate_proj", "up_proj")}
_LAYER_NAME = re.compile(r"layers\.(\d+)\.(\w+)\.(weight|bias)")


class RotatedDecoder(Mapping[str, np.ndarray]):
    """Decoder ``tensors`` (canonical names; values turned into numpy arrays by ``as_array``) in the rotated
    basis, each tensor computed when it is read: matrices as ``dtype``, vectors (norm gains, now 1; biases)
    float32. Reading one tensor holds only its own fp32 temporaries, so an export that converts tensor by tensor
    never holds a second copy of the decoder. The same names as ``tensors``; a name without a rule is refused
    up front (ValueError)."""

    def __init__(self, config: DecoderConfig, tensors: Mapping[str, Any], rotation: DecoderRotation,
                 as_array: Callable[[Any], np.ndarray] = np.asarray, dtype: type = np.float16) -> None:
        self.config, self.tensors, self.rotation, self.as_array, self.dtype = config, tensors, rotation, as_array, dtype
        for name in tensors:
            if self._rule(name) is None:
                raise ValueError(f"decoder tensor '{name}' has no rule in the rotation")

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self):
        return iter(self.tensors)

    def __getitem__(self, name: str) -> np.ndarray:
        rule = self._rule(name)
        if rule is None or name not in self.tensors:
            raise KeyError(name)
        a = rule()
        return np.ascontiguousarray(a, dtype=self.dtype if a.ndim == 2 else np.float32)

    def _get(self, name: str) -> np.ndarray:
        return self.as_array(self.tensors[name]).astype(np.float32)

    def _rule(self, name: str) -> Callable[[], np.ndarray] | None:
        """How ``name`` is computed in the rotated basis (see the module docstring); None: no rule."""
        r1, c, d = self.rotation.residual, self.config.hidden_size, self.config.head_dim
        if name == "embed_tokens.weight":
            return lambda: r1.right(self._get(name))
        if name == "lm_head.weight":
            return lambda: r1.right(self._get(name) * self._get("norm.weight"))
        if _UNROTATED.fullmatch(name):
            return lambda: self._get(name)
        m = _LAYER_NAME.fullmatch(name)
        if name == "norm.weight" or (m is not None and m.group(2) in _READERS and m.group(3) == "weight"):
            return lambda: np.ones(c, np.float32)
        if m is None or int(m.group(1)) >= len(self.rotation.heads):
            return None
        i, part, kind = int(m.group(1)), m.group(2), m.group(3)
        p, r2 = f"layers.{i}.", self.rotation.heads[i]
        norm = next((n for n, readers in _READERS.items() if part in readers), None)
        if kind == "weight" and norm is not None:
            def reader() -> np.ndarray:
                w = r1.right(self._get(name) * self._get(p + norm + ".weight"))
                if part == "v_proj":  # each head's rows (d, C) -> R2^T rows
                    w = np.concatenate([r2.left_transposed(w[h0:h0 + d]) for h0 in range(0, len(w), d)])
                return w
            return reader
        if name == p + "v_proj.bias":
            return lambda: r2.right(self._get(name).reshape(-1, d)).reshape(-1)
        if name == p + "o_proj.weight":  # (C, heads * d): each head's columns times R2, then R1^T on the rows
            def writer_o() -> np.ndarray:
                o = self._get(name)
                return r1.left_transposed(r2.right(o.reshape(-1, d)).reshape(o.shape))
            return writer_o
        if name == p + "down_proj.weight":
            return lambda: r1.left_transposed(self._get(name))
        if name in (p + "o_proj.bias", p + "down_proj.bias"):
            return lambda: r1.right(self._get(name)[None])[0]
        return None


def rotate_decoder(config: DecoderConfig, tensors: Mapping[str, Any], rotation: DecoderRotation,
                   as_array: Callable[[Any], np.ndarray] = np.asarray,
                   dtype: type = np.float16) -> dict[str, np.ndarray]:
    """Every tensor of ``RotatedDecoder`` computed now (a second copy of the decoder in memory)."""
    return dict(RotatedDecoder(config, tensors, rotation, as_array, dtype))
