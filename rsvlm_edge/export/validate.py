"""Checks on checkpoint contents before an export trusts them (export time only: imports torch).

Every failure is a ``CheckpointError`` that names the tensor, key or file, so a hostile or broken
checkpoint is refused with one message instead of a traceback deep inside open_clip/transformers,
an ONNX graph full of NaN, or a file read from outside the checkpoint directory.

Two levels:

* ``check_tensor_file`` (called by ``torch_io.load_tensor_file`` for every weight file read): the
  object is a dict of string keys to dense tensors (no strings, numbers, lists or nested dicts where
  a tensor is expected; a training checkpoint's ``state_dict`` is what is checked), every weight is
  floating point (fp32/fp16/bf16/fp64) and finite, and tensors whose role is known from their name
  (convolution, embedding, linear, norm, bias, ...) have the rank that role needs.
* ``validate_clip_state_dict`` / ``validate_hf_clip_state_dict`` / ``validate_llava_parts``: once
  the layout is known, every transformer block is complete (no block lacking e.g.
  ``attn.in_proj_weight``) and every tensor has the shape the inferred architecture needs.

``checkpoint_file`` keeps the files a checkpoint directory names (shard-index entries) inside it.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from ..errors import CheckpointError

# Buffers that are not weights (integer position ids, BatchNorm counters, open_clip's -inf causal
# mask, the integer metadata of OpenAI's JIT state dicts): not checked for dtype or finiteness.
EXEMPT = re.compile(r"(^|\.)(position_ids|num_batches_tracked|attn_mask)$|^(input_resolution|context_length|vocab_size)$")

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")

# (pattern on the full tensor name, allowed ranks, role) -- first match wins; names matching none
# are not rank-checked here (the architecture checks below cover what the exporters use).
RANK_RULES: tuple[tuple[re.Pattern[str], tuple[int, ...], str], ...] = tuple(
    (re.compile(p), ranks, role) for p, ranks, role in (
        (r"(^|\.)(conv1|patch_embedding)\.weight$", (4,), "patch-embedding convolution"),
        (r"(^|\.)logit_scale$", (0, 1), "logit scale"),
        (r"(^|\.)class_embedding$", (1,), "class embedding"),
        (r"(^|\.)(positional_embedding|proj|text_projection)$", (2,), "projection/position embedding"),
        (r"(^|\.)in_proj_weight$", (2,), "attention in-projection"),
        (r"(^|\.)in_proj_bias$", (1,), "attention in-projection bias"),
        (r"\.bias$", (1,), "bias"),
        (r"(^|\.)(ln_[a-z0-9]+|[a-z_]*norm[0-9]*)\.weight$", (1,), "norm"),
        (r"(^|\.)(embed_tokens|token_embedding|position_embedding)\.weight$", (2,), "embedding"),
        (r"(^|\.)(q_proj|k_proj|v_proj|o_proj|out_proj|c_fc|c_proj|fc1|fc2|gate_proj|up_proj|down_proj|"
         r"linear_\d+|visual_projection|text_projection|lm_head|mm_projector(\.\d+)?)\.weight$", (2,), "linear"),
    )
)

_CHUNK = 1 << 24  # elements per finiteness check (bounded temporary memory on multi-GB tensors)


def _fail(message: str, fix: str = "the checkpoint is corrupt or was edited; restore it from its source") -> CheckpointError:
    return CheckpointError(message, fix)


def _type_name(value: Any) -> str:
    return "a nested dict" if isinstance(value, dict) else f"a {type(value).__name__}"


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def check_state_dict_structure(sd: Any, source: Path | str) -> None:
    """``sd`` is a non-empty dict of string keys to dense torch tensors."""
    import torch

    if not isinstance(sd, dict):
        raise _fail(f"checkpoint '{source}' holds a {type(sd).__name__}, expected a dict of tensors",
                    "save the model's state_dict(), not the model object")
    if not sd:
        raise _fail(f"checkpoint '{source}' holds no tensors (an empty state dict)",
                    "download or copy the checkpoint again")
    for key, value in sd.items():
        if not isinstance(key, str):
            raise _fail(f"checkpoint '{source}' has a non-string key {key!r:.80} in its state dict")
        if not isinstance(value, torch.Tensor):
            raise _fail(f"checkpoint '{source}': key '{key}' holds {_type_name(value)} where a tensor is expected",
                        "save a plain state dict (name -> tensor): torch.save(model.state_dict(), path)")
        if value.layout != torch.strided:
            raise _fail(f"checkpoint '{source}': tensor '{key}' is a {value.layout} tensor, expected a dense one",
                        "save dense weights (tensor.to_dense())")


_EXPONENT_ALL_ONES = {"float16": 0x7C00, "bfloat16": 0x7F80}  # |bits| >= this: Inf or NaN


def _has_nonfinite(t: Any) -> bool:
    """Whether a floating tensor holds NaN/Inf, in chunks with numpy's vectorised loops (16-bit
    floats by their exponent bits: torch.isfinite on fp16/bf16 runs at ~0.1 GB/s on small CPUs)."""
    import numpy as np
    import torch

    flat = t.detach().contiguous().reshape(-1)
    dtype = str(t.dtype).replace("torch.", "")
    limit = _EXPONENT_ALL_ONES.get(dtype)
    if limit is not None:
        bits = flat.view(torch.int16).numpy().view(np.uint16)
        buf = np.empty(min(_CHUNK, bits.size), np.uint16)
        for start in range(0, bits.size, _CHUNK):
            part = bits[start:start + _CHUNK]
            out = np.bitwise_and(part, np.uint16(0x7FFF), out=buf[:part.size])
            if int(out.max()) >= limit:
                return True
        return False
    arr = flat.numpy()
    return any(not np.isfinite(arr[start:start + _CHUNK]).all() for start in range(0, arr.size, _CHUNK))


def nonfinite_counts(t: Any) -> tuple[int, int]:
    """(NaN count, Inf count) of a floating tensor; (0, 0) quickly when all values are finite."""
    import torch

    if t.device.type == "meta" or t.numel() == 0:
        return 0, 0
    if not _has_nonfinite(t.cpu()):
        return 0, 0
    flat = t.detach().reshape(-1)
    return int(torch.isnan(flat).sum()), int(torch.isinf(flat).sum())


def check_weight(name: str, t: Any, source: Path | str) -> None:
    """A weight tensor is floating point, finite, and has the rank its name implies."""
    if EXEMPT.search(name):
        return
    dtype = str(t.dtype).replace("torch.", "")
    if dtype not in FLOAT_DTYPES:
        raise _fail(
            f"tensor '{name}' in '{source}' has dtype {dtype}; weights must be floating point ({', '.join(FLOAT_DTYPES)})",
            "export from the original floating-point checkpoint (quantized or integer weights are not supported)",
        )
    for pattern, ranks, role in RANK_RULES:
        if pattern.search(name):
            if t.dim() not in ranks or (role == "logit scale" and t.numel() != 1):
                want = " or ".join(f"{r}-D" for r in ranks)
                raise _fail(f"tensor '{name}' in '{source}' has shape {_shape(t)} ({t.dim()}-D); "
                            f"a {role} weight must be {want}")
            break
    nan, inf = nonfinite_counts(t)
    if nan or inf:
        raise _fail(f"tensor '{name}' in '{source}' contains non-finite values ({nan} NaN, {inf} Inf "
                    f"of {t.numel()})", "the checkpoint is corrupt (or a training run diverged); use a good copy")


def check_tensor_file(obj: Any, source: Path | str) -> None:
    """Everything ``torch_io.load_tensor_file`` returns: a state dict, or a training checkpoint
    ``{'state_dict': {...}, 'epoch': ...}`` whose ``state_dict`` is checked."""
    sd = obj.get("state_dict") if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) else obj
    check_state_dict_structure(sd, source)
    for name, t in sd.items():
        check_weight(name, t, source)


# ---- architecture-level checks ------------------------------------------------------------------

def block_indices(sd: dict[str, Any], prefix: str, what: str, source: Path | str) -> list[int]:
    """Indices N of ``prefix + "N." + ...`` keys; refuses non-numeric indices and gaps."""
    found: set[int] = set()
    for key in sd:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if not head.isdigit() or (len(head) > 1 and head.startswith("0")) or "." not in key[len(prefix):]:
                raise _fail(f"'{source}': tensor '{key}' does not name a {what} block by its number")
            found.add(int(head))
    if found and found != set(range(max(found) + 1)):
        gap = min(set(range(max(found) + 1)) - found)
        raise _fail(f"'{source}': {what} block {gap} is missing (found blocks {sorted(found)[:8]}"
                    f"{'...' if len(found) > 8 else ''})", "re-download the checkpoint (a shard may be missing)")
    return sorted(found)


def require(sd: dict[str, Any], expect: dict[str, tuple[int, ...]], source: Path | str, what: str = "") -> None:
    """Every name in ``expect`` is present with exactly that shape."""
    for name, shape in expect.items():
        if name not in sd:
            raise _fail(f"'{source}': {what}tensor '{name}' is missing", "re-download the checkpoint (a shard may be missing)")
        got = _shape(sd[name])
        if got != tuple(shape):
            raise _fail(f"'{source}': {what}tensor '{name}' has shape {got}, expected {tuple(shape)} "
                        "(from the other tensors of the checkpoint)",
                        "the checkpoint is corrupt or mixes tensors of different models")


def _optional(sd: dict[str, Any], expect: dict[str, tuple[int, ...]], source: Path | str, what: str = "") -> None:
    require(sd, {k: v for k, v in expect.items() if k in sd}, source, what)


def _tower_blocks(sd: dict[str, Any], prefix: str, unit: str, fc_in: str, what: str,
                  source: Path | str) -> tuple[list[int], int]:
    """The block indices of a transformer tower (at least one) and its MLP hidden width, read from
    block 0's ``fc_in`` weight."""
    blocks = block_indices(sd, prefix, what, source)
    if not blocks:
        raise _fail(f"'{source}': the {what} has no transformer {unit} ('{prefix}0.*' is missing)",
                    "the checkpoint is incomplete; restore it from its source")
    hidden_key = f"{prefix}0.mlp.{fc_in}.weight"
    if hidden_key not in sd:
        raise _fail(f"'{source}': tensor '{hidden_key}' is missing", "re-download the checkpoint")
    return blocks, int(sd[hidden_key].shape[0])


def _open_clip_tower(sd: dict[str, Any], prefix: str, width: int, what: str, source: Path | str) -> None:
    blocks, hidden = _tower_blocks(sd, prefix, "blocks", "c_fc", what, source)
    for i in blocks:
        b = f"{prefix}{i}."
        require(sd, {
            b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
            b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
            b + "ln_1.weight": (width,), b + "ln_1.bias": (width,), b + "ln_2.weight": (width,), b + "ln_2.bias": (width,),
            b + "mlp.c_fc.weight": (hidden, width), b + "mlp.c_fc.bias": (hidden,),
            b + "mlp.c_proj.weight": (width, hidden), b + "mlp.c_proj.bias": (width,),
        }, source)


def validate_clip_state_dict(sd: dict[str, Any], source: Path | str) -> None:
    """An open_clip-key ViT CLIP state dict: every tensor a finite float weight, every vision and
    text transformer block complete, every shape consistent. State dicts that are not of the
    open_clip ViT layout are left to ``infer_open_clip_config``'s layout messages."""
    check_state_dict_structure(sd, source)
    for name, t in sd.items():
        check_weight(name, t, source)
    required = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                "visual.proj", "token_embedding.weight", "positional_embedding", "text_projection")
    if any(k not in sd for k in required) or any(k.startswith(("visual.layer1.", "visual.attnpool.", "visual.trunk."))
                                                 for k in sd):
        return
    conv = sd["visual.conv1.weight"]
    vw, channels, ph, pw = _shape(conv)
    if channels != 3 or ph != pw or min(vw, ph) < 1:
        raise _fail(f"'{source}': visual.conv1.weight has shape {_shape(conv)}, expected (width, 3, patch, patch)")
    tw = int(sd["token_embedding.weight"].shape[1])
    vocab = int(sd["token_embedding.weight"].shape[0])
    n_pos = int(sd["visual.positional_embedding"].shape[0])
    ctx = int(sd["positional_embedding"].shape[0])
    embed = int(sd["text_projection"].shape[1])
    if min(tw, vocab, n_pos, ctx, embed) < 1:
        raise _fail(f"'{source}': a CLIP embedding tensor has a zero-size dimension")
    require(sd, {
        "visual.class_embedding": (vw,), "visual.positional_embedding": (n_pos, vw), "visual.proj": (vw, embed),
        "token_embedding.weight": (vocab, tw), "positional_embedding": (ctx, tw), "text_projection": (tw, embed),
    }, source)
    _optional(sd, {f"visual.{n}.{p}": (vw,) for n in ("ln_pre", "ln_post") for p in ("weight", "bias")}, source)
    _optional(sd, {f"ln_final.{p}": (tw,) for p in ("weight", "bias")}, source)
    _open_clip_tower(sd, "visual.transformer.resblocks.", vw, "vision tower", source)
    _open_clip_tower(sd, "transformer.resblocks.", tw, "text tower", source)


def _hf_encoder_layer(b: str, width: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """Expected shapes of one transformers CLIP encoder layer under prefix ``b``."""
    expect = {b + f"self_attn.{x}_proj.{k}": (width, width) if k == "weight" else (width,)
              for x in ("q", "k", "v", "out") for k in ("weight", "bias")}
    expect.update({b + f"layer_norm{n}.{k}": (width,) for n in (1, 2) for k in ("weight", "bias")})
    expect.update({b + "mlp.fc1.weight": (hidden, width), b + "mlp.fc1.bias": (hidden,),
                   b + "mlp.fc2.weight": (width, hidden), b + "mlp.fc2.bias": (width,)})
    return expect


def _hf_clip_tower(sd: dict[str, Any], prefix: str, width: int, what: str, source: Path | str) -> None:
    layers = f"{prefix}encoder.layers."
    blocks, hidden = _tower_blocks(sd, layers, "layers", "fc1", what, source)
    for i in blocks:
        require(sd, _hf_encoder_layer(f"{layers}{i}.", width, hidden), source)


def validate_hf_clip_state_dict(hf: dict[str, Any], source: Path | str) -> None:
    """A transformers ``CLIPModel`` state dict (``vision_model.*``, ``text_model.*``, projections),
    before it is converted to open_clip keys: every tensor a finite float weight of the right rank,
    every layer of both towers complete and of consistent shape."""
    check_state_dict_structure(hf, source)
    if hf and all(k.startswith("clip.") for k in hf):
        hf = {k[len("clip."):]: v for k, v in hf.items()}
    for name, t in hf.items():
        check_weight(name, t, source)
    v, t = "vision_model.", "text_model."
    for key in (f"{v}embeddings.patch_embedding.weight", f"{t}embeddings.token_embedding.weight",
                "visual_projection.weight", "text_projection.weight"):
        if key not in hf:
            raise _fail(f"'{source}': CLIPModel tensor '{key}' is missing", "the checkpoint is incomplete; restore it")
    vw, channels, ph, pw = _shape(hf[f"{v}embeddings.patch_embedding.weight"])
    if channels != 3 or ph != pw or min(vw, ph) < 1:
        raise _fail(f"'{source}': {v}embeddings.patch_embedding.weight has shape "
                    f"{_shape(hf[f'{v}embeddings.patch_embedding.weight'])}, expected (width, 3, patch, patch)")
    vocab, tw = _shape(hf[f"{t}embeddings.token_embedding.weight"])
    embed = int(hf["visual_projection.weight"].shape[0])
    n_pos = int(hf[f"{v}embeddings.position_embedding.weight"].shape[0]) \
        if f"{v}embeddings.position_embedding.weight" in hf else 0
    ctx = int(hf[f"{t}embeddings.position_embedding.weight"].shape[0]) \
        if f"{t}embeddings.position_embedding.weight" in hf else 0
    require(hf, {
        f"{v}embeddings.class_embedding": (vw,), f"{v}embeddings.position_embedding.weight": (n_pos, vw),
        f"{t}embeddings.position_embedding.weight": (ctx, tw),
        "visual_projection.weight": (embed, vw), "text_projection.weight": (embed, tw),
        **{f"{v}{n}.{p}": (vw,) for n in ("pre_layrnorm", "post_layernorm") for p in ("weight", "bias")},
        **{f"{t}final_layer_norm.{p}": (tw,) for p in ("weight", "bias")},
    }, source)
    _hf_clip_tower(hf, v, vw, "vision tower", source)
    _hf_clip_tower(hf, t, tw, "text tower", source)


def validate_llava_parts(decoder: dict[str, Any], vision: dict[str, Any], projector: dict[str, Any],
                         dc: Any, vc: Any, projector_type: str, source: Path | str) -> None:
    """Canonical LLaVA tensors (``llava_checkpoint`` names) against the decoder and vision configs:
    every layer complete, every shape what the config implies."""
    h, hd, inter = dc.hidden_size, dc.head_dim, dc.intermediate_size
    q_out, kv_out = dc.num_heads * hd, dc.num_kv_heads * hd
    layers = block_indices(decoder, "layers.", "decoder layer", source)
    if len(layers) != dc.num_layers:
        raise _fail(f"'{source}': checkpoint has {len(layers)} decoder layers, config.json says {dc.num_layers}",
                    "re-download the checkpoint (a shard may be missing)")
    require(decoder, {"embed_tokens.weight": (dc.vocab_size, h), "norm.weight": (h,),
                      "lm_head.weight": (dc.vocab_size, h)}, source, "decoder ")
    for i in layers:
        p = f"layers.{i}."
        expect = {
            p + "q_proj.weight": (q_out, h), p + "k_proj.weight": (kv_out, h), p + "v_proj.weight": (kv_out, h),
            p + "o_proj.weight": (h, q_out), p + "gate_proj.weight": (inter, h), p + "up_proj.weight": (inter, h),
            p + "down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
        if dc.attention_bias:
            expect.update({p + "q_proj.bias": (q_out,), p + "k_proj.bias": (kv_out,), p + "v_proj.bias": (kv_out,)})
        require(decoder, expect, source, "decoder ")
        _optional(decoder, {p + "o_proj.bias": (h,)}, source, "decoder ")

    w, vinter = vc.hidden_size, vc.intermediate_size
    vlayers = block_indices(vision, "encoder.layers.", "vision layer", source)
    if len(vlayers) != vc.num_layers:
        raise _fail(f"'{source}': vision tower has {len(vlayers)} layers, expected {vc.num_layers}")
    require(vision, {
        "embeddings.class_embedding": (w,), "embeddings.patch_embedding.weight": (w, 3, vc.patch_size, vc.patch_size),
        "embeddings.position_embedding.weight": (vc.grid * vc.grid + 1, w),
        "pre_layrnorm.weight": (w,), "pre_layrnorm.bias": (w,),
    }, source, "vision ")
    _optional(vision, {"post_layernorm.weight": (w,), "post_layernorm.bias": (w,)}, source, "vision ")
    for i in vlayers:
        require(vision, _hf_encoder_layer(f"encoder.layers.{i}.", w, vinter), source, "vision ")

    if "fc1.weight" not in projector:
        raise _fail(f"'{source}': projector tensor 'fc1.weight' is missing", "re-download the checkpoint")
    mid = int(projector["fc1.weight"].shape[0])
    expect = {"fc1.weight": (mid, w)}
    if projector_type == "mlp2x_gelu":
        expect["fc2.weight"] = (h, mid)
    elif mid != h:
        raise _fail(f"'{source}': linear projector output width {mid} != decoder width {h}",
                    "the projector and decoder do not belong together")
    require(projector, expect, source, "projector ")
    _optional(projector, {"fc1.bias": (mid,), "fc2.bias": (h,)}, source, "projector ")


# ---- files named by a checkpoint directory -----------------------------------------------------

def _hf_cache_blobs(real_dir: Path) -> Path | None:
    """``…/models--X/blobs`` when ``real_dir`` is a Hugging Face hub cache snapshot
    (``…/models--X/snapshots/<rev>``), whose files are symlinks into ``blobs``; else None."""
    if real_dir.parent.name != "snapshots":
        return None
    blobs = real_dir.parent.parent / "blobs"
    if blobs.is_symlink() or not blobs.is_dir() or blobs.resolve() != blobs:
        return None
    return blobs


def checkpoint_file(ckpt_dir: Path, name: Any, named_by: Path | str) -> Path:
    """``ckpt_dir / name`` for a file name that a checkpoint's own files give (a shard-index entry):
    a plain relative path that stays inside the directory, also after following symlinks. The one
    exception is the Hugging Face hub cache, whose snapshot files are symlinks into its ``blobs``."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise _fail(f"{named_by} names a weight file {name!r:.80}, expected a file name",
                    "re-download the checkpoint")
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith("\\") or re.match(r"^[A-Za-z]:", name) or \
            any(part in ("..", "") for part in name.replace("\\", "/").split("/")):
        raise _fail(f"{named_by} names the weight file '{name}', which is outside the checkpoint directory",
                    "shard-index entries must be file names inside the checkpoint directory; re-download the checkpoint")
    path = ckpt_dir / name
    real_dir = ckpt_dir.resolve()
    real = path.resolve()
    if real_dir in real.parents:
        return path
    blobs = _hf_cache_blobs(real_dir)
    if blobs is not None and real.parent == blobs:
        return path
    raise _fail(f"{named_by} names the weight file '{name}', a symlink that leaves the checkpoint directory",
                "copy the checkpoint with real files (cp -rL) into one directory")


def check_names(names: Iterable[Any], named_by: Path | str) -> None:
    for n in names:
        if not isinstance(n, str) or not n:
            raise _fail(f"{named_by} has a tensor name {n!r:.80}, expected a non-empty string", "re-download the checkpoint")
