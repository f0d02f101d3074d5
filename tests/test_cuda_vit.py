"""The ``cuda-vit`` graph backend (rsvlm_edge/backends/graph_cuda_vit.py) and ``_C.DeviceArray`` (issue 10: a CLIP
ViT end to end on our CUDA kernels).

Everywhere: the backend says why it cannot run (no CUDA build, no device), ``auto`` never picks it, and a
preference naming it is one BackendError. On a GPU (``cuda`` tests, skipped elsewhere): DeviceArray copies and
views, ops taking DeviceArrays, and the tower's embeddings against open_clip's own ``encode_image`` (fp32 torch)
and the CPU ``native-vit`` tower on the same bundles, batches 1 / 3 / 2 (buffers reused) and 0.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")

from clip_models import open_clip_image_embeds  # noqa: E402
from test_native_vit import bundles, cosines, model_and_ckpt  # noqa: E402, F401  (fixtures)

from rsvlm_edge.backends import choose, registry  # noqa: E402
from rsvlm_edge.errors import BackendError  # noqa: E402
from rsvlm_edge.export.clip import synthetic_rs_images  # noqa: E402
from rsvlm_edge.models.clip.runtime import ClipRuntime  # noqa: E402

C = pytest.importorskip("rsvlm_edge._C")
GPU = C.built_with_cuda() and C.cuda_device_count() > 0


def test_device_array_needs_a_cuda_build():
    if C.built_with_cuda():
        pytest.skip("this build has CUDA")
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        C.DeviceArray((2, 3), "float16")


def test_the_backend_says_why_it_cannot_run_and_auto_never_picks_it(bundles):  # noqa: F811  (the fixture)
    row = next(r for r in registry.doctor_rows() if r["backend"] == "cuda-vit")
    part = bundles["fp32"].manifest.parts["image"]
    assert choose("graph", "auto", part).name != "cuda-vit"  # not measured on a GPU yet: opt-in
    if GPU:
        assert row["available"] == "yes"
        assert choose("graph", "cuda-vit", part).name == "cuda-vit"
        return
    assert row["available"] == "no" and ("without CUDA" in row["why not"] or "no CUDA device" in row["why not"])
    with pytest.raises(BackendError, match="cuda-vit"):
        choose("graph", "cuda-vit", part, "image")


@pytest.mark.cuda
def test_device_array_bad_arguments(cuda_device):
    if not GPU:
        pytest.skip("this build of rsvlm_edge._C has no CUDA kernels")
    with pytest.raises(ValueError, match="dtype must be"):
        C.DeviceArray((2,), "float64")
    a = C.DeviceArray.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
    with pytest.raises(ValueError, match="does not fit"):
        a.reshape((13,))
    with pytest.raises(ValueError, match="does not fit"):
        a.reshape((4,), 9)
    with pytest.raises(ValueError, match="needs a float32 array of shape"):
        a.copy_from(np.zeros((4, 3), np.float32))


@pytest.mark.cuda
def test_device_array_round_trip_views_and_ops(cuda_device):
    if not GPU:
        pytest.skip("this build of rsvlm_edge._C has no CUDA kernels")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 64)).astype(np.float16)
    d = C.DeviceArray.from_numpy(x)
    assert d.shape == (6, 64) and d.dtype == np.float16 and d.nbytes == x.nbytes
    np.testing.assert_array_equal(d.numpy(), x)
    np.testing.assert_array_equal(d.reshape((2, 3, 64)).numpy(), x.reshape(2, 3, 64))
    np.testing.assert_array_equal(d.reshape((64,), 64).numpy(), x[1])  # row 1, no copy
    assert not C.DeviceArray((3,), "int32").numpy().any()  # zero-filled
    g, b = (C.DeviceArray.from_numpy(rng.standard_normal(64).astype(np.float16)) for _ in range(2))
    out = C.DeviceArray((6, 64), "float16")
    C.layer_norm(d, g, b, eps=1e-5, out=out)
    want = C.layer_norm(x.astype(np.float32), g.numpy().astype(np.float32), b.numpy().astype(np.float32), eps=1e-5)
    np.testing.assert_allclose(out.numpy().astype(np.float32), want, atol=2e-2, rtol=1e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("precision,min_cos", [("fp32", 0.999), ("fp16", 0.999), ("int8", 0.99)])
def test_cuda_tower_matches_open_clip_and_the_cpu_tower(cuda_device, model_and_ckpt, bundles,  # noqa: F811
                                                        precision, min_cos):
    """fp16 activations on the device: embeddings of non-trivial images within min_cos of open_clip's fp32
    encode_image and of native-vit on the CPU (same bundle), for batches 1, 3, 2 (the buffers of 3 reused)."""
    if not GPU:
        pytest.skip("this build of rsvlm_edge._C has no CUDA kernels")
    model = model_and_ckpt[0]
    bundle = bundles[precision]
    gpu = ClipRuntime(bundle, backend="cuda-vit")
    cpu = ClipRuntime(bundle, backend="native-vit")
    assert gpu.backend == "cuda-vit"
    for batch, seed in ((1, 1), (3, 2), (2, 3)):
        px = synthetic_rs_images(batch, 64, seed=seed)
        got = gpu.encode_images(px, normalize=False)
        assert got.shape == (batch, bundle.manifest.model.embed_dim) and np.isfinite(got).all()
        assert cosines(got, open_clip_image_embeds(model, px)).min() >= min_cos
        assert cosines(got, cpu.encode_images(px, normalize=False)).min() >= min_cos
    (empty,) = gpu._image.run({"pixels": np.zeros((0, 64, 64, 3), np.uint8)})
    assert empty.shape == (0, bundle.manifest.model.embed_dim)


@pytest.mark.campaign("cli")
def test_the_cli_refuses_cuda_vit_where_it_cannot_run_in_one_error_line(bundles, tmp_path):  # noqa: F811
    """`--backend graph=cuda-vit` without a CUDA build or a device: one error: line naming the backend and why,
    one fix: line, exit 2, nothing written."""
    if GPU:
        pytest.skip("a GPU is visible: the backend runs")
    from PIL import Image
    from util import run_cli

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(synthetic_rs_images(1, 64, seed=0)[0]).save(images / "a.png")
    out = tmp_path / "e.npz"
    proc = run_cli("embed", str(bundles["fp32"].path), str(images), "-o", str(out), "--backend", "graph=cuda-vit")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: backend 'cuda-vit' is not available") and lines[1].strip().startswith("fix:")
    assert "Traceback" not in proc.stderr and not out.exists()
