"""INT8 export: the S8S8 (TensorRT) variant beside the U8S8 (onnxruntime CPU) graph from one
calibration pass (issue 9), and calibration that streams lazily decoded batches in bounded memory
with ``--calib-batch`` (issue 12). Everything runs on the CPU with onnxruntime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from clip_models import LABELS, cos, save_bare, tiny_open_clip  # noqa: E402
from util import run_cli  # noqa: E402

import rsvlm_edge  # noqa: E402
from rsvlm_edge.backends.graph_ort import OrtGraph  # noqa: E402
from rsvlm_edge.bundle import open_bundle, sha256_of  # noqa: E402
from rsvlm_edge.errors import BundleError, InputError  # noqa: E402
from rsvlm_edge.export.clip import IMAGE_S8S8_FILE, calibration_batches, export_clip  # noqa: E402
from rsvlm_edge.export.onnx_utils import QUANTIZED_OPS, calibrate_minmax, quantize_int8_qdq  # noqa: E402
from rsvlm_edge.synthetic import synthetic_rs_images  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_bare(tiny_open_clip(), tmp_path_factory.mktemp("s8ckpt") / "RemoteCLIP-tiny.pt")


@pytest.fixture(scope="module")
def fp32_bundle(ckpt, tmp_path_factory) -> Path:
    return export_clip(ckpt, tmp_path_factory.mktemp("s8fp32") / "fp32.rsvlm", max_batch=8).path


@pytest.fixture(scope="module")
def int8_bundle(ckpt, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s8int8")
    calib = root / "calib"
    calib.mkdir()
    from PIL import Image

    for i, a in enumerate(synthetic_rs_images(24, 96, seed=500)):
        Image.fromarray(a).save(calib / f"{i:03d}.png")
    return export_clip(ckpt, root / "int8.rsvlm", precision="int8", calib=calib, calib_batch=5, max_batch=8).path


def _qdq(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """QuantizeLinear nodes of a graph: input tensor -> (scale, zero point) arrays."""
    from onnx import numpy_helper

    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return {n.input[0]: (init[n.input[1]], init[n.input[2]]) for n in m.graph.node if n.op_type == "QuantizeLinear"}


def _s8s8_graph(bundle: Path) -> OrtGraph:
    b = open_bundle(bundle)
    part = b.manifest.parts["image"]
    variant = part.variants["s8s8"]
    return OrtGraph(part, b.file(variant.file), ["CPUExecutionProvider"], "s8s8-on-cpu", files=b.manifest.files,
                    graph=variant)


def test_int8_export_records_the_s8s8_variant(int8_bundle):
    m = json.loads((int8_bundle / "manifest.json").read_text())
    image = m["parts"]["image"]
    assert image["precision"] == "int8-qdq" and image["file"] == "image.onnx"
    assert image["variants"] == {"s8s8": {"file": IMAGE_S8S8_FILE, "precision": "int8-qdq",
                                          "activations": "int8-symmetric", "weights": "int8-symmetric-per-channel"}}
    assert IMAGE_S8S8_FILE in m["files"] and "variants" not in m["parts"]["text"]
    assert m["validation"]["image_s8s8_cosine_min"] >= 0.99


def test_u8s8_and_s8s8_graphs_have_their_schemes_from_the_same_ranges(int8_bundle):
    u8, s8 = _qdq(int8_bundle / "image.onnx"), _qdq(int8_bundle / IMAGE_S8S8_FILE)
    assert set(u8) == set(s8) and len(u8) >= 4  # the same tensors are quantised in both
    activations = [name for name, (scale, _) in u8.items() if scale.ndim == 0]
    assert activations
    for name in activations:
        (su, zu), (ss, zs) = u8[name], s8[name]
        assert zu.dtype == np.uint8 and zs.dtype == np.int8 and int(zs) == 0  # U8S8 vs symmetric int8
        # U8S8 covers [rmin, rmax] = [-zp * s, (255 - zp) * s] (rounded to a step); S8S8 covers +-max|r| / 127
        rmin, rmax = -float(zu) * float(su), (255 - float(zu)) * float(su)
        np.testing.assert_allclose(float(ss) * 127, max(-rmin, rmax), atol=float(su))
    for name, (scale, zp) in s8.items():  # weights: per-channel, symmetric int8
        if scale.ndim == 1:
            assert zp.dtype == np.int8 and not zp.any() and len(scale) > 1


def test_s8s8_graph_matches_fp32_on_cpu(int8_bundle, fp32_bundle):
    """The S8S8 graph run by onnxruntime's CPU kernels vs the fp32 bundle on 64 held-out images:
    cosine >= 0.99 and zero-shot top-1 agreement >= 95 % (the issue's gate)."""
    px = synthetic_rs_images(64, 64, seed=77)
    graph = _s8s8_graph(int8_bundle)
    assert graph.variant == "s8s8" and graph.provider == "CPUExecutionProvider"
    got = graph.run({graph.input_names[0]: px})[0]
    rt32 = rsvlm_edge.load(fp32_bundle, backend="ort-cpu")
    ref = rt32.encode_images(px)
    c = cos(got, ref)
    assert c.min() >= 0.99, c.min()
    top_s8 = rt32.classify_embeddings(got / np.linalg.norm(got, axis=1, keepdims=True), LABELS).probs.argmax(1)
    top_32 = rt32.classify(px, LABELS).probs.argmax(1)
    assert (top_s8 == top_32).mean() >= 0.95


def test_ort_cpu_keeps_running_the_u8s8_graph(int8_bundle):
    rt = rsvlm_edge.load(int8_bundle, backend="ort-cpu")
    assert rt._image.path.name == "image.onnx" and rt._image.variant is None


def test_calibration_is_one_pass_over_the_batches_for_both_schemes(fp32_bundle, tmp_path):
    consumed, progressed = [], []

    def batches():
        for i in range(3):
            consumed.append(i)
            yield {"pixels": synthetic_rs_images(4, 64, seed=i)}

    out = {"u8s8": tmp_path / "u8.onnx", "s8s8": tmp_path / "s8.onnx"}
    quantize_int8_qdq(fp32_bundle / "image.onnx", out, batches(), tmp_path, on_batch=lambda: progressed.append(1))
    assert consumed == [0, 1, 2] and len(progressed) == 3  # a generator: a second pass would see nothing
    assert all(p.is_file() for p in out.values()) and sorted(tmp_path.iterdir()) == sorted(out.values())


def test_batch_by_batch_ranges_equal_onnxruntimes_one_call(fp32_bundle, tmp_path):
    """Merging the ranges batch by batch (bounded memory) gives exactly what onnxruntime's calibrator
    computes over all batches in one call."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, load_tensors_data

    feeds = [{"pixels": synthetic_rs_images(3, 64, seed=10 + i)} for i in range(4)]
    calibrate_minmax(fp32_bundle / "image.onnx", iter(feeds), tmp_path / "ours.json", tmp_path)
    ours = load_tensors_data(tmp_path / "ours.json")

    class Reader:
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    ref = create_calibrator(fp32_bundle / "image.onnx", QUANTIZED_OPS, str(tmp_path / "aug.onnx"),
                            CalibrationMethod.MinMax)
    ref.collect_data(Reader())
    theirs = ref.compute_data()
    assert set(ours.data) == set(theirs.data) and ours.data
    for name in theirs.data:
        np.testing.assert_array_equal(np.asarray(ours.data[name].range_value),
                                      np.asarray(theirs.data[name].range_value))


@pytest.mark.campaign("inputs")
def test_calibration_images_are_decoded_lazily_one_batch_at_a_time(tmp_path):
    from PIL import Image

    for i, a in enumerate(synthetic_rs_images(12, 80, seed=3)):
        Image.fromarray(a).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "999-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    n, batches = calibration_batches(tmp_path, 64, 0, 4)
    assert n == 4
    for _ in range(3):  # the first 12 images decode; nothing has read the broken file yet
        assert next(batches).shape == (4, 64, 64, 3)
    with pytest.raises(InputError, match="999-broken.png"):
        next(batches)


def test_synthetic_calibration_batches_cover_every_image():
    n, batches = calibration_batches(None, 32, 10, 4)
    sizes = [len(b) for b in batches]
    assert n == 3 and sizes == [4, 4, 2]


@pytest.mark.campaign("cli")
@pytest.mark.parametrize("value", ["0", "-3"])
def test_calib_batch_must_be_positive(ckpt, tmp_path, value):
    out = tmp_path / "x.rsvlm"
    r = run_cli("export", "clip", str(ckpt), "-o", str(out), "--precision", "int8", "--calib-batch", value)
    assert r.returncode == 2 and "error:" in r.stderr and "--calib-batch" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
    with pytest.raises(InputError, match="--calib-batch"):
        export_clip(ckpt, out, precision="int8", calib_batch=0)


# ---- the manifest: variants are optional, additive and checked -------------------------------------

def _relisted(bundle: Path, dest: Path, edit) -> Path:
    shutil.copytree(bundle, dest)
    m = json.loads((dest / "manifest.json").read_text())
    edit(m)
    m["files"] = {n: {"size": (dest / n).stat().st_size, "sha256": sha256_of(dest / n)}
                  for n in m["files"] if (dest / n).is_file()}
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def test_v2_manifest_without_variants_stays_valid(int8_bundle, tmp_path):
    def drop(m):
        del m["parts"]["image"]["variants"]
        (tmp_path / "old.rsvlm" / IMAGE_S8S8_FILE).unlink()

    old = _relisted(int8_bundle, tmp_path / "old.rsvlm", drop)
    part = open_bundle(old).manifest.parts["image"]
    assert part.variants == {} and part.precision == "int8-qdq"
    assert rsvlm_edge.load(old, backend="ort-cpu").encode_images(synthetic_rs_images(2, 64, seed=1)).shape == (2, 64)


@pytest.mark.campaign("manifest")
@pytest.mark.parametrize("case,edit,needle", [
    ("variant on an fp32 part", lambda m: m["parts"]["text"].__setitem__("variants", m["parts"]["image"]["variants"]),
     "no int8 variants"),
    ("unknown variant key", lambda m: m["parts"]["image"].__setitem__(
        "variants", {"u4": m["parts"]["image"]["variants"]["s8s8"]}), "variants"),
    ("unlisted variant file", lambda m: m["parts"]["image"]["variants"]["s8s8"].__setitem__("file", "nope.onnx"),
     "does not list"),
    ("variant leaves the bundle", lambda m: m["parts"]["image"]["variants"]["s8s8"].__setitem__("file", "../x.onnx"),
     "leaves the bundle"),
    ("variant is the part's own file", lambda m: m["parts"]["image"]["variants"]["s8s8"].__setitem__(
        "file", "image.onnx"), "own file"),
    ("asymmetric activations claimed", lambda m: m["parts"]["image"]["variants"]["s8s8"].__setitem__(
        "activations", "uint8-asymmetric"), "activations"),
])
def test_bad_variant_is_refused_naming_the_field(int8_bundle, tmp_path, case, edit, needle):
    bad = _relisted(int8_bundle, tmp_path / "bad.rsvlm", edit)
    with pytest.raises(BundleError, match=needle):
        open_bundle(bad)
