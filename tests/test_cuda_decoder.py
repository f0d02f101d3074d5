"""The ``cuda`` decoder backend (rsvlm_edge._C.CudaDecoder, backends/decoder_cuda.py) against the CPU
decoder (decoder.py over the native kernels), its reference.

The GPU tests (marker ``cuda``) run wherever rsvlm_edge._C has CUDA and a device is visible
(scripts/gpu-check.sh); elsewhere they skip with the reason and the backend's refusal is tested.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from decoder_fixtures import small_tensors
from util import package_env

from rsvlm_edge.backends import registry
from rsvlm_edge.backends.decoder_cuda import CUDA_HEAD_DIMS, _supports, canonical_names
from rsvlm_edge.errors import BackendError
from rsvlm_edge.models.llava.config import DecoderConfig
from rsvlm_edge.models.llava.decoder import LlamaDecoder, open_llama_decoder

C = pytest.importorskip("rsvlm_edge._C")


def small_config(attention_bias: bool = False, layers: int = 2) -> DecoderConfig:
    """A LLaMA decoder small enough for a test but with a head_dim the CUDA kernels run (64)."""
    return DecoderConfig(model_type="llama", vocab_size=320, hidden_size=256, intermediate_size=384, num_layers=layers,
                         num_heads=4, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                         max_position_embeddings=256, attention_bias=attention_bias, bos_token_id=1, eos_token_id=2)


def prompts(cfg: DecoderConfig, lengths: list[int], seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, cfg.vocab_size, (len(lengths), max(lengths)))
    for b, n in enumerate(lengths):
        ids[b, n:] = 0
    return ids, np.asarray(lengths, np.int64), np.zeros(0)


# ---- everywhere: names, selection and refusal ----------------------------------------------------

def test_canonical_names_cover_every_tensor_of_each_format():
    cfg = small_config(attention_bias=True)
    for fmt in ("fp16", "w8", "w4"):
        t = small_tensors(cfg, fmt)
        assert sorted(canonical_names(cfg, t)) == sorted(t)


def test_cuda_backend_refuses_head_dims_without_a_kernel():
    assert _supports(small_config()) is None
    cfg = dataclasses.replace(small_config(), head_dim=8, hidden_size=32)
    assert "head_dim 8" in _supports(cfg)
    assert 64 in CUDA_HEAD_DIMS


def test_auto_never_picks_cuda_for_an_unsupported_head_dim():
    cfg = dataclasses.replace(small_config(), head_dim=8, hidden_size=32)
    assert registry.choose("decoder", "auto", cfg).name != "cuda"


@pytest.mark.skipif(C.cuda_device_count() > 0 and C.built_with_cuda(), reason="a GPU is present: tested below")
def test_explicit_cuda_backend_without_a_gpu_is_an_error_with_a_fix():
    cfg = small_config()
    with pytest.raises(BackendError) as e:
        open_llama_decoder(cfg, small_tensors(cfg), 2, 64, "cuda")
    assert "backend 'cuda' is not available" in str(e.value)
    assert e.value.fix
    with pytest.raises(RuntimeError):  # the class itself, in a build or on a machine without CUDA
        C.CudaDecoder(dict(vocab_size=8, hidden_size=64, intermediate_size=8, num_layers=1, num_heads=1,
                           num_kv_heads=1, head_dim=64), 1, 8)


# ---- on a GPU: the CPU decoder is the reference ---------------------------------------------------

def cuda_available() -> bool:
    return C.built_with_cuda() and C.cuda_device_count() > 0


needs_gpu = pytest.mark.skipif(not cuda_available(), reason="needs rsvlm_edge._C built with CUDA and a visible GPU")


def pair(cfg, tensors, max_batch, max_seq=96):
    cpu = LlamaDecoder(cfg, tensors, max_batch, max_seq, backend="native")
    gpu = open_llama_decoder(cfg, tensors, max_batch, max_seq, "cuda")
    return cpu, gpu


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def greedy(decoder, embeds, lengths, steps):
    logits = decoder.prefill(embeds, lengths)
    out = [logits.argmax(axis=1)]
    for _ in range(steps - 1):
        logits = decoder.decode(out[-1])
        out.append(logits.argmax(axis=1))
    return np.stack(out, axis=1)


def teacher_forced(decoder, embeds, lengths, tokens):
    """Logits (B, S, V) of prefill then S - 1 decode steps fed tokens[:, s] (the same path for both)."""
    logits = [decoder.prefill(embeds, lengths)]
    for s in range(tokens.shape[1] - 1):
        logits.append(decoder.decode(tokens[:, s]))
    return np.stack(logits, axis=1)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("lengths", [[37], [5, 40, 17]], ids=["batch1", "batch3"])
@pytest.mark.parametrize("bias", [False, True], ids=["llama", "qwen2-bias"])
def test_32_steps_track_the_cpu_decoder(lengths, bias):
    """fp16 activations (fp32 accumulation) against the fp32 CPU path, 32 steps teacher-forced with
    the CPU's greedy tokens: every step's logits within 2 % of their range (cosine >= 0.999), the
    argmax the same at >= 95 % of the steps (a flip needs a near-tie), and at batch 1 the free-running
    greedy tokens identical."""
    cfg = small_config(attention_bias=bias)
    tensors = small_tensors(cfg)
    cpu, gpu = pair(cfg, tensors, max_batch=4)
    assert gpu.ops.name == "cuda"
    ids, lens, _ = prompts(cfg, lengths)
    embeds = cpu.embed_tokens(ids)
    tokens = greedy(cpu, embeds, lens, 32)
    cpu2, _ = pair(cfg, tensors, max_batch=4)
    want, got = teacher_forced(cpu2, embeds, lens, tokens), teacher_forced(gpu, embeds, lens, tokens)
    assert got.dtype == np.float32 and got.shape == want.shape == (len(lengths), 32, cfg.vocab_size)
    for b in range(len(lengths)):
        for s in range(32):
            assert cosine(got[b, s], want[b, s]) >= 0.999, (b, s)
            np.testing.assert_allclose(got[b, s], want[b, s], atol=0.02 * float(np.ptp(want[b, s])), err_msg=f"{b}, {s}")
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95
    if len(lengths) == 1:
        _, gpu2 = pair(cfg, tensors, max_batch=4)
        np.testing.assert_array_equal(greedy(gpu2, embeds, lens, 32), tokens)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("fmt", ["w8", "w4"])
def test_quantised_weights_match_the_cpu_qlinear_path(fmt):
    cfg = small_config()
    tensors = small_tensors(cfg, fmt)
    cpu, gpu = pair(cfg, tensors, max_batch=2)
    ids, lens, _ = prompts(cfg, [23, 9])
    embeds = cpu.embed_tokens(ids)
    assert cosine(gpu.prefill(embeds, lens), cpu.prefill(embeds, lens)) >= 0.995
    step = np.array([5, 7])
    assert cosine(gpu.decode(step), cpu.decode(step)) >= 0.995


@pytest.mark.cuda
@needs_gpu
def test_graph_replay_equals_direct_launches_and_greedy_ids_equal_argmax():
    cfg = small_config()
    tensors = small_tensors(cfg)
    ids, lens, _ = prompts(cfg, [11, 30, 4])
    runs = []
    for graphs in (True, False):
        gpu = open_llama_decoder(cfg, tensors, 3, 64, "cuda")
        gpu.device.use_graphs = graphs
        logits = gpu.prefill(gpu.embed_tokens(ids), lens)
        seq = []
        for _ in range(6):
            nxt = logits.argmax(axis=1)
            logits, greedy_ids = gpu.device.decode(nxt)
            np.testing.assert_array_equal(greedy_ids, logits.argmax(axis=1))
            seq.append(logits)
        runs.append(np.stack(seq))
        assert list(gpu.device.lengths) == [17, 36, 10]
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("temperature, top_p", [(0.8, 0.9), (1.2, 1.0), (0.0, 1.0)])
def test_device_sampling_draws_what_the_host_rule_draws_from_the_same_logits(temperature, top_p):
    """decode_sample (the step, then top_p_sample on the device) against decode + sample_with_uniforms on the
    host, two decoders in lockstep fed the same tokens and draws: the same ids (fp32 device sums against fp64
    host ones may differ only for a draw within ~1e-6 of a cdf step: at most one of 36 here)."""
    from rsvlm_edge.models.llava.generation import sample_with_uniforms

    cfg = small_config()
    tensors = small_tensors(cfg)
    ids, lens, _ = prompts(cfg, [13, 30, 6])
    host, device = (open_llama_decoder(cfg, tensors, 3, 64, "cuda") for _ in range(2))
    embeds = host.embed_tokens(ids)
    nxt = host.prefill(embeds, lens).argmax(axis=1)
    device.prefill(embeds, lens)
    rng = np.random.default_rng(7)
    mismatches = 0
    for _ in range(12):
        u = rng.random(3)
        want = sample_with_uniforms(host.decode(nxt), temperature, top_p, u)
        got = device.decode_sample(nxt, temperature, top_p, u)
        assert got.dtype == np.int64 and got.shape == (3,)
        mismatches += int((got != want).sum())
        nxt = want
    assert mismatches <= 1
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        device.decode_sample(nxt, 0.8, 0.9, np.array([0.1, 1.0, 0.2]))
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        device.decode_sample(nxt, 0.8, 0.0, np.array([0.1, 0.5, 0.2]))


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_an_int8_kv_cache_on_the_cpu_tracks_the_float32_cache(monkeypatch, backend):
    """RSVLM_EDGE_KV_CACHE=int8 on the CPU backends: int8 rows with one float32 scale each (a quarter of the
    bytes plus the scales): prefill and decode logits within cosine 0.9999 of the float32 cache's, the same
    greedy tokens; a value outside auto / int8 is refused."""
    cfg = small_config()
    tensors = small_tensors(cfg)
    ids, lens, _ = prompts(cfg, [30, 12])
    runs = {}
    for kv in ("auto", "int8"):
        monkeypatch.setenv("RSVLM_EDGE_KV_CACHE", kv)
        dec = LlamaDecoder(cfg, tensors, 2, 64, backend=backend)
        runs[kv] = (dec, greedy(dec, dec.embed_tokens(ids), lens, 8))
    (fp, fp_tokens), (q8, q8_tokens) = runs["auto"], runs["int8"]
    assert q8.cache.k.dtype == np.int8 and fp.cache.k.dtype == np.float32
    assert q8.cache.nbytes < 0.3 * fp.cache.nbytes
    np.testing.assert_array_equal(q8_tokens, fp_tokens)
    embeds = fp.embed_tokens(ids)
    want, got = teacher_forced(fp, embeds, lens, fp_tokens), teacher_forced(q8, embeds, lens, fp_tokens)
    for b in range(2):
        for step in range(8):
            assert cosine(got[b, step], want[b, step]) >= 0.9999, (b, step)
    monkeypatch.setenv("RSVLM_EDGE_KV_CACHE", "fp8")
    with pytest.raises(BackendError, match=r"RSVLM_EDGE_KV_CACHE='fp8' is not one of auto, int8"):
        LlamaDecoder(cfg, tensors, 2, 32, backend=backend)


@pytest.mark.cuda
@needs_gpu
def test_int8_kv_cache_tracks_the_fp16_cache(monkeypatch):
    """RSVLM_EDGE_KV_CACHE=int8: K / V rows stored as int8 with one fp32 scale each (the append quantises,
    attention dequantises): teacher-forced logits stay within cosine 0.99 of the fp16-cache decoder's over
    24 steps at batch 3, on about half the cache bytes."""
    cfg = small_config()
    tensors = small_tensors(cfg)
    ids, lens, _ = prompts(cfg, [21, 40, 9])
    decoders = {}
    for kv in ("auto", "int8"):
        monkeypatch.setenv("RSVLM_EDGE_KV_CACHE", kv)
        decoders[kv] = open_llama_decoder(cfg, tensors, 3, 96, "cuda")
    assert decoders["auto"].device.kv_cache == "fp16" and decoders["int8"].device.kv_cache == "int8"
    cache_fp16 = 2 * cfg.num_layers * 3 * cfg.num_kv_heads * 96 * cfg.head_dim * 2
    saved = decoders["auto"].device.device_bytes - decoders["int8"].device.device_bytes
    assert saved >= 0.45 * cache_fp16
    embeds = decoders["auto"].embed_tokens(ids)
    tokens = greedy(decoders["auto"], embeds, lens, 24)
    want = teacher_forced(decoders["auto"], embeds, lens, tokens)  # a new prefill restarts the batch
    got = teacher_forced(decoders["int8"], embeds, lens, tokens)
    for b in range(3):
        for step in range(24):
            assert cosine(got[b, step], want[b, step]) >= 0.99, (b, step)
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_a_paged_kv_cache_on_the_cpu_backends_and_bad_pool_sizes_are_refused(monkeypatch):
    cfg = small_config()
    tensors = small_tensors(cfg)
    monkeypatch.setenv("RSVLM_EDGE_KV_POOL_TOKENS", "4096")
    with pytest.raises(BackendError, match=r"RSVLM_EDGE_KV_POOL_TOKENS is set: the native decoder backend keeps a "
                                           r"contiguous KV cache") as e:
        LlamaDecoder(cfg, tensors, 2, 32, backend="native")
    assert "--backend cuda" in e.value.fix
    for value, message in (("lots", r"RSVLM_EDGE_KV_POOL_TOKENS='lots' is not a whole number of tokens"),
                           ("8", r"RSVLM_EDGE_KV_POOL_TOKENS=8 is outside \[16, 2\^31 - 16\] tokens")):
        monkeypatch.setenv("RSVLM_EDGE_KV_POOL_TOKENS", value)
        with pytest.raises(BackendError, match=message) as e:
            LlamaDecoder(cfg, tensors, 2, 32, backend="native")
        assert "unset RSVLM_EDGE_KV_POOL_TOKENS" in e.value.fix


@pytest.mark.cuda
@needs_gpu
def test_paged_kv_cache_gives_the_contiguous_caches_logits_and_refuses_past_its_pool(monkeypatch):
    """RSVLM_EDGE_KV_POOL_TOKENS: pages of 16 tokens taken as sequences grow (the steps below cross page
    boundaries at batch 3): bit for bit the contiguous cache's logits, on a pool smaller than max_batch x
    max_seq; a prompt or a step past the pool is the user's InputError, and the decoder stays usable."""
    from rsvlm_edge.errors import InputError

    cfg = small_config()
    tensors = small_tensors(cfg)
    ids, lens, _ = prompts(cfg, [30, 17, 5])
    contiguous = open_llama_decoder(cfg, tensors, 3, 96, "cuda")
    monkeypatch.setenv("RSVLM_EDGE_KV_POOL_TOKENS", "112")  # 7 pages: 2 + 2 + 1 for the prompts, 2 spare
    paged = open_llama_decoder(cfg, tensors, 3, 96, "cuda")
    assert paged.device.kv_pool_tokens == 112 and contiguous.device.kv_pool_tokens == 0
    assert paged.device.device_bytes < contiguous.device.device_bytes
    embeds = contiguous.embed_tokens(ids)
    tokens = greedy(contiguous, embeds, lens, 8)  # positions 30..36, 17..23, 5..11: pages 2 and 1 taken
    np.testing.assert_array_equal(teacher_forced(paged, embeds, lens, tokens),
                                  teacher_forced(contiguous, embeds, lens, tokens))
    with pytest.raises(InputError, match=r"pool of 112 tokens is full: sequence 1 needs a page for position 32") as e:
        for _ in range(12):
            paged.decode(tokens[:, -1])
    assert "RSVLM_EDGE_KV_POOL_TOKENS" in e.value.fix
    long_ids, long_lens, _ = prompts(cfg, [90, 40, 5])
    with pytest.raises(InputError, match=r"cannot hold these prompts"):
        paged.prefill(paged.embed_tokens(long_ids), long_lens)
    np.testing.assert_array_equal(paged.prefill(embeds, lens), contiguous.prefill(embeds, lens))


@pytest.mark.parametrize("var, value, needles", [
    ("RSVLM_EDGE_KV_CACHE", "fp8", ("RSVLM_EDGE_KV_CACHE='fp8'", "int8")),
    ("RSVLM_EDGE_KV_POOL_TOKENS", "lots", ("RSVLM_EDGE_KV_POOL_TOKENS='lots'", "unset RSVLM_EDGE_KV_POOL_TOKENS")),
    ("RSVLM_EDGE_KV_POOL_TOKENS", "4096", ("contiguous KV cache", "--backend cuda")),
    ("RSVLM_EDGE_CUDA_PDL", "maybe", ("RSVLM_EDGE_CUDA_PDL='maybe'", "off")),
    ("RSVLM_EDGE_DECODE_STEP", "fast", ("RSVLM_EDGE_DECODE_STEP='fast'", "whole")),
], ids=["kv-cache-kind", "pool-not-a-number", "pool-on-the-cpu", "pdl-value", "decode-step-value"])
def test_cli_ask_with_a_wrong_kv_or_launch_setting_is_one_error_and_fix(vlm64, tmp_path, var, value, needles):
    from PIL import Image
    from util import assert_contract, run_cli

    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    r = run_cli("ask", str(vlm64[1].path), str(image), "What is in this image?", "--backend", "decoder=native",
                env={var: value})
    assert_contract(r, *needles)


# Prefill and six graph-replayed decode steps of the small decoder (fp16 and w8) into an .npz: run once with
# programmatic dependent launch on and once off (RSVLM_EDGE_CUDA_PDL is read once per process).
PDL_RUN = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from decoder_fixtures import small_tensors
from test_cuda_decoder import prompts, small_config
from rsvlm_edge.models.llava.decoder import open_llama_decoder
out = {}
for fmt in ("fp16", "w8"):
    cfg = small_config()
    gpu = open_llama_decoder(cfg, small_tensors(cfg, fmt), 3, 64, "cuda")
    ids, lens, _ = prompts(cfg, [11, 30, 4])
    logits = [gpu.prefill(gpu.embed_tokens(ids), lens)]
    for _ in range(6):
        logits.append(gpu.decode(logits[-1].argmax(axis=1)))
    out[fmt] = np.stack(logits)
np.savez(sys.argv[1], **out)
"""


@pytest.mark.cuda
@needs_gpu
def test_programmatic_launch_changes_no_number(tmp_path):
    """The linears may start on their weights before the kernel ahead of them ends (PDL, sm_90+); they read
    their input only after it has: the logits are bit for bit those of plain launches."""
    runs = {}
    for mode in ("on", "off"):
        dest = tmp_path / f"{mode}.npz"
        proc = subprocess.run([sys.executable, "-c", PDL_RUN, str(dest), str(Path(__file__).parent)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env={**package_env(), "RSVLM_EDGE_CUDA_PDL": mode})
        assert proc.returncode == 0, proc.stderr
        runs[mode] = np.load(dest)
    for fmt in ("fp16", "w8"):
        assert np.isfinite(runs["on"][fmt]).all()
        np.testing.assert_array_equal(runs["on"][fmt], runs["off"][fmt], err_msg=fmt)


@pytest.mark.cuda
@needs_gpu
def test_a_new_prefill_restarts_the_batch_and_smaller_batches_reuse_the_buffers():
    cfg = small_config()
    tensors = small_tensors(cfg)
    cpu, gpu = pair(cfg, tensors, max_batch=3)
    for lengths in ([40, 3, 12], [7], [2, 50]):
        ids, lens, _ = prompts(cfg, lengths, seed=len(lengths))
        embeds = cpu.embed_tokens(ids)
        np.testing.assert_array_equal(greedy(gpu, embeds, lens, 5), greedy(cpu, embeds, lens, 5))


@pytest.mark.cuda
@needs_gpu
def test_bad_calls_raise_value_errors_naming_the_problem():
    cfg = small_config()
    tensors = small_tensors(cfg)
    gpu = open_llama_decoder(cfg, tensors, 2, 16, "cuda")
    dev = gpu.device
    with pytest.raises(ValueError, match="run prefill first"):
        dev.decode(np.array([1]))
    ids, lens, _ = prompts(cfg, [4])
    gpu.prefill(gpu.embed_tokens(ids), lens)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        dev.decode(np.array([cfg.vocab_size]))
    with pytest.raises(ValueError, match="for a batch of 1"):
        dev.decode(np.array([1, 2]))
    with pytest.raises(ValueError, match="exceeds the KV cache"):
        dev.prefill(np.zeros((1, 17, cfg.hidden_size), np.float32), np.array([17]))
    with pytest.raises(ValueError, match="names layer 9 but the decoder has 2"):
        dev.set_tensor("layers.9.q_proj.weight", tensors["layers.0.q_proj.weight"])
    with pytest.raises(ValueError, match="unknown decoder tensor 'layers.0.qkv_proj.weight'"):
        dev.set_tensor("layers.0.qkv_proj.weight", tensors["layers.0.q_proj.weight"])
    with pytest.raises(ValueError, match="expected"):
        dev.set_tensor("norm.weight", np.ones(3, np.float32))
    with pytest.raises(ValueError, match="cannot be replaced after the first prefill"):  # q/k/v packed together
        dev.set_tensor("layers.1.k_proj.weight", tensors["layers.1.k_proj.weight"])
    for _ in range(16 - 4):
        gpu.decode(np.array([1]))
    with pytest.raises(Exception, match="KV cache limit"):
        gpu.decode(np.array([1]))
    fresh = C.CudaDecoder(dict(vocab_size=cfg.vocab_size, hidden_size=256, intermediate_size=384, num_layers=2,
                               num_heads=4, num_kv_heads=2, head_dim=64), 1, 8)
    with pytest.raises(ValueError, match="lack 'embed_tokens.weight'"):
        fresh.check_complete()


# ---- the VLM runtime on the cuda decoder: transformers' own generate is the reference ----------------

@pytest.fixture(scope="module")
def vlm64(tmp_path_factory):
    """A tiny LLaVA checkpoint whose decoder has head_dim 64 (the CUDA attention kernel's), exported fp16."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llava_fixtures import TinySpec, make_tiny_llava

    from rsvlm_edge.export.llava import export_vlm

    root = tmp_path_factory.mktemp("vlm64")
    spec = TinySpec(hidden_size=256, intermediate_size=384, num_heads=4, num_kv_heads=2)
    model = make_tiny_llava(root / "hf", layout="hf", spec=spec)
    bundle = export_vlm(root / "hf", root / "tiny64.rsvlm", weights="fp16", verify=False)
    return model, bundle


def test_vlm_runtime_with_the_cuda_backend_and_no_gpu_says_what_is_missing(vlm64):
    from rsvlm_edge.models.llava.runtime import VlmRuntime

    if cuda_available():
        pytest.skip("a GPU is present: the cuda backend runs (tested below)")
    with pytest.raises(BackendError) as e:
        VlmRuntime(vlm64[1], backend="decoder=cuda")
    assert "cuda" in str(e.value) and e.value.fix


@pytest.mark.cuda
@needs_gpu
def test_vlm_runtime_on_the_gpu_matches_transformers_generate(vlm64):
    """Greedy tokens of ask/caption's path (VlmRuntime.generate_tokens) with the decoder on the GPU
    against LlavaForConditionalGeneration.generate, batch 1 and a padded batch of 3."""
    from test_vlm_parity import QUESTIONS, _hf_generate, _our_tokens

    from rsvlm_edge.models.llava.runtime import VlmRuntime

    model, bundle = vlm64
    rt = VlmRuntime(bundle, backend="decoder=cuda", max_batch=4)
    assert rt.backends["decoder"] == "cuda"
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for n in (1, 3):
        want = _hf_generate(model, rt, images[:n], QUESTIONS[:n], max_new_tokens=16)
        assert _our_tokens(rt, images[:n], QUESTIONS[:n], max_new_tokens=16) == want


def test_cli_ask_with_the_cuda_backend_and_no_gpu_is_one_error_and_fix(vlm64, tmp_path):
    from PIL import Image
    from util import assert_contract, run_cli

    if cuda_available():
        pytest.skip("a GPU is present: the cuda backend runs")
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    r = run_cli("ask", str(vlm64[1].path), str(image), "What is in this image?", "--backend", "decoder=cuda")
    assert_contract(r, "cuda")
