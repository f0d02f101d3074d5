"""Export a LLaVA-class checkpoint to a bundle (needs the [export] extras: torch, transformers, onnx).

``vision.onnx``: CLIP vision tower up to the select layer + projector. Input ``images`` uint8
``(B, S, S, 3)`` at model resolution (normalisation is inside the graph), output
``image_features`` float32 ``(B, N_image_tokens, decoder_hidden)``; dynamic batch.
``decoder.safetensors``: decoder weights under canonical names for the native runtime, in fp32,
fp16, w8 (per-output-channel symmetric INT8) or w4 (INT4, groups of 128 inputs): weight-only
quantisation of every ``*_proj`` linear with fp32 scales ``<name>.weight_scale`` (formats in
``rsvlm_edge/models/llava/quant.py``); for w8 and w4 lm_head is w8 (llama.cpp keeps its output
matrix at 8 bits for Q8_0 and about 6 for Q4_0: it is 12-20 % of a 1B decoder's bytes per token and
the most sensitive one); embeddings and norms stay fp16.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundle import Bundle, BundleWriter
from ..errors import CheckpointError, InputError
from ..models.llava.config import VisionConfig
from ..models.llava.gptq import CalibratedW4
from ..models.llava.prompts import TEMPLATES
from ..models.llava.quant import quantize_w4, quantize_w8
from ..models.llava.rotate import DecoderRotation, RotatedDecoder
from .llava_checkpoint import VlmCheckpoint, load_checkpoint

WEIGHT_FORMATS = ("fp32", "fp16", "w8", "w4")
# round-to-nearest; GPTQ, AWQ scales + round-to-nearest, AWQ scales + GPTQ on calibration text (models/llava/gptq.py)
W4_METHODS = ("rtn", "gptq", "awq", "awq-gptq")
ROTATION_SEED = 0  # --rotate: the seed of the decoder's rotations (recorded in the manifest)
GPTQ_WINDOWS, GPTQ_LENGTH = 32, 256  # calibration: 32 sequences of 256 tokens (8,192 tokens)
VISION_IO = ("images", "image_features")  # graph input, output names (recorded in the manifest's parts)
DEFAULT_MAX_BATCH = 8

Progress = Callable[[str], None]


def _to_numpy(t: Any) -> np.ndarray:
    """A torch tensor (bf16 widened to fp32) or array-like as a numpy array, dtype kept."""
    if hasattr(t, "detach"):
        import torch

        t = t.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return np.asarray(t)


def decoder_tensors(decoder: Mapping[str, Any], weights: str,
                    w4_layers: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                    replaced: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Canonical decoder tensors converted to the bundle's weight format, read one at a time (``decoder`` may
    compute them when read: ``rotate.RotatedDecoder``); ``w4_layers``: (packed, scale) already quantised (GPTQ /
    AWQ) for those names; ``replaced``: float tensors written instead of the decoder's (AWQ's norm gains)."""
    if weights not in WEIGHT_FORMATS:
        raise InputError(f"unknown weight format '{weights}'", f"use one of {', '.join(WEIGHT_FORMATS)}")
    out: dict[str, np.ndarray] = {}
    for name in decoder:
        if w4_layers and name in w4_layers:
            out[name], out[f"{name}_scale"] = w4_layers[name]
            continue
        arr = _to_numpy(replaced[name] if replaced and name in replaced else decoder[name])
        if weights in ("w8", "w4") and name.endswith("_proj.weight"):
            q, scale = (quantize_w8 if weights == "w8" else quantize_w4)(arr)
            out[name] = q
            out[f"{name}_scale"] = scale
        elif weights in ("w8", "w4") and name == "lm_head.weight":  # as llama.cpp: Q8_0 / Q6_K output
            out[name], out[f"{name}_scale"] = quantize_w8(arr)
        else:
            out[name] = np.ascontiguousarray(arr, dtype=np.float32 if weights == "fp32" else np.float16)
    return out


def build_vision_module(ckpt: VlmCheckpoint):
    """torch module: uint8 images (B,S,S,3) -> projected image features (B,N,hidden)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    vc: VisionConfig = ckpt.config.vision
    keep = vc.select_layer if vc.select_layer >= 0 else vc.num_layers + 1 + vc.select_layer
    hf_cfg = CLIPVisionConfig(
        hidden_size=vc.hidden_size,
        intermediate_size=vc.intermediate_size,
        num_hidden_layers=max(keep, 1),
        num_attention_heads=vc.num_heads,
        image_size=vc.image_size,
        patch_size=vc.patch_size,
        hidden_act=vc.hidden_act,
        layer_norm_eps=vc.layer_norm_eps,
    )
    hf_cfg._attn_implementation = "eager"
    clip = CLIPVisionModel(hf_cfg)
    own = clip.state_dict()
    prefix = "vision_model." if next(iter(own)).startswith("vision_model.") else ""
    state = {}
    for name, value in ckpt.vision.items():
        if name.startswith("encoder.layers.") and int(name.split(".")[2]) >= max(keep, 1):
            continue
        if prefix + name in own:
            state[prefix + name] = value.float()
    missing = [k for k in own if k not in state and not k.endswith("position_ids")]
    if missing:
        raise CheckpointError(f"vision tower weights lack {missing[:3]}", "re-download the checkpoint")
    clip.load_state_dict(state, strict=False)

    proj = ckpt.projector
    fc1 = torch.nn.Linear(proj["fc1.weight"].shape[1], proj["fc1.weight"].shape[0], bias="fc1.bias" in proj)
    fc1.load_state_dict({k[4:]: v.float() for k, v in proj.items() if k.startswith("fc1.")})
    layers: list[torch.nn.Module] = [fc1]
    if ckpt.config.projector_type == "mlp2x_gelu":
        fc2 = torch.nn.Linear(proj["fc2.weight"].shape[1], proj["fc2.weight"].shape[0], bias="fc2.bias" in proj)
        fc2.load_state_dict({k[4:]: v.float() for k, v in proj.items() if k.startswith("fc2.")})
        layers += [torch.nn.GELU(), fc2]
    projector = torch.nn.Sequential(*layers)

    mean = torch.tensor(ckpt.preprocess["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(ckpt.preprocess["std"], dtype=torch.float32).view(1, 3, 1, 1)
    drop_cls = vc.select_feature == "patch"

    class VisionEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip
            self.projector = projector
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
            x = (x - self.mean) / self.std
            hidden = self.clip(pixel_values=x, output_hidden_states=True).hidden_states[keep]
            if drop_cls:
                hidden = hidden[:, 1:]
            return self.projector(hidden)

    return VisionEncoder().eval()


def export_vision_onnx(module, image_size: int, path: Path) -> None:
    import torch

    from .onnx_utils import export_onnx

    dummy = torch.zeros(2, image_size, image_size, 3, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        # CLIP's image-size check is traced as a constant: the graph is built for this one size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        export_onnx(module, (dummy,), path, input_names=[VISION_IO[0]], output_names=[VISION_IO[1]])


def verify_vision_onnx(module, image_size: int, path: Path, rtol: float = 1e-3) -> float:
    """Max abs difference of ORT vs torch on a seeded random uint8 batch; raises if too large."""
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, image_size, image_size, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = module(torch.from_numpy(images)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {VISION_IO[0]: images})[0]
    err = float(np.abs(got - ref).max())
    if not err <= rtol * max(1.0, float(np.abs(ref).max())):
        raise CheckpointError(f"exported vision.onnx differs from torch by {err:.3g}", "report this as a bug")
    return err


def _check_tokenizer(src: Path) -> Path:
    tok = src / "tokenizer.json"
    if not tok.is_file():
        raise CheckpointError(
            f"'{src}' has no tokenizer.json",
            "write one with transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)",
        )
    return tok


def _copy_tokenizer(src: Path, dest: Path) -> None:
    shutil.copyfile(_check_tokenizer(src), dest)


def _stop_strings(tokenizer_path: Path, eos_id: int | None) -> list[str]:
    from tokenizers import Tokenizer

    if eos_id is None:
        return []
    token = Tokenizer.from_file(str(tokenizer_path)).id_to_token(int(eos_id))
    return [] if token is None else [token]


def export_vlm(
    checkpoint: str | Path,
    dest: str | Path,
    weights: str = "fp16",
    overwrite: bool = False,
    image_size: int | None = None,
    template: str | None = None,
    verify: bool = True,
    progress: Progress | None = None,
    vision_tower: str | Path | None = None,
    w4_method: str = "rtn",
    calib_text: str | Path | None = None,
    rotate: bool | None = None,
) -> Bundle:
    """Export ``checkpoint`` (LLaVA repo layout or transformers Llava directory) to ``dest``.
    ``w4_method`` (w4 only): ``rtn`` rounds each weight to the nearest level; ``gptq``, ``awq`` and
    ``awq-gptq`` run the decoder on calibration text (``calib_text``: a UTF-8 file, else a built-in
    remote-sensing text), minutes: GPTQ, AWQ's activation-aware scales, or both (models/llava/gptq.py).
    ``rotate``: the decoder's residual stream and value heads in a seeded orthogonal basis, folded into the
    weights and the projector (models/llava/rotate.py): the same model, less int4 / int8 error; None: for
    w8 and w4 (measured better for every method, bench/bench_w4_accuracy.py), not for fp16 / fp32."""
    if weights not in WEIGHT_FORMATS:
        raise InputError(f"unknown --weights '{weights}'", f"use one of {', '.join(WEIGHT_FORMATS)}")
    if w4_method not in W4_METHODS:
        raise InputError(f"unknown --w4-method '{w4_method}'", f"use one of {', '.join(W4_METHODS)}")
    if weights != "w4" and (w4_method != "rtn" or calib_text is not None):
        raise InputError(f"--w4-method / --calib-text apply to --weights w4, not {weights}",
                         "add --weights w4, or drop --w4-method and --calib-text")
    if w4_method == "rtn" and calib_text is not None:
        raise InputError("--calib-text goes with a calibrated --w4-method; round to nearest (rtn) reads no text",
                         f"add --w4-method {' / '.join(W4_METHODS[1:])}, or drop --calib-text")
    text = read_calibration_text(calib_text) if calib_text is not None else None
    if template is not None and template not in TEMPLATES:
        raise InputError(f"unknown chat template '{template}'", f"use one of {', '.join(TEMPLATES)}")
    from . import require_export_deps

    require_export_deps()
    step = progress or (lambda _msg: None)
    step("reading checkpoint")
    ckpt = load_checkpoint(checkpoint, image_size=image_size, template=template, vision_tower=vision_tower)
    _check_tokenizer(ckpt.source)
    return write_bundle(ckpt, dest, weights, overwrite, verify, step, w4_method=w4_method, calib_text=text,
                        rotate=weights in ("w8", "w4") if rotate is None else rotate)


def read_calibration_text(path: str | Path) -> str:
    """The text of a --calib-text file (InputError naming the file when it is unreadable, not UTF-8 or
    empty)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"calibration text '{p}' is not UTF-8", "convert it, e.g. iconv -t UTF-8") from None
    except OSError as e:
        raise InputError(f"cannot read calibration text '{p}' ({e.strerror or e})",
                         "pass a readable UTF-8 text file to --calib-text") from None
    if not text.strip():
        raise InputError(f"calibration text '{p}' is empty", "pass a text file with sentences the model will see")
    return text


def calibrated_layers(ckpt: VlmCheckpoint, tokenizer_path: Path, text: str | None, method: str,
                      step: Progress) -> tuple[CalibratedW4, dict[str, Any]]:
    """w4 of the checkpoint's decoder layers by ``method`` (gptq, awq, awq-gptq) on calibration windows of
    ``text`` (the built-in text when None) tokenised by the bundle's tokenizer; also the record of how."""
    from tokenizers import Tokenizer

    from ..models.llava import awq
    from ..models.llava.gptq import BUILTIN_CALIBRATION_TEXT, DAMP, calibrated_decoder_w4, calibration_windows

    cfg = ckpt.config.decoder
    ids = Tokenizer.from_file(str(tokenizer_path)).encode(text or BUILTIN_CALIBRATION_TEXT,
                                                          add_special_tokens=False).ids
    windows, n_text = calibration_windows(ids, cfg.vocab_size, GPTQ_WINDOWS, GPTQ_LENGTH, cfg.bos_token_id)
    # Matrices as fp16 (as an fp16 bundle stores them): a bf16 or fp32 checkpoint is not held in fp32.
    tensors = {name: _to_numpy(t).astype(np.float16, copy=False) if getattr(t, "ndim", 0) == 2 else _to_numpy(t)
               for name, t in ckpt.decoder.items()}
    calibrated = calibrated_decoder_w4(cfg, tensors, windows, method, progress=step)
    record: dict[str, Any] = {"method": method, "group": 128, "calibration": {
        "source": "--calib-text" if text else "built-in remote-sensing text", "windows": len(windows),
        "tokens_per_window": GPTQ_LENGTH, "text_windows": n_text, "random_token_windows": len(windows) - n_text}}
    if method.endswith("gptq"):
        record["damp"] = DAMP
    if method.startswith("awq"):
        record["awq"] = {"grid": awq.GRID, "sample_rows": awq.SAMPLE_ROWS, "inputs": len(calibrated.ratios),
                         "scaled_inputs": sum(r is not None for r in calibrated.ratios.values())}
    return calibrated, record


def rotated_checkpoint(ckpt: VlmCheckpoint, weights: str) -> tuple[VlmCheckpoint, DecoderRotation]:
    """``ckpt`` with its decoder in a rotated basis (models/llava/rotate.py; computed tensor by tensor when read:
    fp32 matrices for an fp32 bundle, else fp16) and its projector's last linear writing image features into it."""
    import dataclasses

    import torch

    rotation = DecoderRotation.seeded(ckpt.config.decoder, ROTATION_SEED)
    try:
        decoder = RotatedDecoder(ckpt.config.decoder, ckpt.decoder, rotation, as_array=_to_numpy,
                                 dtype=np.float32 if weights == "fp32" else np.float16)
    except ValueError as e:
        raise CheckpointError(f"cannot rotate the decoder: {e}", "export with --no-rotate") from None
    last = "fc2" if ckpt.config.projector_type == "mlp2x_gelu" else "fc1"
    bias = ckpt.projector.get(f"{last}.bias")
    w, b = rotation.projector_output(_to_numpy(ckpt.projector[f"{last}.weight"]).astype(np.float32),
                                     None if bias is None else _to_numpy(bias).astype(np.float32))
    projector = {**ckpt.projector, f"{last}.weight": torch.from_numpy(w)}
    if b is not None:
        projector[f"{last}.bias"] = torch.from_numpy(b)
    return dataclasses.replace(ckpt, decoder=decoder, projector=projector), rotation


def write_bundle(
    ckpt: VlmCheckpoint, dest: str | Path, weights: str, overwrite: bool, verify: bool, step: Progress,
    w4_method: str = "rtn", calib_text: str | None = None, rotate: bool = False,
) -> Bundle:
    from safetensors.numpy import save_file

    rotation = None
    if rotate:
        step("rotating the decoder's residual stream and heads (--rotate)")
        ckpt, rotation = rotated_checkpoint(ckpt, weights)
    with BundleWriter(dest, overwrite=overwrite) as writer:
        step("exporting vision tower + projector to ONNX")
        module = build_vision_module(ckpt)
        vision_path = writer.path("vision.onnx")
        export_vision_onnx(module, ckpt.config.vision.image_size, vision_path)
        validation: dict[str, Any] = {}
        if verify:
            step("checking vision.onnx against torch")
            validation["vision_onnx_vs_torch_max_abs_err"] = verify_vision_onnx(
                module, ckpt.config.vision.image_size, vision_path
            )
        del module
        step("copying tokenizer")
        _copy_tokenizer(ckpt.source, writer.path("tokenizer.json"))
        calibrated, quantization = CalibratedW4({}), None
        if weights == "w4":
            quantization = {"method": "rtn", "group": 128}
            if w4_method != "rtn":
                calibrated, quantization = calibrated_layers(ckpt, writer.path("tokenizer.json"), calib_text,
                                                             w4_method, step)
        step(f"writing decoder weights ({weights})")
        # AWQ's rewritten norm gains replace the checkpoint's; the layers it or GPTQ quantised are written as they are.
        save_file(decoder_tensors(ckpt.decoder, weights, calibrated.layers, calibrated.tensors),
                  str(writer.path("decoder.safetensors")))
        cfg = ckpt.config
        size = cfg.vision.image_size
        manifest = {
            "name": Path(dest).stem,
            "architecture": "llava",
            "model": {**cfg.to_dict(), "source_layout": ckpt.layout},
            "source": {"checkpoint": str(ckpt.source.resolve()), "layout": ckpt.layout},
            "parts": {
                "vision": {"kind": "graph", "file": "vision.onnx", "precision": "fp32",
                           "inputs": [{"name": VISION_IO[0], "dtype": "uint8", "shape": ["batch", size, size, 3]}],
                           "outputs": [{"name": VISION_IO[1], "dtype": "float32",
                                        "shape": ["batch", cfg.vision.num_tokens, cfg.decoder.hidden_size]}]},
                "decoder": {"kind": "decoder", "file": "decoder.safetensors", "precision": weights,
                            **({"quantization": quantization} if quantization else {}),
                            **({"rotation": rotation.record()} if rotation else {})},
            },
            "preprocess": ckpt.preprocess,
            "tokenizer": {"file": "tokenizer.json", "kind": "hf"},
            "prompts": {
                "template": ckpt.template,
                "stop": _stop_strings(writer.path("tokenizer.json"), cfg.decoder.eos_token_id),
            },
            "max_batch": DEFAULT_MAX_BATCH,
            "notes": ckpt.notes,
            "validation": validation,
        }
        step("hashing and committing bundle")
        return writer.commit(manifest)
