"""Wide float linear weights as column blocks on the native op set (backends/decoder_native.py
``column_blocks``): the blocks are the weight's column slices, ``linear`` over them equals the plain
product, the decoder built on them gives the numpy backend's logits, and the copy's source pages are
released without changing what the mapped tensor reads."""

from __future__ import annotations

import numpy as np
import pytest
from decoder_fixtures import small_tensors
from safetensors.numpy import save_file
from util import cpu_decoder_ops

from rsvlm_edge.backends.decoder_native import MAX_BLOCK_INPUTS, column_blocks
from rsvlm_edge.bundle.safetensors_mmap import map_tensors, release_pages
from rsvlm_edge.models.llava.config import DecoderConfig
from rsvlm_edge.models.llava.decoder import LlamaDecoder


@pytest.mark.parametrize("k, blocks", [(MAX_BLOCK_INPUTS, 1), (5632, 2), (11008, 4), (4096, 2), (3088, 1)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_blocks_are_column_slices(k, blocks, dtype):
    w = np.random.default_rng(k).standard_normal((5, k)).astype(dtype)
    got = column_blocks(w)
    if blocks == 1:  # K fits, or no split into multiples of 16 (3088 = 16 x 193): unchanged
        assert got is w
        return
    ks = k // blocks
    assert got.shape == (blocks, 5, ks) and got.dtype == dtype and got.flags.c_contiguous and ks % 16 == 0
    for s in range(blocks):
        np.testing.assert_array_equal(got[s], w[:, s * ks:(s + 1) * ks])


def test_quantised_weights_pass_through():
    q = np.ones((4, 8192), np.int8)
    assert column_blocks(q) is q


@pytest.mark.parametrize("m", [1, 3, 9])
@pytest.mark.parametrize("with_out", [False, True], ids=["alloc", "out"])
def test_native_linear_over_blocks_equals_plain(m, with_out):
    ops = cpu_decoder_ops("native")
    rng = np.random.default_rng(m)
    w = (rng.standard_normal((37, 5632)) * 0.02).astype(np.float16)
    bias = rng.standard_normal(37).astype(np.float32)
    x = rng.standard_normal((m, 5632)).astype(np.float32)
    want = x.astype(np.float64) @ w.astype(np.float64).T + bias
    out = np.full((m, 37), np.nan, np.float32) if with_out else None
    got = ops.linear(x, column_blocks(w), bias, out=out)
    assert got.shape == (m, 37) and (out is None or got is out)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, ops.linear(x, w, bias), rtol=1e-5, atol=1e-5)


CFG = DecoderConfig(model_type="llama", vocab_size=97, hidden_size=64, intermediate_size=3200, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
                    max_position_embeddings=64, attention_bias=False, bos_token_id=1, eos_token_id=2)


def test_decoder_on_blocks_gives_the_numpy_logits():
    tensors = small_tensors(CFG, "fp16", seed=5)
    native = LlamaDecoder(CFG, tensors, max_batch=2, max_seq=16, ops=cpu_decoder_ops("native"))
    assert native.layers[0].down.w.shape == (2, 64, 1600)  # down_proj (K 3200) in two blocks
    assert native.layers[0].down.out_features == 64 and native.layers[0].up.w.ndim == 2
    reference = LlamaDecoder(CFG, tensors, max_batch=2, max_seq=16, ops=cpu_decoder_ops("numpy"))
    ids = np.random.default_rng(1).integers(3, CFG.vocab_size, (2, 7))
    lengths = np.array([7, 4])
    got = [native.prefill(native.embed_tokens(ids), lengths)]
    want = [reference.prefill(reference.embed_tokens(ids), lengths)]
    for _ in range(3):
        token = want[-1].argmax(-1)
        got.append(native.decode(token))
        want.append(reference.decode(token))
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=2e-4, atol=2e-4)


def test_released_pages_read_back_the_same(tmp_path):
    w = np.random.default_rng(0).standard_normal((64, 4096)).astype(np.float16)  # 512 KiB: whole pages inside
    save_file({"a": np.arange(10, dtype=np.float32), "w": w}, str(tmp_path / "t.safetensors"))
    mapped = map_tensors(tmp_path / "t.safetensors")
    assert float(mapped["w"].astype(np.float32).sum()) == float(w.astype(np.float32).sum())  # pages touched
    blocks = column_blocks(mapped["w"])  # copies, then releases the mapped pages
    assert blocks.shape == (2, 64, 2048)
    np.testing.assert_array_equal(mapped["w"], w)  # faulted back in from the file
    np.testing.assert_array_equal(mapped["a"], np.arange(10, dtype=np.float32))
    release_pages(w)  # not a mapped view: nothing happens
    np.testing.assert_array_equal(blocks[1], w[:, 2048:])
