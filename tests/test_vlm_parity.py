"""VlmRuntime against transformers' LlavaForConditionalGeneration on the same tiny random weights:
greedy tokens, first-step logits, w8/fp16 accuracy, both checkpoint layouts, stops, streaming."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rsvlm_edge.backends.registry import choose  # noqa: E402
from rsvlm_edge.errors import BackendError  # noqa: E402
from rsvlm_edge.export.llava import export_vlm  # noqa: E402


def native_ops():
    try:
        return choose("decoder", "native")
    except BackendError:
        return None

from llava_fixtures import make_tiny_llava  # noqa: E402

from rsvlm_edge.models.llava.runtime import VlmRuntime  # noqa: E402

IMAGE_TOKEN = 3
DECODER_BACKENDS = ["numpy", pytest.param("native", marks=pytest.mark.skipif(native_ops() is None, reason="_C has no decoder kernels"))]
QUESTIONS = [
    "What is in this image?",
    "How many ships are in the harbour? Describe the airport and the river next to it.",
    "Hi",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_parity")
    model = make_tiny_llava(root / "hf", layout="hf")
    bundle = export_vlm(root / "hf", root / "tiny-fp32.rsvlm", weights="fp32")
    runtime = VlmRuntime(bundle, max_batch=4)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    return {"root": root, "model": model, "runtime": runtime, "images": images, "bundle": bundle}


def _pixels(runtime: VlmRuntime, images: np.ndarray):
    mean = torch.tensor(runtime.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(runtime.preprocess.std).view(1, 3, 1, 1)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def _hf_ids(runtime: VlmRuntime, chunks: list[list[int]]) -> list[int]:
    return chunks[0] + [IMAGE_TOKEN] * runtime.num_image_tokens + chunks[1]


def _hf_generate(model, runtime, images, questions, max_new_tokens=32) -> list[list[int]]:
    """transformers greedy generate, left-padded batch; the new tokens up to and including EOS."""
    ids = [_hf_ids(runtime, runtime.tokenize(runtime.build_prompt(q))) for q in questions]
    width = max(map(len, ids))
    input_ids = torch.tensor([[0] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=_pixels(runtime, images),
                             do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0, eos_token_id=2)
    result = []
    for row in out[:, width:].tolist():
        result.append(row[: row.index(2) + 1] if 2 in row else row)
    return result


def _hf_first_logits(model, runtime, images, questions) -> np.ndarray:
    rows = []
    with torch.no_grad():
        for b, q in enumerate(questions):
            ids = torch.tensor([_hf_ids(runtime, runtime.tokenize(runtime.build_prompt(q)))])
            rows.append(model(input_ids=ids, pixel_values=_pixels(runtime, images[b : b + 1])).logits[0, -1].numpy())
    return np.stack(rows)


def _our_tokens(runtime, images, questions, max_new_tokens=32, **kw) -> list[list[int]]:
    chunks = [runtime.tokenize(runtime.build_prompt(q)) for q in questions]
    return runtime.generate_tokens(list(images), chunks, max_new_tokens=max_new_tokens, **kw)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_greedy_tokens_match_transformers_batch1(tiny):
    rt, model, images = tiny["runtime"], tiny["model"], tiny["images"]
    ref = _hf_generate(model, rt, images[:1], QUESTIONS[:1])
    ours = _our_tokens(rt, images[:1], QUESTIONS[:1])
    assert len(ref[0]) >= 8
    assert ours == ref


@pytest.mark.parametrize("backend", DECODER_BACKENDS)
def test_greedy_tokens_match_transformers_batch3_different_prompt_lengths(tiny, backend):
    model, images = tiny["model"], tiny["images"]
    rt = VlmRuntime(tiny["bundle"], backend=backend, max_batch=4)
    assert rt.backends["decoder"] == backend
    lengths = {len(sum(rt.tokenize(rt.build_prompt(q)), [])) for q in QUESTIONS}
    assert len(lengths) == 3  # really different lengths: padded prefill is exercised
    ref = _hf_generate(model, rt, images, QUESTIONS)
    ours = _our_tokens(rt, images, QUESTIONS)
    assert ours == ref
    assert len({tuple(t) for t in ours}) == 3


@pytest.mark.parametrize("backend", DECODER_BACKENDS)
def test_first_step_logits_within_1e4_relative(tiny, backend):
    model, images = tiny["model"], tiny["images"]
    rt = VlmRuntime(tiny["bundle"], backend=backend, max_batch=4)
    ref = _hf_first_logits(model, rt, images, QUESTIONS)
    ours = rt.first_step_logits(list(images), [rt.tokenize(rt.build_prompt(q)) for q in QUESTIONS])
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, rel


@pytest.mark.parametrize("weights,min_cosine", [("w8", 0.995), ("fp16", 0.9999)])
def test_reduced_precision_first_step_logits_cosine(tiny, weights, min_cosine):
    rt, images = tiny["runtime"], tiny["images"]
    bundle = export_vlm(tiny["root"] / "hf", tiny["root"] / f"tiny-{weights}.rsvlm", weights=weights, verify=False)
    assert bundle.manifest.parts["decoder"].precision == weights
    low = VlmRuntime(bundle, max_batch=4)
    chunks = [rt.tokenize(rt.build_prompt(q)) for q in QUESTIONS]
    ref = rt.first_step_logits(list(images), chunks)
    got = low.first_step_logits(list(images), chunks)
    for b in range(len(QUESTIONS)):
        assert _cosine(got[b], ref[b]) >= min_cosine
    assert not np.array_equal(got, ref)  # the bundle really holds reduced-precision weights


@pytest.mark.skipif(native_ops() is None, reason="_C has no decoder kernels")
def test_native_decoder_keeps_fp16_weights_as_float16(tiny):
    """fp16 bundle: the native decoder holds the linear weights, lm_head and embeddings as float16
    (2 bytes/param); the numpy ops widen the linears at load. Same logits either way."""
    rt, images = tiny["runtime"], tiny["images"]
    bundle = export_vlm(tiny["root"] / "hf", tiny["root"] / "tiny-fp16-mem.rsvlm", weights="fp16", verify=False)
    native = VlmRuntime(bundle, backend="native", max_batch=4)
    reference = VlmRuntime(bundle, backend="numpy", max_batch=4)
    dec = native.decoder
    linears = [dec.lm_head] + [getattr(layer, n) for layer in dec.layers for n in ("q", "k", "v", "o", "gate", "up", "down")]
    assert all(lin.w.dtype == np.float16 for lin in linears)
    assert dec.embed.dtype == np.float16
    assert dec.weight_bytes < reference.decoder.weight_bytes * 0.6
    assert reference.decoder.layers[0].q.w.dtype == np.float32 and reference.decoder.lm_head.w.dtype == np.float32
    chunks = [rt.tokenize(rt.build_prompt(q)) for q in QUESTIONS]
    got = native.first_step_logits(list(images), chunks)
    np.testing.assert_allclose(got, reference.first_step_logits(list(images), chunks), rtol=1e-4, atol=1e-4)
    assert _our_tokens(native, images, QUESTIONS, max_new_tokens=8) == _our_tokens(reference, images, QUESTIONS, max_new_tokens=8)


def test_w8_bundle_stores_int8_with_per_channel_scales(tiny):
    from safetensors.numpy import load_file

    path = tiny["root"] / "tiny-w8b.rsvlm"
    bundle = export_vlm(tiny["root"] / "hf", path, weights="w8", verify=False)
    tensors = load_file(str(bundle.file("decoder.safetensors")))
    q = tensors["layers.0.q_proj.weight"]
    assert q.dtype == np.int8 and tensors["layers.0.q_proj.weight_scale"].shape == (q.shape[0],)
    assert np.abs(q).max() == 127
    assert tensors["embed_tokens.weight"].dtype == np.float16
    assert tensors["lm_head.weight"].dtype == np.int8  # as llama.cpp's Q8_0 output matrix
    assert tensors["lm_head.weight_scale"].shape == (tensors["lm_head.weight"].shape[0],)


@pytest.mark.skipif(native_ops() is None, reason="_C has no decoder kernels")
@pytest.mark.parametrize("weights", ["w4", "w8"])
def test_quantised_runtime_computes_with_exactly_the_stored_weights(tiny, weights):
    """int4/int8 accuracy is a property of the format; what the runtime must get right is computing
    with the stored weights as qlinear defines it (int8 activations per block of 128, exact integer
    dots): the native kernels give the numpy twin's logits, and both stay within activation
    quantisation error of an fp32 decoder built from the dequantised stored weights."""
    from safetensors.numpy import load_file

    from rsvlm_edge.models.llava.decoder import LlamaDecoder
    from rsvlm_edge.models.llava.quant import dequantize_w4

    rt, images = tiny["runtime"], tiny["images"]
    bundle = export_vlm(tiny["root"] / "hf", tiny["root"] / f"tiny-{weights}q.rsvlm", weights=weights, verify=False)
    native = VlmRuntime(bundle, backend="native", max_batch=4)
    twin = VlmRuntime(bundle, backend="numpy", max_batch=4)
    chunks = [rt.tokenize(rt.build_prompt(q)) for q in QUESTIONS]
    got = native.first_step_logits(list(images), chunks)
    same = twin.first_step_logits(list(images), chunks)
    # Rounding to int8 is discontinuous: the last-bit differences of native and numpy float ops
    # upstream can flip one activation's rounding (measured: cosine 0.99996, w8 bit-identical here).
    assert min(_cosine(got[b], same[b]) for b in range(3)) > 0.9995

    stored = load_file(str(bundle.file("decoder.safetensors")))

    def widen(v, scale):
        return dequantize_w4(v, scale) if v.dtype == np.uint8 else v.astype(np.float32) * scale[:, None]

    widened = {k: widen(v, stored[k + "_scale"]) if k + "_scale" in stored else v.astype(np.float32)
               for k, v in stored.items() if not k.endswith("_scale")}
    dense = VlmRuntime(bundle, max_batch=4)
    dense.decoder = LlamaDecoder(native.config.decoder, widened, max_batch=4, max_seq=256, backend="numpy")
    ref = dense.first_step_logits(list(images), chunks)
    assert min(_cosine(got[b], ref[b]) for b in range(3)) > 0.998  # int8 activations: measured >= 0.999
    fp32 = rt.first_step_logits(list(images), chunks)
    assert min(_cosine(got[b], fp32[b]) for b in range(3)) > 0.5  # a real approximation, not noise
    assert not np.allclose(got, fp32, atol=1e-3)


def test_w4_bundle_stores_packed_int4_with_group_scales(tiny):
    from safetensors.numpy import load_file

    bundle = export_vlm(tiny["root"] / "hf", tiny["root"] / "tiny-w4b.rsvlm", weights="w4", verify=False)
    tensors = load_file(str(bundle.file("decoder.safetensors")))
    down, gate = tensors["layers.0.down_proj.weight"], tensors["layers.0.gate_proj.weight"]
    assert down.dtype == np.uint8 and down.shape == (64, 64)  # in = 128 -> one group of 128
    assert tensors["layers.0.down_proj.weight_scale"].shape == (64, 1)
    assert gate.shape == (128, 32) and tensors["layers.0.gate_proj.weight_scale"].shape == (128, 1)  # in = 64: per row


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_llava_repo_layout_sharded_matches_transformers_layout(tiny, fmt):
    rt, images = tiny["runtime"], tiny["images"]
    src = tiny["root"] / f"llava-{fmt}"
    make_tiny_llava(src, layout="llava", fmt=fmt)
    assert (src / ("pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json")).is_file()
    bundle = export_vlm(src, tiny["root"] / f"llava-{fmt}.rsvlm", weights="fp32")
    assert bundle.model.source_layout == "llava"
    assert bundle.manifest.preprocess.pad_to_square is True  # image_aspect_ratio "pad"
    other = VlmRuntime(bundle, max_batch=4)
    chunks = [rt.tokenize(rt.build_prompt(q)) for q in QUESTIONS]
    np.testing.assert_allclose(
        other.first_step_logits(list(images), chunks), rt.first_step_logits(list(images), chunks), rtol=0, atol=1e-5
    )


def test_per_sequence_stop_on_eos_leaves_other_sequences_unchanged(tiny):
    rt, images = tiny["runtime"], tiny["images"]
    free = _our_tokens(rt, images, QUESTIONS, ignore_eos=True)
    stop_token = free[1][5]  # make sequence 1's 6th token the EOS
    assert stop_token not in free[0][:12] and stop_token not in free[2][:12]
    saved = rt.eos_ids
    rt.eos_ids = {stop_token}
    try:
        got = _our_tokens(rt, images, QUESTIONS)
    finally:
        rt.eos_ids = saved
    assert got[1] == free[1][: free[1].index(stop_token) + 1]
    assert got[0][:12] == free[0][:12] and got[2][:12] == free[2][:12]


def test_stop_string_truncates_text_and_streaming_matches_result(tiny):
    rt, images = tiny["runtime"], tiny["images"]
    full = rt.generate(list(images[:2]), QUESTIONS[:2], max_new_tokens=16, stop=[])
    marker = full[0][3:6]
    assert marker and marker not in full[0][:3]
    pieces: dict[int, list[str]] = {0: [], 1: []}
    got = rt.generate(list(images[:2]), QUESTIONS[:2], max_new_tokens=16, stop=[marker],
                      stream=lambda i, piece: pieces[i].append(piece))
    assert got[0] == full[0][: full[0].index(marker)]
    assert got[1] == (full[1][: full[1].index(marker)] if marker in full[1] else full[1])
    assert "".join(pieces[0]) == got[0] and "".join(pieces[1]) == got[1]


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(tiny):
    rt, images = tiny["runtime"], tiny["images"]
    greedy = _our_tokens(rt, images[:2], QUESTIONS[:2], max_new_tokens=8, ignore_eos=True)
    nucleus = _our_tokens(rt, images[:2], QUESTIONS[:2], max_new_tokens=8, ignore_eos=True, temperature=1.0, top_p=1e-6)
    assert nucleus == greedy
    a = _our_tokens(rt, images[:2], QUESTIONS[:2], max_new_tokens=8, ignore_eos=True, temperature=1.5, seed=7)
    b = _our_tokens(rt, images[:2], QUESTIONS[:2], max_new_tokens=8, ignore_eos=True, temperature=1.5, seed=7)
    assert a == b and a != greedy


def test_generate_splits_batches_larger_than_max_batch(tiny):
    rt, images = tiny["runtime"], tiny["images"]
    questions = QUESTIONS + QUESTIONS[:2]  # 5 > max_batch 4
    imgs = list(images) + list(images[:2])
    together = rt.generate(imgs, questions, max_new_tokens=6)
    alone = [rt.generate([imgs[i]], [questions[i]], max_new_tokens=6)[0] for i in range(5)]
    assert together == alone


@pytest.mark.parametrize("text_model_type,tie", [("qwen2", False), ("mistral", True)])
def test_other_decoder_families_match_transformers(tmp_path, text_model_type, tie):
    from llava_fixtures import TinySpec

    spec = TinySpec(text_model_type=text_model_type, tie_word_embeddings=tie)
    model = make_tiny_llava(tmp_path / "ckpt", layout="hf", spec=spec)
    bundle = export_vlm(tmp_path / "ckpt", tmp_path / "m.rsvlm", weights="fp32", verify=False)
    assert bundle.model.decoder.model_type == text_model_type
    assert bundle.model.decoder.attention_bias == (text_model_type == "qwen2")
    rt = VlmRuntime(bundle, max_batch=4)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ref = _hf_generate(model, rt, images, QUESTIONS[:2], max_new_tokens=16)
    assert _our_tokens(rt, images, QUESTIONS[:2], max_new_tokens=16) == ref
