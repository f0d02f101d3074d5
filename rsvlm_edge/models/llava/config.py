"""The VLM model description stored in a bundle's manifest (``manifest["model"]``).

One dataclass per part: the LLaMA-family decoder, the CLIP vision tower and the projector. They
are written by the exporter from the checkpoint's own config.json (or inferred from tensor shapes
where a LLaVA checkpoint does not carry a vision config) and read back by the runtime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ...errors import BundleError

DECODER_TYPES = ("llama", "mistral", "qwen2")
PROJECTOR_TYPES = ("linear", "mlp2x_gelu")
SELECT_FEATURES = ("patch", "cls_patch")


@dataclass(frozen=True)
class DecoderConfig:
    """LLaMA-family decoder shape (LLaMA, Vicuna, Mistral, TinyLlama; Qwen2 = LLaMA + qkv bias)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    attention_bias: bool
    bos_token_id: int | None
    eos_token_id: int | None

    @property
    def num_params(self) -> int:
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * self.num_heads * d * 2 + h * self.num_kv_heads * d * 2
        per_layer = attn + 3 * h * i + 2 * h
        return self.num_layers * per_layer + 2 * self.vocab_size * h + h


@dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT vision tower, as run up to ``select_layer`` (a hidden-states index, e.g. -2)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    patch_size: int
    image_size: int
    layer_norm_eps: float
    hidden_act: str
    select_layer: int
    select_feature: str

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Image feature rows spliced into the prompt per image."""
        return self.grid * self.grid + (1 if self.select_feature == "cls_patch" else 0)


@dataclass(frozen=True)
class VlmConfig:
    decoder: DecoderConfig
    vision: VisionConfig
    projector_type: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "decoder": asdict(self.decoder),
            "vision": asdict(self.vision),
            "projector_type": self.projector_type,
            "num_image_tokens": self.vision.num_tokens,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "VlmConfig":
        try:
            return VlmConfig(
                decoder=_build(DecoderConfig, d["decoder"]),
                vision=_build(VisionConfig, d["vision"]),
                projector_type=d["projector_type"],
            )
        except (KeyError, TypeError) as e:
            raise BundleError(
                f"bundle manifest 'model' section is incomplete ({e})",
                "re-export the bundle with `rsvlm-edge export vlm`",
            ) from None


def _build(cls, d: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    missing = names - d.keys()
    if missing:
        raise KeyError(f"{cls.__name__} lacks {sorted(missing)}")
    return cls(**{k: d[k] for k in names})
