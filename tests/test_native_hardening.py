"""Native hardening (issue 7 section 3): every bad argument of a binding is a ValueError that names the
argument, never a crash (SIGFPE, SIGABRT), a silent truncation or a misleading message.

Each case ran into a crash or silent corruption before: H_kv = 0 (SIGFPE in H % H_kv), a zero-size
conv weight (SIGFPE in H % P), a scratch allocation that failed inside an OpenMP region (SIGABRT),
64-bit positions / lengths / page indices truncated to int32 (writes at the wrong position), and
zero-size inputs called "non-contiguous".
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.campaign("native")

C = pytest.importorskip("rsvlm_edge._C")

BIG = 2**32 + 1  # truncated to int32 this is 1: a silent wrong write before the fix


def test_h_kv_zero_is_a_value_error_not_sigfpe():
    q = np.zeros((1, 4, 64), np.float32)
    k = np.zeros((1, 0, 16, 64), np.float32)
    for fn in (C.attention_decode, C.attention_decode_reference):
        with pytest.raises(ValueError, match=r"argument 'k_cache' must have H_kv >= 1, got \(1, 0, 16, 64\) float32"):
            fn(q, k, k.copy(), [1])
    with pytest.raises(ValueError, match=r"argument 'k_cache' must have H_kv >= 1"):
        C.attention_prefill(np.zeros((1, 2, 4, 64), np.float32), k, k.copy(), [2], [2])
    with pytest.raises(ValueError, match=r"argument 'k_cache' must have H_kv >= 1"):
        C.kv_append(k, k.copy(), np.zeros((1, 0, 64), np.float32), np.zeros((1, 0, 64), np.float32), [0])


def test_zero_size_conv_weight_is_a_value_error_not_sigfpe():
    images = np.zeros((1, 8, 8, 3), np.uint8)
    for fn in (C.patch_embed, C.patch_embed_reference):
        with pytest.raises(ValueError, match=r"argument 'weight' must have shape \(D, 3, P, P\) with 1 <= P"):
            fn(images, np.zeros((4, 3, 0, 0), np.float32), None, np.zeros(4, np.float32),
               np.zeros((1, 4), np.float32), (0, 0, 0), (1, 1, 1))


@pytest.mark.parametrize("fn", ["kv_append", "kv_append_reference"])
def test_64_bit_start_pos_and_new_lens_are_range_checked(fn):
    f = getattr(C, fn)
    k = np.full((2, 1, 8, 64), np.nan, np.float32)
    v = k.copy()
    kn = np.ones((2, 1, 1, 64), np.float32)
    with pytest.raises(ValueError, match=rf"argument 'start_pos' has value {BIG} at \[1\], outside"):
        f(k, v, kn, kn, np.array([0, BIG], np.int64))
    with pytest.raises(ValueError, match=rf"argument 'new_lens' has value {BIG} at \[0\]"):
        f(k, v, kn, kn, [0, 0], new_lens=np.array([BIG, 1], np.int64))
    with pytest.raises(ValueError, match=r"start_pos\[0\] = -1 is negative"):
        f(k, v, kn, kn, [-1, 0])
    with pytest.raises(ValueError, match=r"kv_append of sequence 0 needs 2147483648 cache positions"):
        f(k, v, kn, kn, [2**31 - 1, 0])
    assert np.isnan(k).all() and np.isnan(v).all(), "a refused call must not write anything"
    f(k, v, kn, kn, np.array([7, 3], np.uint64))  # in range: any integer dtype is fine
    assert (k[0, 0, 7] == 1).all() and (k[1, 0, 3] == 1).all()


@pytest.mark.parametrize("fn", ["attention_decode", "attention_decode_reference"])
def test_64_bit_seq_lens_and_page_table_are_range_checked(fn):
    f = getattr(C, fn)
    k = np.zeros((4, 1, 16, 64), np.float32)
    q = np.zeros((1, 2, 64), np.float32)
    with pytest.raises(ValueError, match=rf"argument 'seq_lens' has value {BIG} at \[0\]"):
        f(q, k, k.copy(), np.array([BIG]), page_table=[[0, 1]])
    with pytest.raises(ValueError, match=rf"argument 'page_table' has value {BIG} at \[0, 1\]"):
        f(q, k, k.copy(), [20], page_table=np.array([[0, BIG]], np.int64))
    with pytest.raises(ValueError, match=r"page_table\[0, 1\] = -3 is outside \[0, 4\)"):
        f(q, k, k.copy(), [20], page_table=[[0, -3]])
    with pytest.raises(ValueError, match=r"needs 33 cache positions but the cache holds 32"):
        f(q, k, k.copy(), [33], page_table=[[0, 1]])


def test_64_bit_q_lens_are_range_checked():
    k = np.zeros((1, 1, 8, 64), np.float32)
    for fn in (C.attention_prefill, C.attention_prefill_reference):
        with pytest.raises(ValueError, match=rf"argument 'q_lens' has value {BIG} at \[0\]"):
            fn(np.zeros((1, 2, 1, 64), np.float32), k, k.copy(), np.array([BIG]), [2])


def test_zero_size_inputs_are_valid_or_refused_with_a_correct_message():
    k = np.zeros((2, 1, 8, 64), np.float32)
    for sfx in ("", "_reference"):
        decode = getattr(C, "attention_decode" + sfx)
        prefill = getattr(C, "attention_prefill" + sfx)
        append = getattr(C, "kv_append" + sfx)
        assert decode(np.zeros((0, 2, 64), np.float32), k, k.copy(), np.zeros(0, np.int64)).shape == (0, 2, 64)
        assert prefill(np.zeros((1, 0, 2, 64), np.float32), k, k.copy(), [0], [0]).shape == (1, 0, 2, 64)
        append(k, k.copy(), np.zeros((0, 3, 1, 64), np.float32), np.zeros((0, 3, 1, 64), np.float32), [])
        append(k, k.copy(), np.zeros((2, 0, 1, 64), np.float32), np.zeros((2, 0, 1, 64), np.float32), [0, 0])
        with pytest.raises(ValueError, match=r"argument 'q' must have H >= 1"):
            decode(np.zeros((1, 0, 64), np.float32), k, k.copy(), [1])
        with pytest.raises(ValueError, match=r"argument 'k_cache' must have D >= 1"):
            decode(np.zeros((1, 2, 0), np.float32), np.zeros((1, 1, 8, 0), np.float32),
                   np.zeros((1, 1, 8, 0), np.float32), [1])
        with pytest.raises(ValueError, match=r"argument 'k_cache' must have S_max >= 1"):
            decode(np.zeros((1, 2, 64), np.float32), np.zeros((1, 1, 0, 64), np.float32),
                   np.zeros((1, 1, 0, 64), np.float32), [1])
    # Empty arrays are contiguous whatever their strides: never "non-contiguous".
    empty = np.zeros((4, 0), np.float32)[::2]
    assert C.tensor_arg_info(empty)["contiguous"]
    assert C.rms_norm(np.zeros((0, 8), np.float32)[::-1], np.ones(8, np.float32)).shape == (0, 8)


def test_scratch_too_large_is_an_error_not_sigabrt():
    """A per-thread scratch buffer that cannot be allocated is refused before the OpenMP region
    (MemoryError), instead of std::bad_alloc escaping the region (std::terminate, SIGABRT)."""
    h = 1 << 20  # 2^20 query heads sharing one KV head: scores alone need 2^20 x 5000 floats per thread
    q = np.zeros((1, h, 1), np.float32)
    k = np.zeros((1, 1, 5000, 1), np.float32)
    with pytest.raises(MemoryError, match=r"attention: would need a scratch buffer"):
        C.attention_decode(q, k, k.copy(), [5000])


def test_dims_that_do_not_fit_int32_are_refused_not_truncated():
    # A zero-size array can have a dimension >= 2^31; the kernels' int fields would truncate it.
    def empty(*shape):
        return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=shape, strides=(4,) * len(shape))

    for fn in (C.linear, C.linear_reference):
        with pytest.raises(ValueError, match=r"argument 'x' has K=2147483651, more than the 2\^31-1"):
            fn(empty(0, 2**31 + 3), empty(0, 2**31 + 3))
    with pytest.raises(ValueError, match=r"argument 'k_cache' has S_max=2147483651, more than the 2\^31-1"):
        C.attention_decode(np.zeros((0, 1, 4), np.float32), empty(1, 1, 2**31 + 3, 0), empty(1, 1, 2**31 + 3, 0), [])


def test_references_refuse_device_arrays():
    class FakeCuda:
        def __init__(self, shape, typestr):
            self.__cuda_array_interface__ = dict(shape=shape, typestr=typestr, data=(0, False), strides=None, version=3)

    with pytest.raises(ValueError, match=r"rms_norm_reference: argument 'x' is on cuda.*the naive reference runs on the CPU"):
        C.rms_norm_reference(FakeCuda((2, 8), "<f2"), FakeCuda((8,), "<f2"))
