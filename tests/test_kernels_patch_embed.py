"""Fused patch embedding (kernels/patch_embed/, csrc/bind_patch_embed.cpp) + position-embedding
interpolation + tensor arguments (rsvlm_edge._C).

The fast CPU path and the CUDA kernel are compared with the naive reference `_C.patch_embed_reference`
(plain loops, fp64); the reference and the fast path with torch used exactly the way open_clip's
VisionTransformer does (F.conv2d on the normalised image, cat class token, + positional_embedding,
F.layer_norm), plus one check against a real open_clip VisionTransformer. Outputs are NaN-poisoned.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

C = pytest.importorskip("rsvlm_edge._C")

MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP
STD = (0.26862954, 0.26130258, 0.27577711)


class native:  # noqa: N801  (the _C calls these tests make, with CLIP's mean/std as defaults)
    """Keyword-friendly access to the bindings, independent of the Python package's wrappers."""

    @staticmethod
    def _call(fn, images, weight, class_emb, pos_emb, bias=None, ln_gamma=None, ln_beta=None, mean=MEAN, std=STD,
              eps=1e-5, out=None, **kw):
        return fn(images, weight, bias, class_emb, pos_emb, mean, std, ln_gamma=ln_gamma, ln_beta=ln_beta, eps=eps,
                  out=out, **kw)

    @staticmethod
    def patch_embed(*args, **kw):
        return native._call(C.patch_embed, *args, **kw)

    @staticmethod
    def patch_embed_reference(*args, **kw):
        return native._call(C.patch_embed_reference, *args, **kw)

    interpolate_pos_embed = staticmethod(C.interpolate_pos_embed)
    tensor_arg_info = staticmethod(C.tensor_arg_info)
    built_with_cuda = staticmethod(C.built_with_cuda)

# (batch, height, width, patch, dim): odd grids (7x7, 5x7), ViT-B/32@224 (7x7, K=3072), 336/14 (24x24).
CASES = [
    (1, 28, 28, 4, 48),
    (3, 28, 28, 4, 48),
    (3, 20, 28, 4, 96),
    (3, 224, 224, 32, 96),
    (1, 336, 336, 14, 64),
]


def make_inputs(batch, height, width, patch, dim, bias=True, ln=True, seed=0):
    rng = np.random.default_rng(seed)
    n = (height // patch) * (width // patch)
    f32 = np.float32
    inp = {
        "images": rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8),
        "weight": (rng.standard_normal((dim, 3, patch, patch)) * (1.0 / (3 * patch * patch) ** 0.5)).astype(f32),
        "bias": rng.standard_normal(dim).astype(f32) * 0.1 if bias else None,
        "class_emb": rng.standard_normal(dim).astype(f32),
        "pos_emb": rng.standard_normal((n + 1, dim)).astype(f32),
        "ln_gamma": (1.0 + 0.2 * rng.standard_normal(dim)).astype(f32) if ln else None,
        "ln_beta": (0.2 * rng.standard_normal(dim)).astype(f32) if ln else None,
    }
    return inp


def reference(images, weight, bias, class_emb, pos_emb, ln_gamma, ln_beta, eps=1e-5, mean=MEAN, std=STD):
    """fp32 torch, step by step as open_clip's VisionTransformer.forward."""
    t = lambda a: None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    w = t(weight)
    x = F.conv2d(x, w, t(bias), stride=w.shape[-1])  # conv1
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = t(class_emb).view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + t(pos_emb)
    if ln_gamma is not None:
        x = F.layer_norm(x, (x.shape[-1],), t(ln_gamma), t(ln_beta), eps)  # ln_pre
    return x.numpy()


def poisoned(shape):
    return np.full(shape, np.nan, dtype=np.float32)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}_{}x{}_p{}_d{}".format(*c))
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("ln", [False, True], ids=["noln", "ln"])
def test_patch_embed_cpu_and_reference_match_open_clip_math(case, bias, ln):
    b, h, w, p, d = case
    inp = make_inputs(b, h, w, p, d, bias=bias, ln=ln)
    n = (h // p) * (w // p)
    out = poisoned((b, n + 1, d))
    got = native.patch_embed(out=out, **inp)
    assert got is out
    ref = poisoned((b, n + 1, d))
    assert native.patch_embed_reference(out=ref, **inp) is ref
    want = reference(**inp)
    assert np.isfinite(got).all() and np.isfinite(ref).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ref, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)  # fast path vs the naive reference


@pytest.mark.parametrize("b, h, w, p, d", [(1, 7, 7, 7, 1), (2, 14, 21, 7, 5), (1, 54, 6, 2, 3), (2, 2, 2, 1, 97)])
def test_patch_embed_matches_reference_odd_shapes(b, h, w, p, d):
    inp = make_inputs(b, h, w, p, d, seed=3)
    n = (h // p) * (w // p)
    got = native.patch_embed(out=poisoned((b, n + 1, d)), **inp)
    ref = native.patch_embed_reference(out=poisoned((b, n + 1, d)), **inp)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)


def packed_weight(weight):
    """The conv weight quantised to int8 per output channel and packed for qgemm (the native-vit w8 tower's)."""
    q, s = C.quantize_weight_int8(np.ascontiguousarray(weight.reshape(weight.shape[0], -1)))
    return C.qgemm_pack(q, s)


@pytest.mark.cpu_kernel_sets("amx", "avx512vnni", "avx2", "portable")
@pytest.mark.parametrize("b, h, w, p, d", [(1, 7, 7, 7, 1), (2, 14, 21, 7, 5), (2, 2, 2, 1, 97), (3, 224, 224, 32, 96)])
def test_packed_int8_weight_matches_reference(cpu_kernels, b, h, w, p, d):
    """The W8A8 conv (qgemm on the patch rows) against the reference computing qgemm's definition from the
    packed layout; NaN-poisoned output; with and without bias and ln_pre."""
    for bias, ln in ((True, True), (False, False)):
        inp = make_inputs(b, h, w, p, d, bias=bias, ln=ln, seed=d)
        inp["weight"] = packed_weight(inp["weight"])
        out = np.full((b, (h // p) * (w // p) + 1, d), np.nan, np.float32)
        got = native.patch_embed(**inp, out=out)
        want = native.patch_embed_reference(**inp)
        assert got is out and np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_packed_int8_weight_is_close_to_the_float_conv():
    """int8 weights and per-row int8 patches: every token within int8 error of the fp32 embedding."""
    inp = make_inputs(2, 224, 224, 32, 96, seed=3)
    full = native.patch_embed(**inp)
    inp["weight"] = packed_weight(inp["weight"])
    int8 = native.patch_embed(**inp)
    cos = (full * int8).sum(-1) / np.linalg.norm(full, axis=-1) / np.linalg.norm(int8, axis=-1)
    assert cos.min() > 0.999


@pytest.mark.campaign("native")
def test_packed_int8_weight_bad_arguments():
    inp = make_inputs(1, 28, 28, 4, 48)
    pk = packed_weight(inp["weight"])
    with pytest.raises(ValueError, match=r"argument 'weight' is not a buffer from qgemm_pack"):
        native.patch_embed(**{**inp, "weight": np.zeros(100, np.uint8)})
    with pytest.raises(ValueError, match=r"argument 'weight' is not a buffer from qgemm_pack"):
        native.patch_embed(**{**inp, "weight": pk[:-1].copy()})  # truncated
    q, s = C.quantize_weight_int8(np.ones((48, 47), np.float32))
    with pytest.raises(ValueError, match=r"packs a \(48, 47\) weight; a conv weight has 3\*P\*P inputs"):
        native.patch_embed(**{**inp, "weight": C.qgemm_pack(q, s)})
    with pytest.raises(ValueError, match=r"argument 'class_emb' must have shape \(D=48,\) float32"):
        native.patch_embed(**{**inp, "weight": pk, "class_emb": np.zeros(47, np.float32)})
    with pytest.raises(ValueError, match=r"argument 'pos_emb' has 3 rows"):
        native.patch_embed(**{**inp, "weight": pk, "pos_emb": np.zeros((3, 48), np.float32)})


def test_patch_embed_zero_batch_and_degenerate_sizes():
    inp = make_inputs(1, 28, 28, 4, 48)
    inp["images"] = np.zeros((0, 28, 28, 3), np.uint8)
    for fn in (native.patch_embed, native.patch_embed_reference):
        assert fn(**inp).shape == (0, 50, 48)
    base = make_inputs(1, 28, 28, 4, 48)
    for over, match in [
        ({"weight": np.zeros((48, 3, 0, 0), np.float32)}, r"argument 'weight' must have shape \(D, 3, P, P\) with 1 <= P"),
        ({"weight": np.zeros((0, 3, 4, 4), np.float32), "bias": None, "class_emb": np.zeros(0, np.float32),
          "pos_emb": np.zeros((50, 0), np.float32), "ln_gamma": None, "ln_beta": None},
         r"argument 'weight' must have shape \(D, 3, P, P\) with 1 <= D"),
        ({"images": np.zeros((1, 0, 28, 3), np.uint8)}, r"argument 'images' must have shape \(B, H, W, 3\) with H, W >="),
        ({"std": (0.5, 0.0, 0.5)}, r"argument 'std' must be 3 finite, non-zero floats"),
        ({"mean": (0.5, float("nan"), 0.5)}, r"argument 'mean' must be 3 finite floats"),
        ({"eps": 0.0}, r"argument 'eps' must be > 0"),
    ]:
        for fn in (native.patch_embed, native.patch_embed_reference):
            with pytest.raises(ValueError, match=match):
                fn(**{**base, **over})


def test_patch_embed_allocates_output():
    inp = make_inputs(2, 28, 28, 4, 48)
    got = native.patch_embed(**inp)
    assert isinstance(got, np.ndarray) and got.shape == (2, 50, 48) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(**inp), rtol=1e-4, atol=1e-4)


def test_patch_embed_custom_mean_std_and_eps():
    inp = make_inputs(2, 28, 28, 4, 48)
    mean, std = (0.5, 0.25, 0.125), (0.5, 0.75, 1.5)
    got = native.patch_embed(mean=mean, std=std, eps=1e-3, out=poisoned((2, 50, 48)), **inp)
    np.testing.assert_allclose(got, reference(**inp, eps=1e-3, mean=mean, std=std), rtol=1e-4, atol=1e-4)


def test_patch_embed_matches_open_clip_vision_transformer():
    open_clip_transformer = pytest.importorskip("open_clip.transformer")
    torch.manual_seed(0)
    vit = open_clip_transformer.VisionTransformer(
        image_size=28, patch_size=4, width=48, layers=1, heads=4, mlp_ratio=2.0, output_dim=16
    ).eval()
    with torch.no_grad():  # make ln_pre non-trivial
        vit.ln_pre.weight.normal_(1.0, 0.2)
        vit.ln_pre.bias.normal_(0.0, 0.2)
    captured = {}
    vit.ln_pre.register_forward_hook(lambda mod, args, out: captured.__setitem__("tokens", out.detach()))
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        vit(x)
    sd = {k: v.detach().numpy() for k, v in vit.state_dict().items()}
    got = native.patch_embed(
        images, sd["conv1.weight"], sd["class_embedding"], sd["positional_embedding"],
        ln_gamma=sd["ln_pre.weight"], ln_beta=sd["ln_pre.bias"], out=poisoned((3, 50, 48)),
    )
    np.testing.assert_allclose(got, captured["tokens"].numpy(), rtol=1e-4, atol=1e-4)


# ---- argument validation: ValueError naming the argument ----

def _call(**over):
    inp = make_inputs(2, 28, 28, 4, 48)
    inp.update(over)
    return native.patch_embed(**inp)


@pytest.mark.parametrize(
    "over, match",
    [
        ({"images": np.zeros((2, 28, 28), np.uint8)}, r"argument 'images' must have shape \(B, H, W, 3\) uint8 C-contiguous, got \(2, 28, 28\) uint8"),
        ({"images": np.zeros((2, 28, 28, 3), np.float32)}, r"argument 'images' must have shape \(B, H, W, 3\) uint8 C-contiguous, got \(2, 28, 28, 3\) float32"),
        ({"images": np.zeros((2, 28, 28, 4), np.uint8)}, r"argument 'images'"),
        ({"images": np.zeros((2, 30, 28, 3), np.uint8)}, r"not a multiple of the patch size 4"),
        ({"images": [[1, 2, 3]]}, r"argument 'images' must be a numpy array or a tensor with __dlpack__"),
        ({"weight": np.zeros((48, 3, 4, 4), np.float64)}, r"argument 'weight' has numpy dtype float64"),
        ({"weight": np.zeros((48, 3, 4, 5), np.float32)}, r"argument 'weight' must have shape \(D, 3, P, P\)"),
        ({"weight": np.zeros((4, 4, 3, 48), np.float32).transpose(3, 2, 1, 0)}, r"argument 'weight' .* got \(48, 3, 4, 4\) float32 non-contiguous"),
        ({"bias": np.zeros(47, np.float32)}, r"argument 'bias' must have shape \(D=48,\) float32"),
        ({"class_emb": np.zeros((1, 48), np.float32)}, r"argument 'class_emb' must have shape \(D=48,\)"),
        ({"pos_emb": np.zeros((37, 48), np.float32)}, r"argument 'pos_emb' has 37 rows .* N\+1 = 50 .*interpolate_pos_embed"),
        ({"pos_emb": np.zeros((50, 47), np.float32)}, r"argument 'pos_emb' must have shape \(N\+1=50, D=48\)"),
        ({"ln_beta": None}, r"ln_gamma and ln_beta must be given together"),
        ({"ln_gamma": np.zeros(48, np.float16)}, r"argument 'ln_gamma' must have shape \(D=48,\) float32 C-contiguous, got \(48,\) float16"),
        ({"mean": (0.5, 0.5)}, r"argument 'mean' must be 3 floats"),
        ({"std": "abc"}, r"argument 'std' must be 3 floats"),
        ({"out": np.zeros((2, 49, 48), np.float32)}, r"argument 'out' must have shape \(B=2, N\+1=50, D=48\)"),
    ],
)
def test_patch_embed_bad_arguments_raise_value_error(over, match):
    with pytest.raises(ValueError, match=match):
        _call(**over)


def test_patch_embed_readonly_out_is_refused():
    out = np.zeros((2, 50, 48), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="argument 'out' is read-only"):
        _call(out=out)


# ---- tensor arguments: numpy, DLPack (torch, a generic producer), __cuda_array_interface__ ----

def test_patch_embed_torch_cpu_tensors_zero_copy():
    inp = make_inputs(3, 28, 28, 4, 48)
    tin = {k: (None if v is None else torch.from_numpy(v)) for k, v in inp.items()}
    out = torch.full((3, 50, 48), float("nan"))
    ptr = out.data_ptr()
    got = native.patch_embed(out=out, **tin)
    assert got is out and out.data_ptr() == ptr
    np.testing.assert_allclose(out.numpy(), reference(**inp), rtol=1e-4, atol=1e-4)
    for name, t in tin.items():
        if t is not None:
            info = native.tensor_arg_info(t)
            assert info["data"] == t.data_ptr(), name  # the binding sees the tensor's own memory
            assert info["device"] == "cpu"


def test_tensor_arg_info_torch_views_dtypes():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    info = native.tensor_arg_info(base.t())
    assert info["shape"] == (6, 4) and info["strides"] == (1, 6) and not info["contiguous"]
    assert info["data"] == base.data_ptr()
    view = base[1:, 2:]
    info = native.tensor_arg_info(view)
    assert info["data"] == view.data_ptr() == base.data_ptr() + (6 + 2) * 4
    assert info["shape"] == (3, 4) and info["strides"] == (6, 1)
    for dt, name in [(torch.bfloat16, "bfloat16"), (torch.float16, "float16"), (torch.uint8, "uint8"),
                     (torch.int8, "int8"), (torch.int32, "int32"), (torch.int64, "int64")]:
        assert native.tensor_arg_info(torch.zeros(3, dtype=dt))["dtype"] == name
    with pytest.raises(ValueError, match="argument 'tensor' has DLPack dtype"):
        native.tensor_arg_info(torch.zeros(3, dtype=torch.float64))


def test_dlpack_export_failure_names_the_argument():
    with pytest.raises(ValueError, match=r"argument 'weight' could not be exported through __dlpack__: .*gradient"):
        _call(weight=torch.zeros(48, 3, 4, 4, requires_grad=True))


def test_tensor_arg_info_numpy_strides_and_readonly():
    a = np.arange(60, dtype=np.float32).reshape(3, 4, 5)[:, ::2, 1:]
    info = native.tensor_arg_info(a)
    assert info["data"] == a.ctypes.data and info["shape"] == (3, 2, 4) and info["strides"] == (20, 10, 1)
    assert not info["contiguous"]
    b = np.zeros(3, np.int64)
    b.flags.writeable = False
    assert native.tensor_arg_info(b)["readonly"] and native.tensor_arg_info(b)["dtype"] == "int64"


class _DLPackOnly:
    """A producer that only speaks DLPack (delegates to a numpy array)."""

    def __init__(self, arr):
        self.arr = arr

    def __dlpack__(self, stream=None):
        return self.arr.__dlpack__()

    def __dlpack_device__(self):
        return self.arr.__dlpack_device__()


def test_dlpack_capsule_is_consumed_and_released():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    before = sys.getrefcount(arr)
    info = native.tensor_arg_info(_DLPackOnly(arr))
    assert info["data"] == arr.ctypes.data and info["shape"] == (3, 4) and info["dtype"] == "float32"
    # numpy's DLPack export holds a reference to `arr` until the consumer calls the deleter.
    assert sys.getrefcount(arr) == before


def test_dlpack_producer_feeds_patch_embed():
    inp = make_inputs(1, 28, 28, 4, 48)
    wrapped = {k: (None if v is None else _DLPackOnly(v)) for k, v in inp.items()}
    got = native.patch_embed(out=poisoned((1, 50, 48)), **wrapped)
    np.testing.assert_allclose(got, reference(**inp), rtol=1e-4, atol=1e-4)


class _FakeCAI:
    """An object exposing only __cuda_array_interface__ v3 (no real device memory behind it)."""

    def __init__(self, shape, typestr, strides=None, ptr=0x10000, readonly=False):
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": typestr, "data": (ptr, readonly), "strides": strides, "version": 3,
        }


def test_cuda_array_interface_is_parsed():
    info = native.tensor_arg_info(_FakeCAI((2, 3), "<f2", strides=(12, 2), readonly=True))
    assert info["data"] == 0x10000 and info["shape"] == (2, 3) and info["strides"] == (6, 1)
    assert info["dtype"] == "float16" and info["readonly"] and info["device"].startswith("cuda")
    assert native.tensor_arg_info(_FakeCAI((4,), "|u1"))["dtype"] == "uint8"
    with pytest.raises(ValueError, match="typestr '<f8'"):
        native.tensor_arg_info(_FakeCAI((4,), "<f8"))


def test_mixed_devices_are_refused():
    with pytest.raises(ValueError, match=r"argument 'weight' is on cuda.* but 'images' is on cpu; move all arguments to one device"):
        _call(weight=_FakeCAI((48, 3, 4, 4), "<f4"))


def test_cuda_inputs_without_cuda_memory_or_build_are_refused():
    inp = make_inputs(1, 28, 28, 4, 48, bias=False, ln=False)
    fake = {k: _FakeCAI(v.shape, "|u1" if v.dtype == np.uint8 else "<f4") for k, v in inp.items() if v is not None}
    fake["out"] = _FakeCAI((1, 50, 48), "<f4")
    if native.built_with_cuda():
        with pytest.raises(ValueError, match="does not point to CUDA device memory"):
            native.patch_embed(**fake)
    else:
        with pytest.raises(RuntimeError, match="built without CUDA"):
            native.patch_embed(**fake)


# ---- position-embedding interpolation ----

def torch_interp(pos, g, g2):
    d = pos.shape[1]
    grid = torch.from_numpy(pos[1:]).reshape(1, g, g, d).permute(0, 3, 1, 2)
    r = F.interpolate(grid, size=(g2, g2), mode="bicubic", align_corners=True)
    r = r.permute(0, 2, 3, 1).reshape(g2 * g2, d)
    return np.concatenate([pos[:1], r.numpy()], axis=0)


@pytest.mark.parametrize("g, g2, d", [(24, 36, 64), (7, 9, 5), (7, 7, 3), (5, 3, 4), (1, 3, 2), (4, 1, 2)])
def test_interpolate_pos_embed_matches_torch_bicubic_align_corners(g, g2, d):
    pos = np.random.default_rng(g * 100 + g2).standard_normal((1 + g * g, d)).astype(np.float32)
    out = poisoned((1 + g2 * g2, d))
    got = native.interpolate_pos_embed(pos, g2, out=out)
    assert got is out
    np.testing.assert_array_equal(got[0], pos[0])  # class token passes through
    np.testing.assert_allclose(got, torch_interp(pos, g, g2), rtol=1e-5, atol=1e-5)


def test_interpolate_pos_embed_allocates_and_validates():
    pos = np.random.default_rng(0).standard_normal((1 + 49, 8)).astype(np.float32)
    got = native.interpolate_pos_embed(pos, 9)
    assert got.shape == (82, 8) and got.dtype == np.float32
    with pytest.raises(ValueError, match=r"argument 'pos' has 49 rows; expected 1 \+ G\*G"):
        native.interpolate_pos_embed(pos[:49], 9)
    with pytest.raises(ValueError, match=r"argument 'pos' must have shape \(T, D\) float32"):
        native.interpolate_pos_embed(pos.astype(np.float16), 9)
    with pytest.raises(ValueError, match="argument 'new_grid' must be >= 1"):
        native.interpolate_pos_embed(pos, 0)



def test_geochat_style_504px_with_interpolated_pos_embed():
    """CLIP-L/14-336 grid 24x24 resized to 36x36 for 504 px images, then patch-embedded (D shrunk to 64)."""
    inp = make_inputs(1, 336, 336, 14, 64)
    pos504 = native.interpolate_pos_embed(inp["pos_emb"], 36)
    np.testing.assert_allclose(pos504, torch_interp(inp["pos_emb"], 24, 36), rtol=1e-5, atol=1e-5)
    inp["images"] = np.random.default_rng(5).integers(0, 256, (1, 504, 504, 3), dtype=np.uint8)
    inp["pos_emb"] = pos504
    got = native.patch_embed(out=poisoned((1, 1297, 64)), **inp)
    np.testing.assert_allclose(got, reference(**inp), rtol=1e-4, atol=1e-4)

# ---- CUDA (skipped without a GPU): CUDA op vs the naive reference ----

TOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 6e-2}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}_{}x{}_p{}_d{}".format(*c))
@pytest.mark.parametrize("ln", [False, True], ids=["noln", "ln"])
def test_patch_embed_cuda_matches_cpu(cuda_device, dtype, case, ln):
    if not native.built_with_cuda():
        pytest.skip("rsvlm_edge was built without CUDA kernels")
    b, h, w, p, d = case
    inp = make_inputs(b, h, w, p, d, bias=True, ln=ln)
    tdt = getattr(torch, dtype)
    dev = {k: None if v is None else torch.from_numpy(v).to(cuda_device) for k, v in inp.items()}
    dev = {k: v if v is None or k == "images" else v.to(tdt) for k, v in dev.items()}
    # Naive reference on the same (rounded) parameters, upcast to fp32.
    cpu = {k: None if v is None else (v.cpu().numpy() if k == "images" else v.float().cpu().numpy()) for k, v in dev.items()}
    want = native.patch_embed_reference(out=poisoned((b, (h // p) * (w // p) + 1, d)), **cpu)
    out = torch.full(want.shape, float("nan"), dtype=tdt, device=cuda_device)
    got = native.patch_embed(out=out, **dev)
    torch.cuda.synchronize()
    assert got is out
    np.testing.assert_allclose(out.float().cpu().numpy(), want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.cuda
def test_patch_embed_cuda_allocates_output_and_uses_stream(cuda_device):
    if not native.built_with_cuda():
        pytest.skip("rsvlm_edge was built without CUDA kernels")
    inp = make_inputs(2, 224, 224, 32, 96)
    want = native.patch_embed_reference(**inp)
    dev = {k: None if v is None else torch.from_numpy(v).to(cuda_device) for k, v in inp.items()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the inputs were copied on the default stream
    import rsvlm_edge.native as package  # the package wrapper allocates `out` for CUDA tensors (the binding does not)

    with torch.cuda.stream(stream):
        got = package.patch_embed(stream=stream.cuda_stream, **dev)
    stream.synchronize()
    assert got.device.type == "cuda" and got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-4, atol=1e-4)
