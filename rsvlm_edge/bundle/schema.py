"""The bundle manifest: one typed schema (pydantic) for every architecture.

A manifest has the same shape for CLIP and LLaVA bundles:

* ``parts``: what runs, by name. A ``graph`` part is an ONNX graph with its input/output names,
  dtypes and shapes (``"batch"`` marks the dynamic batch dimension); a ``decoder`` part is a
  LLaMA-family decoder's weights. CLIP has ``image`` + ``text`` graphs; LLaVA has a ``vision``
  graph and a ``decoder``.
* ``model``: the architecture's own configuration (``ClipModel`` or ``LlavaModel``).
* ``tokenizer``, ``preprocess``, ``prompts``, ``source``, ``validation``, ``files``.

Graph I/O names are read from here and nowhere else. Every number a runtime sizes memory or loops
with is range-checked, every path the manifest names must stay inside the bundle, and every part's
file must be listed (with size + sha256) in ``files``. A manifest that fails any check is refused
with a ``BundleError`` naming the field.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import BundleError

FORMAT_NAME = "rsvlm-bundle"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"

MAX_IMAGE_SIZE = 8192
MAX_BATCH = 65536
MAX_CONTEXT = 1 << 20
MAX_WIDTH = 1 << 16
MAX_LAYERS = 1024
MAX_VOCAB = 1 << 22

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_relpath(value: str) -> str:
    """A path inside the bundle: relative, POSIX, no '..', no empty or odd components."""
    if not isinstance(value, str) or not value or "\x00" in value or "\\" in value:
        raise ValueError(f"{value!r} is not a relative path inside the bundle")
    p = PurePosixPath(value)
    if p.is_absolute() or any(part in ("..", ".", "") for part in value.split("/")):
        raise ValueError(f"{value!r} leaves the bundle (absolute path or '..')")
    return value


RelPath = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(check_relpath)]
PosInt = Annotated[int, Field(strict=True, ge=1)]
Dim = Union[Annotated[int, Field(strict=True, ge=1)], Literal["batch"]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FileEntry(_Strict):
    size: Annotated[int, Field(strict=True, ge=0)]
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256.match(v):
            raise ValueError("must be 64 lower-case hex digits")
        return v


class TensorSpec(_Strict):
    """One graph input or output: name, dtype and shape ("batch" = the dynamic batch dimension)."""

    name: Annotated[str, Field(min_length=1)]
    dtype: Literal["uint8", "int64", "int32", "float32", "float16"]
    shape: Annotated[list[Dim], Field(min_length=1, max_length=8)]


S8S8 = "s8s8"  # the variant key of a symmetric int8 QDQ graph (TensorRT's INT8)


class GraphVariant(_Strict):
    """Another encoding of the same graph (same inputs and outputs) for backends that cannot run the
    part's main file. ``s8s8``: int8 QDQ with symmetric int8 activations (zero point 0) and
    per-channel symmetric int8 weights, from the same calibration as the main U8S8 graph; TensorRT
    (``trt``, ``ort-tensorrt``) runs this one, onnxruntime's CPU kernels the main one."""

    file: RelPath
    precision: Literal["int8-qdq"]
    activations: Literal["int8-symmetric"]
    weights: Literal["int8-symmetric-per-channel"]


class NativeTower(_Strict):
    """The same part's weights for the ``native`` graph backend (our C++ kernels, no graph): an
    open_clip ``VisionTransformer`` (``open_clip-vit``: patch embedding + ln_pre, pre-LN residual
    blocks, ln_post on the class token, projection) as safetensors with the tower's own state-dict
    names (``conv1.weight``, ``transformer.resblocks.0.attn.in_proj_weight``, ...). ``precision``:
    ``fp32``; ``fp16`` (the four linear weights of every block fp16, the rest fp32); ``w8`` (those
    weights int8 per output channel with fp32 ``<name>.scale``, run W8A8 by ``qlinear``). Every size
    is read from the tensors' shapes except the two the state dict does not record: ``heads`` and
    ``activation``."""

    architecture: Literal["open_clip-vit"]
    file: RelPath
    precision: Literal["fp32", "fp16", "w8"]
    heads: Annotated[int, Field(strict=True, ge=1, le=1024)]
    activation: Literal["gelu", "quick_gelu"]


class GraphPart(_Strict):
    """An ONNX graph run by a graph backend (onnxruntime, TensorRT). ``variants`` (optional, by key,
    e.g. ``s8s8``): other encodings of the same graph; manifests without it stay valid. ``native``
    (optional): the same part as weights for our own kernels (``NativeTower``)."""

    kind: Literal["graph"] = "graph"
    file: RelPath
    precision: Literal["fp32", "fp16", "int8-qdq"]
    inputs: Annotated[list[TensorSpec], Field(min_length=1)]
    outputs: Annotated[list[TensorSpec], Field(min_length=1)]
    variants: dict[Literal["s8s8"], GraphVariant] = Field(default_factory=dict)
    native: Optional[NativeTower] = None

    @model_validator(mode="after")
    def _variants_need_int8(self) -> "GraphPart":
        if self.variants and self.precision != "int8-qdq":
            raise ValueError(f"a {self.precision} graph has no int8 variants (only int8-qdq parts carry one)")
        return self


class GptqCalibration(_Strict):
    """What GPTQ calibrated on: ``windows`` sequences of ``tokens_per_window`` tokens, ``text_windows`` of
    them from ``source`` (a --calib-text file or the built-in text), the rest random token ids."""

    source: Annotated[str, Field(min_length=1, max_length=200)]
    windows: PosInt
    tokens_per_window: PosInt
    text_windows: Annotated[int, Field(strict=True, ge=0)]
    random_token_windows: Annotated[int, Field(strict=True, ge=0)]


class AwqSearch(_Strict):
    """AWQ's scale search: ``grid`` ratios tried per layer input on ``sample_rows`` calibration rows;
    ``scaled_inputs`` of the ``inputs`` searched kept scales other than 1."""

    grid: PosInt
    sample_rows: PosInt
    inputs: PosInt
    scaled_inputs: Annotated[int, Field(strict=True, ge=0)]


class W4Quantization(_Strict):
    """How a w4 decoder's integers were chosen: ``rtn`` (round to nearest), ``gptq`` (with its damping and
    calibration), ``awq`` (activation-aware scales on calibration text, then round to nearest) or ``awq-gptq``
    (both). One scale per ``group`` inputs in every case (a layer whose input width is not a multiple of it
    has one group per row, see ``models/llava/quant.py``); the runtime reads them all alike."""

    method: Literal["rtn", "gptq", "awq", "awq-gptq"]
    group: PosInt
    damp: Optional[Annotated[float, Field(strict=False, gt=0, lt=1)]] = None
    calibration: Optional[GptqCalibration] = None
    awq: Optional[AwqSearch] = None

    @model_validator(mode="after")
    def _method_has_its_record(self) -> "W4Quantization":
        if (self.method != "rtn") != (self.calibration is not None):
            raise ValueError(f"method '{self.method}' records its calibration if and only if it is not 'rtn'")
        if self.method.endswith("gptq") != (self.damp is not None):
            raise ValueError(f"method '{self.method}' records damp if and only if it runs GPTQ")
        if self.method.startswith("awq") != (self.awq is not None):
            raise ValueError(f"method '{self.method}' records its AWQ search if and only if it runs AWQ")
        return self


class DecoderRotationRecord(_Strict):
    """export --rotate: the decoder's residual stream (``residual``) and each layer's value heads (``heads``)
    carried in a seeded orthogonal basis folded into the weights, the embeddings and the projector
    (``models/llava/rotate.py``). The runtime computes the same logits; hidden states read from outside
    the decoder are in the rotated basis."""

    residual: Literal["hadamard", "orthogonal"]
    heads: Literal["hadamard", "orthogonal"]
    seed: Annotated[int, Field(strict=True, ge=0)]


class DecoderPart(_Strict):
    """LLaMA-family decoder weights (safetensors, canonical names) run by a decoder backend.
    ``quantization`` (w4 only, optional: manifests without it stay valid) records how the int4 weights were
    chosen."""

    kind: Literal["decoder"] = "decoder"
    file: RelPath
    precision: Literal["fp32", "fp16", "w8", "w4"]
    quantization: Optional[W4Quantization] = None
    rotation: Optional[DecoderRotationRecord] = None

    @model_validator(mode="after")
    def _quantization_is_w4(self) -> "DecoderPart":
        if self.quantization is not None and self.precision != "w4":
            raise ValueError(f"a {self.precision} decoder has no w4 quantization record")
        return self


Part = Annotated[Union[GraphPart, DecoderPart], Field(discriminator="kind")]


class TokenizerSpec(_Strict):
    """``clip-bpe``: open_clip's BPE as a tokenizers JSON (cleaning + SOT/EOT + padding done by
    the runtime); ``hf``: a transformers tokenizer.json used as it is."""

    file: RelPath
    kind: Literal["clip-bpe", "hf"]
    context_length: Annotated[int, Field(strict=True, ge=2, le=MAX_CONTEXT)] | None = None
    sot_id: Annotated[int, Field(strict=True, ge=0)] | None = None
    eot_id: Annotated[int, Field(strict=True, ge=0)] | None = None


class Preprocess(_Strict):
    """Host-side image preparation; normalisation (mean/std) happens inside the graph.

    ``crop_rounding``: where the centre crop starts when the margin is odd: ``round`` as
    torchvision's ``CenterCrop`` (open_clip), ``floor`` as transformers' ``CLIPImageProcessor``
    (LLaVA/GeoChat). ``fill_rgb``: the pad colour of ``pad_to_square`` (LLaVA's ``expand2square``).
    """

    image_size: Annotated[int, Field(strict=True, ge=1, le=MAX_IMAGE_SIZE)]
    resize: Literal["shortest-side"] = "shortest-side"
    crop: Literal["center"] = "center"
    crop_rounding: Literal["round", "floor"] = "round"
    interpolation: Literal["bicubic"] = "bicubic"
    pad_to_square: bool = False
    fill_rgb: Annotated[list[Annotated[int, Field(strict=True, ge=0, le=255)]], Field(min_length=3, max_length=3)] = [0, 0, 0]
    mean: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=3, max_length=3)]
    std: Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]], Field(min_length=3, max_length=3)]
    normalize: Literal["in-graph"] = "in-graph"


class Source(_Strict):
    checkpoint: str
    layout: str


class ClipModel(_Strict):
    """open_clip ViT CLIP shape (what ``export clip`` inferred from the checkpoint)."""

    name: str
    embed_dim: Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
    image_size: Annotated[int, Field(strict=True, ge=1, le=MAX_IMAGE_SIZE)]
    patch_size: Annotated[int, Field(strict=True, ge=1, le=MAX_IMAGE_SIZE)]
    vision_width: Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
    vision_layers: Annotated[int, Field(strict=True, ge=1, le=MAX_LAYERS)]
    vision_head_width: Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
    vision_mlp_ratio: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    text_width: Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
    text_layers: Annotated[int, Field(strict=True, ge=1, le=MAX_LAYERS)]
    text_heads: Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
    text_mlp_ratio: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    context_length: Annotated[int, Field(strict=True, ge=2, le=MAX_CONTEXT)]
    vocab_size: Annotated[int, Field(strict=True, ge=1, le=MAX_VOCAB)]
    activation: Literal["gelu", "quick_gelu"]
    logit_scale: Annotated[float, Field(gt=0, le=1e4, allow_inf_nan=False)] = 100.0
    activation_reason: str | None = None

    @model_validator(mode="after")
    def _divisible(self) -> "ClipModel":
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.vision_head_width:
            raise ValueError(f"vision_width {self.vision_width} is not a multiple of vision_head_width")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} is not a multiple of text_heads {self.text_heads}")
        return self


class DecoderModel(_Strict):
    model_type: Literal["llama", "mistral", "qwen2"]
    vocab_size: Annotated[int, Field(strict=True, ge=1, le=MAX_VOCAB)]
    hidden_size: Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
    intermediate_size: Annotated[int, Field(strict=True, ge=1, le=4 * MAX_WIDTH)]
    num_layers: Annotated[int, Field(strict=True, ge=1, le=MAX_LAYERS)]
    num_heads: Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
    num_kv_heads: Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
    head_dim: Annotated[int, Field(strict=True, ge=2, le=1024)]
    rms_norm_eps: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    rope_theta: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    max_position_embeddings: Annotated[int, Field(strict=True, ge=1, le=MAX_CONTEXT)]
    attention_bias: bool
    bos_token_id: Annotated[int, Field(strict=True, ge=0)] | None
    eos_token_id: Annotated[int, Field(strict=True, ge=0)] | None

    @model_validator(mode="after")
    def _heads(self) -> "DecoderModel":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even (rotary embedding)")
        for name in ("bos_token_id", "eos_token_id"):
            tok = getattr(self, name)
            if tok is not None and tok >= self.vocab_size:
                raise ValueError(f"{name} {tok} is outside the vocabulary of {self.vocab_size}")
        return self


class VisionModel(_Strict):
    hidden_size: Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
    intermediate_size: Annotated[int, Field(strict=True, ge=1, le=4 * MAX_WIDTH)]
    num_layers: Annotated[int, Field(strict=True, ge=1, le=MAX_LAYERS)]
    num_heads: Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
    patch_size: Annotated[int, Field(strict=True, ge=1, le=MAX_IMAGE_SIZE)]
    image_size: Annotated[int, Field(strict=True, ge=1, le=MAX_IMAGE_SIZE)]
    layer_norm_eps: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    hidden_act: str
    select_layer: Annotated[int, Field(strict=True, ge=-MAX_LAYERS, le=MAX_LAYERS)]
    select_feature: Literal["patch", "cls_patch"]


class LlavaModel(_Strict):
    decoder: DecoderModel
    vision: VisionModel
    projector_type: Literal["linear", "mlp2x_gelu"]
    num_image_tokens: Annotated[int, Field(strict=True, ge=1)]
    source_layout: str


REQUIRED_PARTS: dict[str, dict[str, str]] = {
    "clip": {"image": "graph", "text": "graph"},
    "llava": {"vision": "graph", "decoder": "decoder"},
}


class Manifest(BaseModel):
    """``manifest.json`` of a bundle (format version 2)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Literal["rsvlm-bundle"]
    format_version: Literal[2]
    created: str
    created_by: str
    name: str
    architecture: Literal["clip", "llava"]
    source: Source
    model: Union[ClipModel, LlavaModel]
    parts: dict[str, Part]
    tokenizer: TokenizerSpec
    preprocess: Preprocess
    prompts: dict[str, Any]
    max_batch: Annotated[int, Field(strict=True, ge=1, le=MAX_BATCH)]
    validation: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    files: dict[str, FileEntry]

    @field_validator("files")
    @classmethod
    def _file_names(cls, v: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in v:
            check_relpath(name)
        if MANIFEST in v:
            raise ValueError(f"{MANIFEST} cannot list itself")
        return v

    @model_validator(mode="before")
    @classmethod
    def _model_by_architecture(cls, data: Any) -> Any:
        # Validate ``model`` against the architecture's own schema (no silent union fallback).
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            arch = data.get("architecture")
            kind = {"clip": ClipModel, "llava": LlavaModel}.get(arch)
            if kind is not None:
                try:
                    data = {**data, "model": kind.model_validate(data["model"])}
                except ValidationError as e:
                    raise ValueError(_describe(e, prefix="model.")) from None
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        for name, kind in REQUIRED_PARTS[self.architecture].items():
            part = self.parts.get(name)
            if part is None or part.kind != kind:
                raise ValueError(f"a {self.architecture} bundle needs a '{name}' {kind} part")
        for name, part in self.parts.items():
            if part.file not in self.files:
                raise ValueError(f"part '{name}' names file '{part.file}', which 'files' does not list")
            for key, variant in getattr(part, "variants", {}).items():
                if variant.file not in self.files:
                    raise ValueError(f"variant '{key}' of part '{name}' names file '{variant.file}', which 'files' "
                                     "does not list")
                if variant.file == part.file:
                    raise ValueError(f"variant '{key}' of part '{name}' names the part's own file '{part.file}'")
            native = getattr(part, "native", None)
            if native is not None and native.file not in self.files:
                raise ValueError(f"the native weights of part '{name}' name file '{native.file}', which 'files' "
                                 "does not list")
        if self.tokenizer.file not in self.files:
            raise ValueError(f"tokenizer file '{self.tokenizer.file}' is not listed in 'files'")
        size = self.preprocess.image_size
        if isinstance(self.model, ClipModel):
            if self.model.image_size != size:
                raise ValueError(f"model.image_size {self.model.image_size} != preprocess.image_size {size}")
            if self.tokenizer.kind != "clip-bpe" or self.tokenizer.context_length != self.model.context_length:
                raise ValueError("a clip bundle needs a clip-bpe tokenizer with the model's context_length")
            _expect(self.parts["image"], "image", [["batch", size, size, 3]], [["batch", self.model.embed_dim]])
            _expect(self.parts["text"], "text", [["batch", self.model.context_length]], [["batch", self.model.embed_dim]])
        else:
            vision, dec = self.model.vision, self.model.decoder
            if vision.image_size != size or size % vision.patch_size:
                raise ValueError(f"vision image_size {vision.image_size} / patch {vision.patch_size} do not match "
                                 f"preprocess.image_size {size}")
            grid = (size // vision.patch_size) ** 2 + (1 if vision.select_feature == "cls_patch" else 0)
            if grid != self.model.num_image_tokens:
                raise ValueError(f"num_image_tokens {self.model.num_image_tokens} != {grid} from the vision shape")
            _expect(self.parts["vision"], "vision", [["batch", size, size, 3]],
                    [["batch", self.model.num_image_tokens, dec.hidden_size]])
        return self


def _expect(part: Any, name: str, inputs: list[list[Any]], outputs: list[list[Any]]) -> None:
    got_in = [list(t.shape) for t in part.inputs]
    got_out = [list(t.shape) for t in part.outputs]
    if got_in != inputs or got_out != outputs:
        raise ValueError(f"part '{name}' has shapes {got_in} -> {got_out}, the model needs {inputs} -> {outputs}")


def parse_manifest(data: Any, where: str) -> Manifest:
    """Validate a (migrated) manifest dict; one ``BundleError`` naming the first bad field."""
    if not isinstance(data, dict):
        raise BundleError(f"{where} holds a JSON {type(data).__name__}, not an object",
                          "re-export the bundle with `rsvlm-edge export`")
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise BundleError(f"{where}: {_describe(e)}",
                          "re-export the bundle with `rsvlm-edge export`; never edit manifest.json by hand") from None


def _describe(e: ValidationError, prefix: str = "") -> str:
    """``field 'loc': message`` of the first error (with a count of the others)."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-"))
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
    return f"field '{prefix}{loc}': {msg}{more}" if loc else f"{msg}{more}"
