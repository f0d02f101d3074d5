"""Image preprocessing fidelity against the reference libraries (issue 7, "1. Fidelity"), and the
pixel limits (issue 7, "Images: decompression bombs ...").

* CLIP bundles vs open_clip's own ``create_model_and_transforms`` (a registered tiny model config,
  the same checkpoint file): uint8 pixels identical to open_clip's transform without ``Normalize``,
  and embeddings with cosine >= 0.9999, for every PIL mode users meet, as files and as PIL images.
* LLaVA / GeoChat bundles vs LLaVA's ``expand2square`` (verbatim from haotian-liu/LLaVA
  ``llava/mm_utils.py``) + transformers ``CLIPImageProcessor`` with LLaVA's settings: pixels
  identical, projected vision features within 1e-5 of transformers' LLaVA on the processor's tensor.
* Centre-crop offsets on odd margins: torchvision ``CenterCrop`` (round, CLIP bundles) and
  transformers ``CLIPImageProcessor`` (floor, VLM bundles), each against the real library.
* 16-bit / float files refused (API and CLI); pixel limits, extreme aspect ratios, empty images.
"""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_models import cos, save_bare, tiny_open_clip
from PIL import Image
from util import run_cli

import rsvlm_edge
from rsvlm_edge import images as images_mod
from rsvlm_edge.errors import InputError
from rsvlm_edge.export.clip import export_clip

fidelity = pytest.mark.campaign("fidelity")
limits = pytest.mark.campaign("images")

S = 64  # tiny CLIP resolution
TINY_CFG = {"embed_dim": 64, "quick_gelu": True,
            "vision_cfg": {"image_size": S, "layers": 2, "width": 128, "head_width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}
# non-square larger than the model, non-square smaller, tall, tiny, square smaller, odd margins
SIZES = [(157, 101), (45, 29), (71, 203), (13, 7), (40, 40), (64, 67), (1, 9)]


# ---------------------------------------------------------------- images of every mode
def _content(w: int, h: int, seed: int) -> np.ndarray:
    """Smooth RGB content plus noise (uint8 HxWx3), so that resampling differences show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / 5 + seed), 128 + 100 * np.cos(y / 7), 128 + 80 * np.sin((x + y) / 9)], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _alpha(w: int, h: int) -> np.ndarray:
    """Alpha with fully transparent areas (left third, a hole), a ramp and opaque parts."""
    a = np.full((h, w), 255, np.uint8)
    a[:, : max(1, w // 3)] = 0
    a[h // 2:, w // 2:] = np.linspace(0, 255, max(1, w - w // 2), dtype=np.uint8)[None, :]
    a[h // 4: h // 4 + max(1, h // 5), w // 2: w // 2 + max(1, w // 5)] = 0
    return a


def make_image(kind: str, w: int, h: int, seed: int = 0) -> Image.Image:
    rgb = Image.fromarray(_content(w, h, seed))
    if kind == "RGB":
        return rgb
    if kind == "L":
        return rgb.convert("L")
    if kind == "LA":
        im = rgb.convert("L").convert("LA")
        im.putalpha(Image.fromarray(_alpha(w, h)))
        return im
    if kind == "RGBA":
        im = rgb.convert("RGBA")
        im.putalpha(Image.fromarray(_alpha(w, h)))
        return im
    if kind == "P":
        return rgb.quantize(colors=48, method=Image.Quantize.MEDIANCUT)
    if kind == "P-transparent":
        im = rgb.quantize(colors=48, method=Image.Quantize.MEDIANCUT)
        im.info["transparency"] = int(np.asarray(im)[0, 0])
        return im
    if kind == "1":
        return rgb.convert("L").convert("1")  # Floyd-Steinberg dither
    if kind == "CMYK":
        return rgb.convert("CMYK")
    raise ValueError(kind)


# (case id, image kind, file suffix, save kwargs)
FILE_CASES = [
    ("rgb-png", "RGB", ".png", {}),
    ("rgb-jpeg", "RGB", ".jpg", {"quality": 90}),
    ("l-png", "L", ".png", {}),
    ("la-png", "LA", ".png", {}),
    ("rgba-png", "RGBA", ".png", {}),
    ("rgba-webp", "RGBA", ".webp", {"lossless": True}),
    ("p-png", "P", ".png", {}),
    ("p-transparent-png", "P-transparent", ".png", {}),
    ("gif", "P", ".gif", {}),
    ("gif-transparent", "P-transparent", ".gif", {}),
    ("mode1-png", "1", ".png", {}),
    ("mode1-bmp", "1", ".bmp", {}),
    ("cmyk-jpeg", "CMYK", ".jpg", {"quality": 92}),
    ("cmyk-tiff", "CMYK", ".tif", {}),
    ("rgba-tiff", "RGBA", ".tif", {}),
    ("exif-rotated-jpeg", "RGB", ".jpg", {"quality": 90, "exif": "orientation-6"}),
    ("exif-mirrored-l-jpeg", "L", ".jpg", {"quality": 90, "exif": "orientation-2"}),
]


def _save(img: Image.Image, path: Path, kw: dict) -> Path:
    kw = dict(kw)
    exif_tag = kw.pop("exif", None)
    if exif_tag is not None:
        exif = Image.Exif()
        exif[0x0112] = int(exif_tag.split("-")[1])  # Orientation
        kw["exif"] = exif.tobytes()
    if path.suffix == ".gif" and "transparency" in img.info:
        kw["transparency"] = img.info["transparency"]
    img.save(path, **kw)
    return path


@pytest.fixture(scope="module")
def clip_setup(tmp_path_factory):
    """One tiny seeded open_clip model, saved bare; our bundle from it; open_clip's own model +
    preprocess from the same file via create_model_and_transforms (registered tiny config)."""
    import open_clip

    root = tmp_path_factory.mktemp("fidelity_clip")
    ckpt = save_bare(tiny_open_clip(seed=3), root / "tiny-fidelity.pt")
    cfg = root / "rsvlm-tiny-fidelity.json"
    cfg.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg)
    model, _, preprocess = open_clip.create_model_and_transforms("rsvlm-tiny-fidelity", pretrained=str(ckpt))
    model.eval()
    bundle = export_clip(ckpt, root / "tiny-fidelity.rsvlm", activation="quick_gelu", max_batch=8)
    files = root / "images"
    files.mkdir()
    return {"model": model, "preprocess": preprocess, "rt": rsvlm_edge.load(bundle.path), "bundle": bundle,
            "files": files}


def _open_clip_pixels(preprocess, img: Image.Image) -> np.ndarray:
    """open_clip's eval transform without Normalize, back to uint8 HWC."""
    from torchvision.transforms import Normalize

    steps = [t for t in preprocess.transforms if not isinstance(t, Normalize)]
    x = img
    for t in steps:
        x = t(x)
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _open_clip_embed(setup, img: Image.Image) -> np.ndarray:
    with torch.no_grad():
        return setup["model"].encode_image(setup["preprocess"](img)[None]).numpy()


@fidelity
def test_open_clip_preprocess_is_the_eval_transform(clip_setup):
    """The reference really is open_clip's resize -> crop -> convert order (guards the comparison)."""
    names = [type(t).__name__ for t in clip_setup["preprocess"].transforms]
    assert names == ["Resize", "CenterCrop", "MaybeConvertMode", "MaybeToTensor", "Normalize"]


@fidelity
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("case,kind,suffix,kw", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_clip_files_match_open_clip_preprocess(clip_setup, case, kind, suffix, kw, size):
    if suffix == ".webp":
        from PIL import features

        if not features.check("webp"):
            pytest.skip("Pillow built without WebP")
    w, h = size
    path = _save(make_image(kind, w, h, seed=w * 7 + h), clip_setup["files"] / f"{case}-{w}x{h}{suffix}", kw)
    with Image.open(path) as ref_img:
        ref_img.load()
        ref_px = _open_clip_pixels(clip_setup["preprocess"], ref_img)
        ref_emb = _open_clip_embed(clip_setup, ref_img)
    rt = clip_setup["rt"]
    np.testing.assert_array_equal(rt.pixels([str(path)])[0], ref_px)
    with Image.open(path) as lazy:  # a PIL image straight from Image.open (not yet loaded)
        np.testing.assert_array_equal(rt.pixels([lazy])[0], ref_px)
    got = rt.encode_images([str(path)], normalize=False)
    assert cos(got, ref_emb)[0] >= 0.9999


@fidelity
@pytest.mark.parametrize("kind", ["RGB", "L", "LA", "RGBA", "P", "P-transparent", "1", "CMYK"])
def test_clip_pil_images_match_open_clip_preprocess(clip_setup, kind):
    """In-memory PIL images of every mode, non-square and smaller than the model, in one batch."""
    imgs = [make_image(kind, w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    rt = clip_setup["rt"]
    px = rt.pixels(imgs)
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(px[i], _open_clip_pixels(clip_setup["preprocess"], img))
    got = rt.encode_images(imgs, normalize=False)
    ref = np.concatenate([_open_clip_embed(clip_setup, img) for img in imgs])
    assert cos(got, ref).min() >= 0.9999


@fidelity
def test_clip_transparent_rgba_premultiplied_like_open_clip(clip_setup):
    """The case of the issue (cosine 0.966 when converting first): an RGBA tile whose transparent
    area hides saturated colour; converting to RGB before resizing would leak it."""
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (90, 150, 4), dtype=np.uint8)
    arr[:, :60, 3] = 0
    arr[:, :60, :3] = (255, 0, 255)
    img = Image.fromarray(arr, "RGBA")
    rt = clip_setup["rt"]
    ref_px = _open_clip_pixels(clip_setup["preprocess"], img)
    np.testing.assert_array_equal(rt.pixels([img])[0], ref_px)
    convert_first = images_mod.resize_shortest_center_crop(img.convert("RGB"), S)
    assert not np.array_equal(convert_first, ref_px)  # the order matters for this image
    assert cos(rt.encode_images([img], normalize=False), _open_clip_embed(clip_setup, img))[0] >= 0.9999


@fidelity
def test_clip_exif_orientation_not_applied_like_open_clip(clip_setup):
    """open_clip (and LLaVA) use the pixels as stored; the EXIF rotation is not applied."""
    path = _save(make_image("RGB", 120, 70, seed=9), clip_setup["files"] / "exif6.jpg",
                 {"quality": 90, "exif": "orientation-6"})
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == 6 and im.size == (120, 70)
        ref = _open_clip_pixels(clip_setup["preprocess"], im)
    np.testing.assert_array_equal(clip_setup["rt"].pixels([str(path)])[0], ref)


@fidelity
def test_clip_uint8_arrays_match_pil_route(clip_setup):
    """RGB / RGBA / grey numpy arrays are the PIL images ``Image.fromarray`` makes of them."""
    rt = clip_setup["rt"]
    rgba = np.asarray(make_image("RGBA", 77, 45, seed=1))
    for arr in (rgba[..., :3], rgba, rgba[..., 0]):
        np.testing.assert_array_equal(rt.pixels([arr])[0],
                                      _open_clip_pixels(clip_setup["preprocess"], Image.fromarray(arr)))


# ---------------------------------------------------------------- 16-bit and float files
def _high_bit_files(d: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    u16 = rng.integers(300, 60000, (40, 50), dtype=np.uint16)
    out = []
    p = d / "uint16.png"
    Image.fromarray(u16).save(p)  # mode I;16
    out.append(p)
    p = d / "uint16.tif"
    Image.fromarray(u16).save(p)
    out.append(p)
    p = d / "int32.tif"
    Image.fromarray(u16.astype(np.int32) * 3).save(p)  # mode I
    out.append(p)
    p = d / "uint16be.tif"
    Image.fromarray(u16.astype(">u2")).save(p)  # mode I;16B
    out.append(p)
    p = d / "float32.tif"
    Image.fromarray(u16.astype(np.float32) / 65535).save(p)  # mode F
    out.append(p)
    return out


@fidelity
def test_high_bit_files_are_16bit_or_float_modes(tmp_path):
    for p in _high_bit_files(tmp_path):
        with Image.open(p) as im:
            assert images_mod.is_high_bit(im.mode), (p.name, im.mode)


@fidelity
@pytest.mark.parametrize("name", ["uint16.png", "uint16.tif", "int32.tif", "uint16be.tif", "float32.tif"])
def test_high_bit_file_refused_naming_it(clip_setup, tmp_path, name):
    path = next(p for p in _high_bit_files(tmp_path) if p.name == name)
    with pytest.raises(InputError, match=r"16-bit or floating-point") as e:
        clip_setup["rt"].encode_images([str(path)])
    assert str(path) in e.value.message and e.value.fix
    with Image.open(path) as im, pytest.raises(InputError, match="16-bit"):
        clip_setup["rt"].encode_images([im])  # the PIL image too


@fidelity
def test_high_bit_refused_by_llava_preprocess(tmp_path):
    from rsvlm_edge.bundle.schema import Preprocess
    from rsvlm_edge.models.llava.preprocess import preprocess_images

    spec = Preprocess(image_size=32, crop_rounding="floor", pad_to_square=True, fill_rgb=[122, 116, 104],
                      mean=[0.5] * 3, std=[0.5] * 3)
    for p in _high_bit_files(tmp_path):
        with pytest.raises(InputError, match=str(p.name)):
            preprocess_images([str(p)], spec)


@fidelity
def test_high_bit_files_cli_classify_exit_2(clip_setup, tmp_path):
    files = _high_bit_files(tmp_path)
    for p in files[:1] + files[-1:]:
        r = run_cli("classify", str(clip_setup["bundle"].path), str(p), "--labels", "forest,river")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "Traceback" not in r.stderr + r.stdout
        err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and p.name in err[0] and "16-bit or floating-point" in err[0], r.stderr
        assert "fix:" in r.stderr
        assert r.stdout.strip() == ""  # nothing classified


# ---------------------------------------------------------------- LLaVA / GeoChat
def expand2square(pil_img, background_color):
    """Verbatim from haotian-liu/LLaVA llava/mm_utils.py (identical in mbzuai-oryx/GeoChat geochat/mm_utils.py)."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def _pil_clip_processor_class():
    """transformers' PIL-based ``CLIPImageProcessor`` (what LLaVA/GeoChat ran: transformers 4.x;
    in 5.x the same code is ``CLIPImageProcessorPil`` and ``CLIPImageProcessor`` is the torchvision one)."""
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def llava_reference(path: Path, size: int, mean, **kw) -> np.ndarray:
    """LLaVA's load_image (convert RGB) + process_images(image_aspect_ratio='pad') -> (3, S, S)."""
    proc = _pil_clip_processor_class()(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                       image_mean=list(mean), image_std=[0.26862954, 0.26130258, 0.27577711],
                                       resample=3, do_convert_rgb=True, **kw)
    image = Image.open(path).convert("RGB")
    image = expand2square(image, tuple(int(x * 255) for x in proc.image_mean))
    return proc.preprocess(image, return_tensors="np")["pixel_values"][0]


@pytest.fixture(scope="module")
def vlm_setup(tmp_path_factory):
    from llava_fixtures import make_tiny_llava

    from rsvlm_edge.export.llava import export_vlm
    from rsvlm_edge.models.llava.runtime import VlmRuntime

    root = tmp_path_factory.mktemp("fidelity_vlm")
    model = make_tiny_llava(root / "ckpt", layout="llava", fmt="safetensors")  # image_aspect_ratio "pad"
    bundle = export_vlm(root / "ckpt", root / "tiny-pad.rsvlm", weights="fp32", verify=False)
    files = root / "images"
    files.mkdir()
    return {"model": model.eval(), "bundle": bundle, "rt": VlmRuntime(bundle, max_batch=4), "files": files}


@fidelity
def test_vlm_manifest_pad_colour_and_floor_crop(vlm_setup):
    pp = vlm_setup["bundle"].manifest.preprocess
    assert pp.pad_to_square is True and pp.crop_rounding == "floor"
    assert pp.fill_rgb == [int(x * 255) for x in pp.mean] == [122, 116, 104]


VLM_SIZES = [(57, 23), (23, 57), (101, 64), (19, 30), (32, 32), (33, 32), (1000, 3)]


@fidelity
@pytest.mark.parametrize("kind", ["RGB", "RGBA", "P", "L", "CMYK"])
@pytest.mark.parametrize("size", VLM_SIZES, ids=[f"{w}x{h}" for w, h in VLM_SIZES])
def test_vlm_pixels_equal_llava_expand2square_and_processor(vlm_setup, kind, size):
    from rsvlm_edge.models.llava.preprocess import preprocess_images

    w, h = size
    suffix = ".jpg" if kind == "CMYK" else ".png"
    path = _save(make_image(kind, w, h, seed=w + h), vlm_setup["files"] / f"{kind}-{w}x{h}{suffix}", {})
    spec = vlm_setup["bundle"].manifest.preprocess
    ours = preprocess_images([str(path)], spec)[0]
    ref = llava_reference(path, spec.image_size, spec.mean, do_rescale=False, do_normalize=False)
    np.testing.assert_array_equal(ours, np.asarray(ref).transpose(1, 2, 0).astype(np.uint8))
    assert np.asarray(ref).dtype == np.uint8 or np.all(np.asarray(ref) == np.round(np.asarray(ref)))


def _hf_features(model, pixel_values: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=pixel_values)
    feats = getattr(feats, "pooler_output", feats)
    return torch.stack(list(feats)).numpy() if isinstance(feats, (list, tuple)) else feats.numpy()


@fidelity
def test_vlm_vision_features_equal_transformers_on_llava_pixels(vlm_setup):
    """Projected features of padded non-square images vs GeoChat/LLaVA's own preprocessing
    (expand2square + CLIPImageProcessor, rescaled and normalised by the processor):

    * the same model (transformers' LLaVA) on our pixels, normalised as our graph does, vs on the
      processor's tensor: within 1e-5 (only float rounding of the normalisation differs);
    * our exported vision graph on our pixels vs on LLaVA's pixels: identical (same input);
    * our runtime vs transformers on the processor's tensor: the export tolerance (graph vs torch).
    """
    spec = vlm_setup["bundle"].manifest.preprocess
    paths = []
    for i, (w, h) in enumerate([(57, 23), (23, 57), (101, 64), (19, 30)]):
        paths.append(_save(make_image("RGB", w, h, seed=40 + i), vlm_setup["files"] / f"feat-{i}.png", {}))
    from rsvlm_edge.models.llava.preprocess import preprocess_images

    ours_u8 = preprocess_images([str(p) for p in paths], spec)
    ref_norm = torch.from_numpy(np.stack([llava_reference(p, spec.image_size, spec.mean) for p in paths])).float()
    ref_u8 = np.stack([llava_reference(p, spec.image_size, spec.mean, do_rescale=False, do_normalize=False)
                       for p in paths]).transpose(0, 2, 3, 1).astype(np.uint8)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    ours_norm = (torch.from_numpy(ours_u8).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    model = vlm_setup["model"]
    ref = _hf_features(model, ref_norm)
    np.testing.assert_allclose(_hf_features(model, ours_norm), ref, rtol=0, atol=1e-5)
    rt = vlm_setup["rt"]
    got = rt.encode_images([str(p) for p in paths])
    np.testing.assert_array_equal(got, rt.encode_images(list(ref_u8)))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@fidelity
def test_geochat_sizes_504_same_pipeline(tmp_path):
    """GeoChat calls the same processor with crop/shortest_edge 504 after the same expand2square."""
    from rsvlm_edge.bundle.schema import Preprocess
    from rsvlm_edge.models.llava.preprocess import preprocess_images

    spec = Preprocess(image_size=504, crop_rounding="floor", pad_to_square=True, fill_rgb=[122, 116, 104],
                      mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711])
    path = _save(make_image("RGB", 640, 427, seed=3), tmp_path / "geochat.jpg", {"quality": 90})
    ref = llava_reference(path, 504, spec.mean, do_rescale=False, do_normalize=False)
    np.testing.assert_array_equal(preprocess_images([str(path)], spec)[0],
                                  np.asarray(ref).transpose(1, 2, 0).astype(np.uint8))


# ---------------------------------------------------------------- centre-crop offsets
MARGINS = [(dw, dh) for dw in range(0, 8) for dh in (0, 1, 3, 5)]


@fidelity
@pytest.mark.parametrize("dw,dh", MARGINS)
def test_crop_round_matches_torchvision_center_crop(dw, dh):
    from torchvision.transforms import CenterCrop

    img = make_image("RGB", 32 + dw, 32 + dh, seed=dw * 10 + dh)
    ref = np.asarray(CenterCrop(32)(img))
    np.testing.assert_array_equal(np.asarray(images_mod.center_crop(img, 32, "round")), ref)


def _transformers_processors():
    from transformers import CLIPImageProcessor

    out = [CLIPImageProcessor]
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        out.append(CLIPImageProcessorPil)
    except ImportError:
        pass
    return out


@fidelity
@pytest.mark.parametrize("dw,dh", MARGINS)
def test_crop_floor_matches_transformers_clip_image_processor(dw, dh):
    img = make_image("RGB", 32 + dw, 32 + dh, seed=dw * 10 + dh)
    ours = np.asarray(images_mod.center_crop(img, 32, "floor"))
    for cls in _transformers_processors():
        proc = cls(do_resize=False, crop_size={"height": 32, "width": 32}, do_rescale=False, do_normalize=False)
        ref = np.asarray(proc(img, return_tensors="np")["pixel_values"][0]).transpose(1, 2, 0).astype(np.uint8)
        np.testing.assert_array_equal(ours, ref, err_msg=cls.__name__)


@fidelity
def test_crop_rule_differs_on_odd_margins_and_manifest_records_it(clip_setup):
    img = make_image("RGB", 35, 32, seed=1)  # margin 3: round(1.5) = 2, 3 // 2 = 1
    assert not np.array_equal(np.asarray(images_mod.center_crop(img, 32, "round")),
                              np.asarray(images_mod.center_crop(img, 32, "floor")))
    assert clip_setup["bundle"].manifest.preprocess.crop_rounding == "round"


@fidelity
@pytest.mark.parametrize("size", [(100, 37), (37, 100), (83, 64)], ids=["wide", "tall", "odd"])
def test_resize_and_floor_crop_match_transformers_pil_processor(size):
    """Resize + crop (no padding) as transformers' PIL processor, for VLM bundles without pad."""
    w, h = size
    img = make_image("RGB", w, h, seed=w)
    proc = _pil_clip_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                       do_rescale=False, do_normalize=False, resample=3)
    ref = np.asarray(proc(img, return_tensors="np")["pixel_values"][0]).transpose(1, 2, 0).astype(np.uint8)
    np.testing.assert_array_equal(images_mod.resize_shortest_center_crop(img, 32, "floor"), ref)


# ---------------------------------------------------------------- pixel limits
@pytest.fixture
def small_limit():
    old = images_mod.max_pixels()
    images_mod.set_max_pixels(1000)
    yield 1000
    images_mod.set_max_pixels(old)


@limits
def test_above_pixel_limit_names_file_and_limit(clip_setup, small_limit, tmp_path):
    p = tmp_path / "big.png"
    make_image("RGB", 40, 40).save(p)  # 1,600 > 1,000
    with pytest.raises(InputError) as e:
        clip_setup["rt"].encode_images([str(p)])
    assert str(p) in e.value.message and "1,000" in e.value.message and "--max-image-pixels" in e.value.fix


@limits
def test_pixel_limit_applies_to_pil_images_and_arrays(clip_setup, small_limit):
    with pytest.raises(InputError, match="above the limit of 1,000"):
        clip_setup["rt"].pixels([make_image("RGB", 40, 40)])
    with pytest.raises(InputError, match=r"image array #0 .*above the limit of 1,000"):
        clip_setup["rt"].pixels([np.zeros((40, 40, 3), np.uint8)])


@limits
def test_set_max_pixels_rejects_bad_values():
    for bad in (0, -5, 1.5, "100", True):
        with pytest.raises(InputError, match="positive integer"):
            images_mod.set_max_pixels(bad)


def _png_header_only(path: Path, w: int, h: int, mode_bytes: bytes = b"\x08\x00") -> Path:
    """A valid PNG signature + IHDR claiming w x h (8-bit grey), one tiny IDAT: a bomb on disk."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">II", w, h) + mode_bytes + b"\x00\x00\x00"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


@limits
def test_decompression_bomb_header_refused_before_decoding(clip_setup, tmp_path):
    p = _png_header_only(tmp_path / "bomb.png", 50_000, 50_000)  # 2.5e9 pixels in ~100 bytes
    t0 = time.perf_counter()
    with pytest.raises(InputError) as e:
        clip_setup["rt"].encode_images([str(p)])
    assert time.perf_counter() - t0 < 5
    assert "bomb.png" in e.value.message and f"{images_mod.max_pixels():,}" in e.value.message
    assert "2,500,000,000" in e.value.message


@limits
def test_pil_global_limit_restored_after_decoding(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    p = tmp_path / "ok.png"
    make_image("RGB", 20, 10).save(p)
    images_mod.load_image(str(p))
    with pytest.raises(InputError):
        images_mod.load_image(str(_png_header_only(tmp_path / "bomb.png", 50_000, 50_000)))
    assert Image.MAX_IMAGE_PIXELS == before


@limits
def test_real_1_by_80_million_png_refused_by_aspect_ratio_without_decoding(clip_setup, tmp_path):
    """80,000,000 pixels is under the default limit, but resizing the shortest side (1 px) to 64
    would make 64 x 5,120,000,000: refused from the header, before decoding or resizing."""
    p = tmp_path / "strip.png"
    Image.new("L", (80_000_000, 1), 128).save(p, compress_level=1)
    t0 = time.perf_counter()
    with pytest.raises(InputError) as e:
        clip_setup["rt"].encode_images([str(p)])
    assert time.perf_counter() - t0 < 2.0  # the header only (decoding 80 MB and resizing would take far longer)
    msg = e.value.message
    assert "strip.png" in msg and "aspect ratio" in msg and f"{images_mod.max_pixels():,}" in msg
    r = run_cli("classify", str(clip_setup["bundle"].path), str(p), "--labels", "a,b")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "error:" in r.stderr and "strip.png" in r.stderr


@limits
def test_extreme_aspect_ratio_refused_before_resizing(clip_setup, monkeypatch):
    img = Image.new("RGB", (1, 200_000), (9, 9, 9))  # 200k px; resize would make 64 x 12.8M

    def no_resize(*a, **k):
        raise AssertionError("resize called")

    monkeypatch.setattr(Image.Image, "resize", no_resize)
    with pytest.raises(InputError, match=r"aspect ratio 200,000:1\) would be resized to 64x12800000"):
        clip_setup["rt"].pixels([img])


@limits
def test_extreme_aspect_ratio_refused_before_padding_for_llava(monkeypatch):
    from rsvlm_edge.bundle.schema import Preprocess
    from rsvlm_edge.models.llava.preprocess import preprocess_images

    spec = Preprocess(image_size=32, crop_rounding="floor", pad_to_square=True, fill_rgb=[122, 116, 104],
                      mean=[0.5] * 3, std=[0.5] * 3)
    img = Image.new("RGB", (20_000, 1), (9, 9, 9))  # 20k px; the padded square would be 400M px
    real_new = Image.new

    def guarded_new(mode, size, *a, **k):
        assert size[0] * size[1] <= 10_000_000, f"allocating {size}"
        return real_new(mode, size, *a, **k)

    monkeypatch.setattr(Image, "new", guarded_new)
    with pytest.raises(InputError, match=r"padded to a 20000x20000 square"):
        preprocess_images([img], spec)


@limits
@pytest.mark.parametrize("shape", [(0, 10, 3), (10, 0, 3), (0, 0), (5, 0), (0, 5, 4)])
def test_zero_size_arrays_refused(clip_setup, shape):
    with pytest.raises(InputError, match="empty"):
        clip_setup["rt"].pixels([np.zeros(shape, np.uint8)])


@limits
def test_zero_size_pil_image_refused(clip_setup):
    with pytest.raises(InputError, match=r"empty \(0x5 pixels\)"):
        clip_setup["rt"].pixels([Image.new("RGB", (0, 5))])


@limits
def test_zero_size_png_file_refused_naming_it(clip_setup, tmp_path):
    p = _png_header_only(tmp_path / "zero.png", 0, 7)
    with pytest.raises(InputError) as e:
        clip_setup["rt"].encode_images([str(p)])
    assert "zero.png" in e.value.message


@limits
def test_truncated_and_non_image_files_refused(clip_setup, tmp_path):
    good = io.BytesIO()
    make_image("RGB", 80, 60).save(good, format="PNG")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for p in (trunc, text):
        with pytest.raises(InputError, match="could not be decoded") as e:
            clip_setup["rt"].encode_images([str(p)])
        assert p.name in e.value.message


@limits
def test_directory_and_missing_path_refused(clip_setup, tmp_path):
    with pytest.raises(InputError, match="is not a file"):
        images_mod.load_image(str(tmp_path))
    with pytest.raises(InputError, match="does not exist"):
        images_mod.load_image(str(tmp_path / "nope.png"))


@limits
def test_concurrent_decoding_same_pixels_and_pil_limit_restored(tmp_path):
    """The PIL bomb-check switch is counted across threads: decodes in parallel give the same
    pixels as one at a time, and PIL's global limit is back afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    before = Image.MAX_IMAGE_PIXELS
    paths = []
    for i, (case, kind, suffix, kw) in enumerate(c for c in FILE_CASES if c[2] != ".webp"):
        paths.append(_save(make_image(kind, 90 + i, 50 + 3 * i, seed=i), tmp_path / f"{case}{suffix}", kw))
    serial = [images_mod.clip_pixels([p], S)[0] for p in paths]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            par = list(pool.map(lambda p: images_mod.clip_pixels([p], S)[0], paths))
            for a, b in zip(serial, par):
                np.testing.assert_array_equal(a, b)
    assert Image.MAX_IMAGE_PIXELS == before
