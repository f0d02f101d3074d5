"""Decoder weights on huge pages (backends/host_memory.py ``HugePageArena``, decoder_native.py
``NativeWeights``): arrays placed in the arena read back what was copied, are read-only, aligned and
packed into shared chunks; the copies release the file map's pages; a native decoder on copied weights
gives bit for bit the logits of one reading the file map (``RSVLM_EDGE_WEIGHT_MEMORY=mapped``), and a
wrong value of that variable is a BackendError naming it."""

from __future__ import annotations

import mmap
import re
import sys

import numpy as np
import pytest
from decoder_fixtures import small_tensors
from safetensors.numpy import save_file
from util import cpu_decoder_ops

from rsvlm_edge.backends.host_memory import ARRAY_ALIGN, HUGE_PAGE, HugePageArena
from rsvlm_edge.bundle.safetensors_mmap import map_tensors
from rsvlm_edge.errors import BackendError
from rsvlm_edge.models.llava.config import DecoderConfig
from rsvlm_edge.models.llava.decoder import LlamaDecoder, load_weights

CFG = DecoderConfig(model_type="llama", vocab_size=96, hidden_size=64, intermediate_size=3200, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
                    max_position_embeddings=64, attention_bias=False, bos_token_id=1, eos_token_id=2)


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _root(a: np.ndarray) -> object:
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def _in_file_map(a: np.ndarray, path) -> bool:
    """Whether ``a`` is a view of the memory map of file ``path`` (the arena's maps are anonymous)."""
    root = _root(a)
    return isinstance(root, mmap.mmap) and len(root) == path.stat().st_size


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.float16, np.float32])
def test_copies_read_back_read_only_and_aligned(dtype):
    arena = HugePageArena(chunk_bytes=HUGE_PAGE)
    rng = np.random.default_rng(0)
    shapes = [(7, 13), (1,), (0, 5), (300, 1000), (3, 4, 5)]  # odd sizes; (300, 1000) fp32 > one chunk
    srcs = [(rng.standard_normal(s) * 50).astype(dtype) for s in shapes]
    copies = [arena.copy(s) for s in srcs]
    for src, got in zip(srcs, copies):
        assert got.shape == src.shape and got.dtype == src.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, src)
        if got.size:
            assert not got.flags.writeable and _address(got) % ARRAY_ALIGN == 0
            with pytest.raises(ValueError):
                got[(0,) * got.ndim] = 1
    # the small ones share the first chunk, which starts on a 2 MiB boundary
    assert _root(copies[0]) is _root(copies[1]) and _address(copies[0]) % HUGE_PAGE == 0
    assert arena.placed_bytes == sum(s.nbytes for s in srcs)


def test_a_chunk_lives_while_an_array_placed_in_it_lives():
    arena = HugePageArena(chunk_bytes=HUGE_PAGE)
    kept = arena.copy(np.arange(1000, dtype=np.int32))
    arena.copy(np.ones(HUGE_PAGE, np.uint8))  # does not fit the rest of the chunk: a new one
    del arena
    np.testing.assert_array_equal(kept, np.arange(1000, dtype=np.int32))


def _resident_file_mib() -> float:
    """This process's resident file-backed memory (MiB), from /proc/self/status."""
    status = open("/proc/self/status").read()
    return int(re.search(r"RssFile:\s+(\d+) kB", status).group(1)) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_copy_releases_the_mapped_pages_and_the_view_reads_the_same(tmp_path):
    w = np.random.default_rng(1).integers(-127, 128, (4096, 8192), dtype=np.int8)  # 32 MiB
    save_file({"w": w}, str(tmp_path / "t.safetensors"))
    view = map_tensors(tmp_path / "t.safetensors")["w"]
    before = _resident_file_mib()
    assert int(view.astype(np.int64).sum()) == int(w.astype(np.int64).sum())  # every page of the view touched
    touched = _resident_file_mib()
    got = HugePageArena().copy(view)
    released = _resident_file_mib()
    assert touched - before > 24 and touched - released > 24, (before, touched, released)  # the copy's source left RSS
    assert _in_file_map(view, tmp_path / "t.safetensors") and not _in_file_map(got, tmp_path / "t.safetensors")
    np.testing.assert_array_equal(got, w)
    np.testing.assert_array_equal(view, w)  # faulted back in from the file


@pytest.mark.parametrize("fmt", ["fp16", "w8", "w4"])
def test_copied_weights_give_the_mapped_decoders_logits_bit_for_bit(tmp_path, monkeypatch, fmt):
    save_file(small_tensors(CFG, fmt, seed=3), str(tmp_path / "decoder.safetensors"))
    cpu_decoder_ops("native")  # skips without the native kernels
    ids = np.random.default_rng(2).integers(3, CFG.vocab_size, (2, 6))
    logits, layers = {}, {}
    for memory in ("copy", "mapped"):
        monkeypatch.setenv("RSVLM_EDGE_WEIGHT_MEMORY", memory)
        dec = LlamaDecoder(CFG, load_weights(tmp_path / "decoder.safetensors"), max_batch=2, max_seq=16,
                           backend="native")
        out = [dec.prefill(dec.embed_tokens(ids), np.array([6, 4]))]
        for _ in range(3):
            out.append(dec.decode(out[-1].argmax(-1)))
        logits[memory], layers[memory] = np.stack(out), dec.layers[0]
    np.testing.assert_array_equal(logits["copy"], logits["mapped"])
    copied, mapped, path = layers["copy"], layers["mapped"], tmp_path / "decoder.safetensors"
    assert not _in_file_map(copied.q.w, path) and not copied.q.w.flags.writeable
    assert _in_file_map(mapped.q.w, path)  # mapped: the file's view itself
    if fmt == "fp16":  # down_proj (K 3200) in column blocks either way
        assert copied.down.w.shape == mapped.down.w.shape == (2, 64, 1600)
    else:
        assert not _in_file_map(copied.q.scale, path) and not _in_file_map(copied.down.w, path)
    # copied: q / k / v and gate / up fused (one GEMV each), the parts views of its rows; mapped: apart
    assert mapped.qkv is None and mapped.gate_up is None
    assert copied.qkv.out_features == 64 + 2 * 32 and copied.gate_up.out_features == 2 * 3200
    for part in (copied.q, copied.k, copied.v):
        assert np.shares_memory(part.w, copied.qkv.w)
    assert np.shares_memory(copied.up.w, copied.gate_up.w) and (copied.up.scale is None) == (fmt == "fp16")
    np.testing.assert_array_equal(copied.v.w, mapped.v.w)


def test_projections_of_different_formats_are_not_fused(tmp_path, monkeypatch):
    """A w8 bundle whose k_proj is fp16 (formats may differ per tensor): q / k / v run apart, same logits."""
    tensors = small_tensors(CFG, "w8", seed=4)
    fp16 = small_tensors(CFG, "fp16", seed=4)
    for layer in range(CFG.num_layers):
        name = f"layers.{layer}.k_proj"
        tensors[name + ".weight"] = fp16[name + ".weight"]
        del tensors[name + ".weight_scale"]
    save_file(tensors, str(tmp_path / "decoder.safetensors"))
    cpu_decoder_ops("native")
    ids = np.random.default_rng(5).integers(3, CFG.vocab_size, (1, 5))
    logits = {}
    for memory in ("copy", "mapped"):
        monkeypatch.setenv("RSVLM_EDGE_WEIGHT_MEMORY", memory)
        dec = LlamaDecoder(CFG, load_weights(tmp_path / "decoder.safetensors"), max_batch=1, max_seq=8, backend="native")
        assert dec.layers[0].qkv is None and (dec.layers[0].gate_up is not None) == (memory == "copy")
        logits[memory] = np.stack([dec.prefill(dec.embed_tokens(ids), np.array([5])), dec.decode(np.array([7]))])
    np.testing.assert_array_equal(logits["copy"], logits["mapped"])


def test_a_wrong_weight_memory_value_is_a_backend_error(monkeypatch):
    from rsvlm_edge.backends.decoder_native import native_ops

    cpu_decoder_ops("native")
    monkeypatch.setenv("RSVLM_EDGE_WEIGHT_MEMORY", "huge")
    with pytest.raises(BackendError, match=r"RSVLM_EDGE_WEIGHT_MEMORY='huge' is not one of copy, mapped") as e:
        native_ops()
    assert "mapped" in e.value.fix


def test_weights_are_not_fused_without_their_scales(tmp_path, monkeypatch):
    """A placement that fuses weights but not scales (``fused`` answering None for them): every projection runs
    apart, with its own scales, and the logits are the unfused ones."""
    from types import SimpleNamespace

    from rsvlm_edge.backends.decoder_native import NativeWeights

    class WeightsOnly(NativeWeights):
        def fused(self, arrays):
            return None if arrays[0].dtype == np.float32 else super().fused(arrays)

    save_file(small_tensors(CFG, "w8", seed=6), str(tmp_path / "decoder.safetensors"))
    ops = cpu_decoder_ops("native")
    ids = np.random.default_rng(7).integers(3, CFG.vocab_size, (1, 5))
    logits = {}
    for name, placement in (("weights-only", lambda: WeightsOnly(True)), ("apart", lambda: NativeWeights(False))):
        custom = SimpleNamespace(**{**vars(ops), "weight_placement": placement})
        dec = LlamaDecoder(CFG, load_weights(tmp_path / "decoder.safetensors"), max_batch=1, max_seq=8, ops=custom)
        assert dec.layers[0].qkv is None and dec.layers[0].gate_up is None
        assert dec.layers[0].k.scale.shape == (32, 1)
        logits[name] = np.stack([dec.prefill(dec.embed_tokens(ids), np.array([5])), dec.decode(np.array([9]))])
    np.testing.assert_array_equal(logits["weights-only"], logits["apart"])
