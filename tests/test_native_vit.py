"""The ``native-vit`` graph backend: CLIP image towers on our own kernels (issues 10 and 12).

Against the model's own code (open_clip's ``encode_image`` on the same pixels) and against the same
bundle's ONNX graph on onnxruntime: fp32 and fp16 weights, W8A8 int8, QuickGELU and GELU towers,
batches 0/1/3 (other head dims are the attention kernel's own tests); selection by the registry; and
hostile native weight files (every one an ``error:`` naming the tensor, never a wrong answer).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")

import torch  # noqa: E402
from clip_models import LABELS, open_clip_image_embeds, save_bare, top1_agreement  # noqa: E402

from rsvlm_edge.bundle import open_bundle, sha256_of  # noqa: E402
from rsvlm_edge.errors import BackendError, BundleError, InputError  # noqa: E402
from rsvlm_edge.export.clip import export_clip, synthetic_rs_images  # noqa: E402
from rsvlm_edge.export.clip_native import NATIVE_FILE, native_entries, unsupported_reason, write_safetensors  # noqa: E402
from rsvlm_edge.models.clip.runtime import ClipRuntime  # noqa: E402

C = pytest.importorskip("rsvlm_edge._C")
if not hasattr(C, "layer_norm") or not hasattr(C, "gelu"):
    pytest.skip("this build of rsvlm_edge._C has no layer_norm/gelu (rebuild)", allow_module_level=True)


def tiny_clip(seed: int, quick_gelu: bool, head_width: int):
    """open_clip CLIP: ViT 64px / patch 16 (4x4 grid + class token = 17 tokens), width 128, 2 layers."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(64, CLIPVisionCfg(layers=2, width=128, head_width=head_width, patch_size=16, image_size=64),
                 CLIPTextCfg(context_length=77, vocab_size=49408, width=128, heads=2, layers=2),
                 quick_gelu=quick_gelu)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05 if p.ndim >= 2 else 0.5)  # LayerNorm gains/biases away from 1/0 as trained ones are
    return model.eval()


# heads = width / 64 is what the exporter infers from an open_clip state dict (it records no head count)
MODELS = {"quick": (True, 64), "gelu": (False, 64)}


@pytest.fixture(scope="module", params=list(MODELS))
def model_and_ckpt(request, tmp_path_factory):
    quick, head_width = MODELS[request.param]
    model = tiny_clip(3, quick, head_width)
    d = tmp_path_factory.mktemp(request.param)
    return model, save_bare(model, d / "ckpt.pt"), quick, d


@pytest.fixture(scope="module")
def bundles(model_and_ckpt):
    model, ckpt, quick, d = model_and_ckpt
    act = "quick_gelu" if quick else "gelu"
    return {p: export_clip(ckpt, d / f"{p}.rsvlm", precision=p, activation=act, max_batch=8, n_synthetic_calib=16)
            for p in ("fp32", "fp16", "int8")}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("precision,min_cos", [("fp32", 0.99999), ("fp16", 0.9999), ("int8", 0.99)])
def test_native_tower_matches_open_clip(model_and_ckpt, bundles, precision, min_cos):
    """Unnormalised embeddings of 3 non-trivial images vs open_clip's own encode_image (fp32 torch)."""
    model = model_and_ckpt[0]
    bundle = bundles[precision]
    part = bundle.manifest.parts["image"]
    assert part.native is not None and part.native.precision == {"int8": "w8"}.get(precision, precision)
    rt = ClipRuntime(bundle, backend="native-vit")
    assert rt.backend == "native-vit"
    px = synthetic_rs_images(3, 64, seed=11)
    got = rt.encode_images(px, normalize=False)
    want = open_clip_image_embeds(model, px)
    assert got.shape == want.shape and np.isfinite(got).all()
    assert cosines(got, want).min() >= min_cos
    if precision == "fp32":
        np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max(), rtol=1e-3)


def test_native_equals_onnxruntime_on_the_same_bundle(bundles):
    """fp32: our kernels and onnxruntime on the exported graph agree to float rounding, batch by batch
    (1 and 3), and a 0-image batch gives a (0, E) array."""
    bundle = bundles["fp32"]
    native, ort = ClipRuntime(bundle, backend="native-vit"), ClipRuntime(bundle, backend="ort-cpu")
    for batch in (1, 3):
        px = synthetic_rs_images(batch, 64, seed=batch)
        a, b = native.encode_images(px, normalize=False), ort.encode_images(px, normalize=False)
        np.testing.assert_allclose(a, b, atol=2e-4 * np.abs(b).max(), rtol=1e-3)
    (empty,) = native._image.run({"pixels": np.zeros((0, 64, 64, 3), np.uint8)})
    assert empty.shape == (0, bundle.manifest.model.embed_dim)


def test_int8_native_zero_shot_agrees_with_fp32(bundles):
    """W8A8 with per-row activation blocks: zero-shot top-1 over the test labels as the fp32 graph's."""
    px = synthetic_rs_images(24, 64, seed=5)
    agree = top1_agreement(ClipRuntime(bundles["int8"], backend="native-vit"),
                           ClipRuntime(bundles["fp32"], backend="ort-cpu"), px)
    assert agree >= 0.95, (agree, LABELS[:3])


def test_auto_and_cpu_pick_the_native_tower_only_where_the_part_has_it(bundles, tmp_path):
    from rsvlm_edge.backends import choose

    part = bundles["fp32"].manifest.parts["image"]
    assert choose("graph", "auto", part).name == "ort-cpu"  # fp32: onnxruntime's GEMM is the faster
    assert choose("graph", "native-vit", part).name == "native-vit"
    w8 = bundles["int8"].manifest.parts["image"]
    fast_int8 = C.cpu_kernels() in ("amx", "avx512vnni")
    assert choose("graph", "auto", w8).name == ("native-vit" if fast_int8 else "ort-cpu")  # bench/RESULTS.md
    assert choose("graph", "native-vit", w8).name == "native-vit"
    try:  # without AMX / AVX512-VNNI integer kernels the W8A8 GEMM is plain C++: onnxruntime keeps the tower
        C.set_cpu_kernels("avx2" if C.cpu_kernels() != "portable" else "portable")
        assert choose("graph", "auto", w8).name == "ort-cpu"
    finally:
        C.set_cpu_kernels("auto")
    assert choose("graph", "graph=ort-cpu", w8).name == "ort-cpu"
    text = bundles["fp32"].manifest.parts["text"]
    assert choose("graph", "auto", text).name != "native-vit"  # text towers have no native weights
    assert choose("graph", "native-vit", text, "text").name == choose("graph", "auto", text).name  # not its part
    no_native = part.model_copy(update={"native": None})
    with pytest.raises(BackendError, match="no native weights"):
        choose("graph", "native-vit", no_native, "image")
    assert choose("graph", "auto", no_native).name == "ort-cpu"


def test_no_native_export_leaves_the_tower_to_the_graph_backends(model_and_ckpt, tmp_path):
    from rsvlm_edge.backends import choose

    _, ckpt, quick, _ = model_and_ckpt
    b = export_clip(ckpt, tmp_path / "plain.rsvlm", activation="quick_gelu" if quick else "gelu", native=False)
    part = b.manifest.parts["image"]
    assert part.native is None and not (b.path / NATIVE_FILE).exists() and NATIVE_FILE not in b.manifest.files
    assert choose("graph", "auto", part).name == "ort-cpu"
    with pytest.raises(BackendError, match="no native weights"):
        ClipRuntime(b, backend="native-vit")


def test_unsupported_towers_are_named():
    keys = {"conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias",
            "ln_post.weight", "ln_post.bias", "proj"}
    block = [f"transformer.resblocks.0.{k}" for k in (
        "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
        "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
        "mlp.c_proj.bias")]
    assert unsupported_reason(keys | set(block)) is None
    assert "attn_pool" in unsupported_reason(keys | set(block) | {"attn_pool.query"})
    assert "ls_1" in unsupported_reason(keys | set(block) | {"transformer.resblocks.0.ls_1.gamma"})
    assert "proj" in unsupported_reason((keys - {"proj"}) | set(block))
    assert "numbered" in unsupported_reason(keys | {b.replace(".0.", ".1.") for b in block})


# ---- hostile native weight files -------------------------------------------------------------------

def _resigned_copy(bundle_path: Path, dest: Path, edit) -> Path:
    """A copy of the bundle whose native file is rewritten by ``edit(tensors) -> tensors`` (numpy,
    in file order) and whose manifest lists the new file's size and sha256 (so only the loader's own
    checks can catch it)."""
    from rsvlm_edge.bundle.safetensors_mmap import map_tensors

    shutil.copytree(bundle_path, dest)
    f = dest / NATIVE_FILE
    tensors = {k: np.array(v) for k, v in map_tensors(f).items()}
    tensors = edit(tensors)
    f.unlink()
    write_safetensors(f, [(k, v.dtype, v.shape, lambda v=v: v) for k, v in tensors.items()])
    m = json.loads((dest / "manifest.json").read_text())
    m["files"][NATIVE_FILE] = {"size": f.stat().st_size, "sha256": sha256_of(f)}
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def _drop(name):
    return lambda t: {k: v for k, v in t.items() if k != name}


def _reshape(name):
    return lambda t: {k: (v[:-1] if k == name else v) for k, v in t.items()}


def _retype(name):
    return lambda t: {k: (v.astype(np.float64) if k == name else v) for k, v in t.items()}


def _poison_scale(t):
    t = dict(t)
    t["transformer.resblocks.1.mlp.c_fc.weight.scale"] = np.full_like(t["transformer.resblocks.1.mlp.c_fc.weight.scale"],
                                                                      np.inf)
    return t


def _minus_128(t):
    t = dict(t)
    w = t["transformer.resblocks.0.attn.in_proj_weight"].copy()
    w[5, 7] = -128  # outside the format's [-127, 127] (qgemm's +128 trick would overflow on it)
    t["transformer.resblocks.0.attn.in_proj_weight"] = w
    return t


def _nan_conv(t):
    t = dict(t)
    w = t["conv1.weight"].copy()
    w[0, 0, 0, 0] = np.nan  # a w8 tower quantises conv1 at load: a NaN would poison every scale after it
    t["conv1.weight"] = w
    return t


def _renumber_last_block(t):
    """Block 1 of 2 renamed block 2: a gap that must not make the tower run one block and stop."""
    return {k.replace("resblocks.1.", "resblocks.2."): v for k, v in t.items()}


HOSTILE = {
    "missing-block-tensor": ("fp32", _drop("transformer.resblocks.1.attn.out_proj.bias"), "attn.out_proj.bias"),
    "missing-conv": ("fp32", _drop("conv1.weight"), "conv1.weight"),
    "short-positions": ("fp32", _reshape("positional_embedding"), "positional_embedding"),
    "wrong-dtype": ("fp16", _retype("transformer.resblocks.0.mlp.c_fc.weight"), "mlp.c_fc.weight"),
    "inf-scales": ("int8", _poison_scale, "scale"),
    "int8-minus-128": ("int8", _minus_128, "-128"),
    "int8-nan-conv": ("int8", _nan_conv, "conv1.weight"),
    "gap-in-blocks": ("fp32", _renumber_last_block, "numbered"),
}


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_native_weights_are_refused_by_name(bundles, tmp_path, case):
    precision, edit, needle = HOSTILE[case]
    bad = _resigned_copy(bundles[precision].path, tmp_path / "bad.rsvlm", edit)
    with pytest.raises(BundleError) as e:
        ClipRuntime(open_bundle(bad), backend="native-vit")
    assert needle in e.value.message and e.value.fix


@pytest.mark.campaign("faults")
def test_native_file_outside_the_bundle_is_refused(bundles, tmp_path):
    """A manifest whose native file is a symlink leaving the bundle: refused before reading."""
    bad = tmp_path / "bad.rsvlm"
    shutil.copytree(bundles["fp32"].path, bad)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(bad / NATIVE_FILE, outside)
    (bad / NATIVE_FILE).symlink_to(outside)
    with pytest.raises(BundleError):
        ClipRuntime(open_bundle(bad), backend="native-vit")


def test_bad_pixels_are_input_errors(bundles):
    rt = ClipRuntime(bundles["fp32"], backend="native-vit")
    with pytest.raises(InputError, match="uint8"):
        rt._image.run({"pixels": np.zeros((1, 64, 64, 3), np.float32)})
    with pytest.raises(InputError, match="64, 64, 3"):
        rt._image.run({"pixels": np.zeros((1, 32, 32, 3), np.uint8)})


def test_native_entries_quantise_like_the_decoder_w8():
    from rsvlm_edge.models.llava.quant import quantize_w8

    w = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    entries = native_entries({"transformer.resblocks.0.mlp.c_fc.weight": w, "ln_pre.weight": w[0]}, "w8")
    names = [e[0] for e in entries]
    assert names == ["transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_fc.weight.scale",
                     "ln_pre.weight"]
    q, s = quantize_w8(w)
    produced = [e[3]() for e in entries]
    np.testing.assert_array_equal(produced[0], q)
    np.testing.assert_array_equal(produced[1], s)
    assert produced[2].dtype == np.float32
