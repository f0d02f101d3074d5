"""Property-based campaign over every native binding (issue 7 section 3), with hypothesis.

Random shapes (zero and odd sizes included), dtypes, strides (non-contiguous views) and index values
(negative, 2^31 - 1, >= 2^31, 2^32 + 1, 2^63 - 1, uint64) are thrown at each binding. Every call must
either raise ValueError, or return what the naive reference (`_C.<op>_reference`) returns on an
independent copy of the same inputs; the fast path and the reference must agree on which calls are
refused; and guard cells placed before and after every output / in-place buffer keep their sentinel
values (no out-of-bounds write), while read-only inputs are left unchanged.

Bounded: `max_examples` per binding (RSVLM_PROPERTY_EXAMPLES, default 60), derandomized for CI.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

C = pytest.importorskip("rsvlm_edge._C")
hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install hypothesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.campaign("native")

EXAMPLES = int(os.environ.get("RSVLM_PROPERTY_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

GUARD = 8  # guard cells on each side of an output
SENTINEL = {np.dtype(np.float32): np.float32(-7.25e30), np.dtype(np.int8): np.int8(0x5A),
            np.dtype(np.float16): np.float16(-1234.0), np.dtype(np.float64): -7.25e30, np.dtype(np.int32): -123456789}

# Index values that broke the bindings before (truncation to int32, negative, overflow).
EDGE_INDICES = [-(2**63), -(2**31) - 1, -(2**31), -1, 0, 1, 2, 3, 15, 16, 17, 2**31 - 1, 2**31, 2**32 + 1, 2**63 - 1]


def small_index():
    return st.one_of(st.integers(0, 40), st.sampled_from(EDGE_INDICES))


class Guarded:
    """An array view with GUARD sentinel cells before and after it in one allocation."""

    def __init__(self, shape, dtype, fill):
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        self.sentinel = SENTINEL[dtype]
        self.buf = np.full(n + 2 * GUARD, self.sentinel, dtype)
        self.view = self.buf[GUARD : GUARD + n].reshape(shape)
        self.view[...] = fill

    def intact(self):
        return bool((self.buf[:GUARD] == self.sentinel).all() and (self.buf[GUARD + self.view.size :] == self.sentinel).all())


def outcome(fn, *args, **kw):
    """('ok', result) or ('value_error', message); any other exception fails the test."""
    try:
        return "ok", fn(*args, **kw)
    except ValueError as e:
        return "value_error", str(e)


def assert_same_outcome(fast, ref):
    assert fast[0] == ref[0], f"fast path: {fast}, reference: {ref}"
    hypothesis.event(fast[0] if os.environ.get("RSVLM_PROPERTY_DEBUG") is None else str(fast[1])[:90])  # `pytest --hypothesis-show-statistics` shows how many calls ran vs were refused


def layout(arr, how):
    """arr as C-contiguous, a strided view (every other element of a bigger array) or a transposed copy."""
    if how == "strided" and arr.ndim >= 1:
        big = np.zeros(arr.shape[:-1] + (arr.shape[-1] * 2,), arr.dtype)
        big[..., ::2] = arr
        return big[..., ::2]
    if how == "fortran" and arr.ndim >= 2:
        return np.asfortranarray(arr)
    return arr


def close(a, b, tol=1e-4):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


DTYPES = st.sampled_from([np.float32] * 14 + [np.float16, np.float64, np.int32])
LAYOUTS = st.sampled_from(["c"] * 14 + ["strided", "fortran"])
DIM = st.one_of(st.integers(1, 9), st.integers(1, 9), st.sampled_from([0, 1, 7, 16, 33]))


def rand(rng, shape, dtype=np.float32, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def index_array(values, kind):
    if kind == "list":
        return list(values)
    dtype = {"int32": np.int32, "int64": np.int64, "uint64": np.uint64, "float64": np.float64}[kind]
    try:
        return np.array(values).astype(dtype) if kind != "int32" else np.array(values, np.int64).astype(np.int32)
    except OverflowError:
        return np.array(values, object)


INDEX_KINDS = st.sampled_from(["int64", "int64", "int32", "list", "uint64", "float64"])


# ---------------------------------------------------------------- rms_norm / swiglu


@SETTINGS
@given(t=DIM, d=DIM, dw=st.sampled_from([0] * 12 + [1, -1]), dtype=DTYPES, how=LAYOUTS,
       eps=st.sampled_from([1e-6, 1e-5, 0.0] * 4 + [-1.0, float("nan")]), use_out=st.booleans(), seed=st.integers(0, 9))
def test_rms_norm_properties(t, d, dw, dtype, how, eps, use_out, seed):
    rng = np.random.default_rng(seed)
    x = layout(rand(rng, (t, d), dtype, 3.0), how)
    w = rand(rng, (max(d + dw, 0),))
    x0 = x.copy()
    results = []
    for fn in (C.rms_norm, C.rms_norm_reference):
        out = Guarded((t, d), np.float32, np.nan) if use_out else None
        r = outcome(fn, x, w, eps, out=None if out is None else out.view)
        if out is not None:
            assert out.intact()
        results.append(r)
        np.testing.assert_array_equal(x, x0)
    assert_same_outcome(*results)
    if results[0][0] == "ok":
        close(results[0][1], results[1][1])


@SETTINGS
@given(t=DIM, f=DIM, du=st.sampled_from([0] * 12 + [1]), dtype=DTYPES, how=LAYOUTS,
       out_mode=st.sampled_from(["none", "guarded", "guarded", "guarded", "alias_gate", "none", "wrong"]), seed=st.integers(0, 9))
def test_swiglu_properties(t, f, du, dtype, how, out_mode, seed):
    rng = np.random.default_rng(seed)
    results = []
    for fn in (C.swiglu, C.swiglu_reference):
        g = layout(rand(np.random.default_rng(seed), (t, f), dtype, 4.0), how)
        u = rand(np.random.default_rng(seed + 1), (t, f + du))
        u0 = u.copy()
        out = None
        if out_mode in ("guarded", "wrong"):
            out = Guarded((t, f + (out_mode == "wrong")), np.float32, np.nan)
        target = g if out_mode == "alias_gate" else (None if out is None else out.view)
        r = outcome(fn, g, u, out=target)
        if out is not None:
            assert out.intact()
        np.testing.assert_array_equal(u, u0)
        results.append(r if r[0] != "ok" else ("ok", np.array(r[1], copy=True)))
    assert_same_outcome(*results)
    if results[0][0] == "ok":
        close(results[0][1], results[1][1])
    del rng


# ---------------------------------------------------------------- layer_norm / gelu


@SETTINGS
@given(t=DIM, d=DIM, dg=st.sampled_from([0] * 12 + [1, -1]), dtype=DTYPES, how=LAYOUTS,
       beta_mode=st.sampled_from(["none", "ok", "ok", "ok", "wrong"]),
       add_mode=st.sampled_from(["none", "ok", "ok", "ok", "wrong", "alias_x"]),
       eps=st.sampled_from([1e-5, 1e-6, 0.0] * 4 + [-1.0, float("nan")]),
       out_mode=st.sampled_from(["none", "guarded", "guarded", "guarded", "wrong", "alias_x"]), seed=st.integers(0, 9))
def test_layer_norm_properties(t, d, dg, dtype, how, beta_mode, add_mode, eps, out_mode, seed):
    results = []
    for fn in (C.layer_norm, C.layer_norm_reference):
        rng = np.random.default_rng(seed)
        x = Guarded((t, d), np.float32, rand(rng, (t, d), scale=3.0))
        xv = layout(x.view, how) if dtype == np.float32 else x.view.astype(dtype)
        gamma = rand(rng, (max(d + dg, 0),))
        beta = None if beta_mode == "none" else rand(rng, (d + (beta_mode == "wrong"),))
        add = {"none": None, "ok": rand(rng, (t, d)), "wrong": rand(rng, (t + 1, d)), "alias_x": xv}[add_mode]
        g0, add0 = gamma.copy(), None if add is None or add_mode == "alias_x" else add.copy()
        out = Guarded((t, d + (out_mode == "wrong")), np.float32, np.nan) if out_mode in ("guarded", "wrong") else None
        target = xv if out_mode == "alias_x" else (None if out is None else out.view)
        r = outcome(fn, xv, gamma, beta, add=add, eps=eps, out=target)
        assert x.intact() and (out is None or out.intact())
        np.testing.assert_array_equal(gamma, g0)
        if add0 is not None:
            np.testing.assert_array_equal(add, add0)
        results.append(r if r[0] != "ok" else ("ok", (np.array(r[1], copy=True), np.array(xv, copy=True))))
    assert_same_outcome(*results)
    if results[0][0] == "ok":
        close(results[0][1][0], results[1][1][0])
        close(results[0][1][1], results[1][1][1])  # x after the in-place add


@SETTINGS
@given(shape=st.one_of(*[st.tuples(DIM, DIM)] * 6, st.lists(DIM, max_size=3)), dtype=DTYPES, how=LAYOUTS,
       kind=st.sampled_from(["erf", "tanh", "quick"] * 4 + ["none", ""]),
       scale=st.sampled_from([1.0, 4.0, 30.0, 1e30]), readonly=st.sampled_from([False] * 9 + [True]),
       seed=st.integers(0, 9))
def test_gelu_properties(shape, dtype, how, kind, scale, readonly, seed):
    results = []
    for fn in (C.gelu, C.gelu_reference):
        x = Guarded(tuple(shape), np.float32, rand(np.random.default_rng(seed), tuple(shape), scale=scale))
        xv = layout(x.view, how) if dtype == np.float32 else x.view.astype(dtype)
        x0 = np.array(xv, copy=True)
        if readonly:
            xv.flags.writeable = False
        r = outcome(fn, xv, kind)
        assert x.intact()
        if r[0] == "ok":
            assert r[1] is xv
        else:
            np.testing.assert_array_equal(xv, x0)  # a refused call leaves x alone
        results.append(r if r[0] != "ok" else ("ok", np.array(xv, copy=True)))
    assert_same_outcome(*results)
    if results[0][0] == "ok":
        close(results[0][1], results[1][1])


# ---------------------------------------------------------------- rope


def mostly(valid, invalid, data, label):
    """`valid` about 9 times out of 10, else `invalid` (strategies)."""
    use_valid = data.draw(st.sampled_from([True] * 9 + [False]), label=label + " valid?")
    return data.draw(valid if use_valid else invalid, label=label)


@SETTINGS
@given(data=st.data(), t=st.integers(0, 6), seed=st.integers(0, 9))
def test_rope_properties(data, t, seed):
    h = mostly(st.integers(1, 3), st.just(0), data, "H")
    h_kv = data.draw(st.sampled_from([None, 1, 2, None, 1, 2, 0]), label="H_kv")
    d = mostly(st.sampled_from([2, 4, 8, 64]), st.sampled_from([0, 3]), data, "D")
    dtype = mostly(st.just(np.float32), DTYPES, data, "dtype")
    how = mostly(st.just("c"), LAYOUTS, data, "layout")
    positions = mostly(st.lists(st.one_of(st.integers(0, 70000), st.just(2**31 - 1)), min_size=t, max_size=t),
                       st.lists(small_index(), max_size=7), data, "positions")
    kind = data.draw(INDEX_KINDS, label="index dtype")
    theta = mostly(st.sampled_from([10000.0, 500000.0]), st.sampled_from([0.0, -1.0, float("nan")]), data, "theta")
    results = []
    for fn in (C.rope, C.rope_reference):
        rng = np.random.default_rng(seed)
        q = Guarded((t, h, d), np.float32, rand(rng, (t, h, d)))
        k = None if h_kv is None else Guarded((t, h_kv, d), np.float32, rand(rng, (t, h_kv, d)))
        qv = layout(q.view, how) if dtype == np.float32 else q.view.astype(dtype)
        r = outcome(fn, qv, None if k is None else k.view, index_array(positions, kind), theta)
        assert q.intact() and (k is None or k.intact())
        results.append((r[0], (qv.copy(), None if k is None else k.view.copy())))
    assert_same_outcome(*results)
    if results[0][0] == "ok":
        close(results[0][1][0], results[1][1][0], tol=3e-5)
        if h_kv is not None:
            close(results[0][1][1], results[1][1][1], tol=3e-5)


# ---------------------------------------------------------------- linear / quantize_weight_int8


@SETTINGS
@given(m=DIM, k=st.sampled_from(list(range(1, 41)) + [0]), n=DIM,
       wdtype=st.sampled_from(["float32", "float16", "int8", "int8"] * 3 + ["float64"]),
       scale_mode=st.sampled_from(["auto"] * 4 + ["none", "wrong_len"]),
       bias_mode=st.sampled_from(["none", "ok"] * 4 + ["wrong"]), how=st.sampled_from(["c"] * 8 + ["strided", "fortran"]),
       use_out=st.booleans(), seed=st.integers(0, 9))
def test_linear_properties(m, k, n, wdtype, scale_mode, bias_mode, how, use_out, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, (m, k))
    w32 = rand(rng, (n, k), scale=max(k, 1) ** -0.5)
    kw = {}
    if wdtype == "int8":
        if n > 0 and k > 0:
            w, scale = C.quantize_weight_int8(w32)
        else:
            w, scale = np.zeros((n, k), np.int8), np.zeros(n, np.float32)
        if scale_mode == "auto":
            kw["w_scale"] = scale
        elif scale_mode == "wrong_len":
            kw["w_scale"] = np.ones(n + 1, np.float32)
    else:
        w = w32.astype(wdtype)
        if scale_mode == "wrong_len" and seed < 3:
            kw["w_scale"] = np.ones(n, np.float32)
    w = layout(w, how)
    bias = None if bias_mode == "none" else rand(rng, (n + (bias_mode == "wrong"),))
    x0, w0 = x.copy(), w.copy()
    results = []
    for fn in (C.linear, C.linear_reference):
        out = Guarded((m, n), np.float32, np.nan) if use_out else None
        r = outcome(fn, x, w, bias, out=None if out is None else out.view, **kw)
        if out is not None:
            assert out.intact()
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(w, w0)
        results.append(r)
    assert_same_outcome(*results)
    if results[0][0] == "ok":
        close(results[0][1], results[1][1])


@SETTINGS
@given(n=st.integers(0, 9), k=st.integers(0, 9), dtype=DTYPES, how=LAYOUTS, zero_row=st.booleans(), seed=st.integers(0, 9))
def test_quantize_weight_int8_properties(n, k, dtype, how, zero_row, seed):
    w = layout(rand(np.random.default_rng(seed), (n, k), dtype, 2.0), how)
    if zero_row and n > 0:
        w[0] = 0
    r = outcome(C.quantize_weight_int8, w)
    hypothesis.event(r[0])
    if r[0] == "ok":
        q, scale = r[1]
        w64 = np.asarray(w, np.float64)
        close(scale, np.abs(w64).max(1) / 127.0, tol=1e-6)
        assert np.abs(q.astype(np.float64)).max() <= 127
        assert np.all(np.abs(q * scale[:, None].astype(np.float64) - w64) <= scale[:, None] * 0.5 * (1 + 1e-5) + 1e-12)


# ---------------------------------------------------------------- kv_append / attention


def cache_strategy():
    """Mostly valid cache configurations; now and then a zero dimension or missing / wrong scales."""
    return st.fixed_dictionaries(dict(
        paged=st.booleans(), int8=st.booleans(), slots=st.sampled_from([1, 2, 3, 5] * 3 + [0]),
        h_kv=st.sampled_from([1, 2] * 6 + [0]), s_max=st.sampled_from([1, 5, 16, 33] * 3 + [0]),
        d=st.sampled_from([1, 3, 8] * 4 + [0]), pages=st.sampled_from([1, 2, 3] * 4 + [0]),
        scales=st.sampled_from(["auto"] * 16 + ["none", "wrong"]), seed=st.integers(0, 9)))


def capacity(cfg):
    return cfg["pages"] * 16 if cfg["paged"] else cfg["s_max"]


def make_cache(cfg):
    """Guarded, poisoned caches of the drawn shape, plus the int8 scales (or wrong / missing ones)."""
    rows = 16 if cfg["paged"] else cfg["s_max"]
    shape = (cfg["slots"], cfg["h_kv"], rows, cfg["d"])
    if cfg["int8"]:
        k, v = Guarded(shape, np.int8, 77), Guarded(shape, np.int8, -77)
    else:
        k, v = Guarded(shape, np.float32, np.nan), Guarded(shape, np.float32, np.nan)
    scales = {}
    guards = [k, v]
    if (cfg["int8"] and cfg["scales"] != "none") or cfg["scales"] == "wrong":
        sshape = shape[:3] if cfg["scales"] == "auto" else (shape[0], shape[1], rows + 1)
        ks, vs = Guarded(sshape, np.float32, np.nan), Guarded(sshape, np.float32, np.nan)
        scales = dict(k_scale=ks.view, v_scale=vs.view)
        guards += [ks, vs]
    return k, v, scales, guards


def draw_page_table(data, cfg, batch, kind):
    if not cfg["paged"]:
        return None
    n = batch * cfg["pages"]
    vals = mostly(st.lists(st.integers(0, max(cfg["slots"] - 1, 0)), min_size=n, max_size=n),
                  st.lists(small_index(), min_size=n, max_size=n), data, "page_table")
    if kind == "list":
        return [vals[i * cfg["pages"] : (i + 1) * cfg["pages"]] for i in range(batch)]
    arr = index_array(vals, kind)
    return arr.reshape(batch, cfg["pages"]) if arr.dtype != object else arr


def draw_lengths(data, batch, lo, hi, label):
    """batch values in [lo, hi] (mostly), or anything (edge values, wrong length)."""
    return mostly(st.lists(st.integers(lo, max(lo, hi)), min_size=batch, max_size=batch),
                  st.lists(small_index(), max_size=4), data, label)


@SETTINGS
@given(data=st.data(), cfg=cache_strategy(), s_new=st.integers(0, 4), decode_form=st.booleans(), kind=INDEX_KINDS)
def test_kv_append_properties(data, cfg, s_new, decode_form, kind):
    batch = mostly(st.integers(0, max(cfg["slots"], 0) if not cfg["paged"] else 3), st.integers(0, 4), data, "B")
    s_new = 1 if decode_form else s_new
    act = mostly(st.just(np.float32), DTYPES, data, "activation dtype")
    h_kv, d = cfg["h_kv"], cfg["d"]
    kn = rand(np.random.default_rng(cfg["seed"]), (batch, s_new, h_kv, d), act)
    vn = rand(np.random.default_rng(cfg["seed"] + 1), (batch, s_new, h_kv, d), act)
    if decode_form:
        kn, vn = kn[:, 0], vn[:, 0]
    lens = data.draw(st.sampled_from([None, "draw"]), label="new_lens?")
    if lens is not None:
        lens = draw_lengths(data, batch, 0, s_new, "new_lens")
    room = capacity(cfg) - s_new
    starts = draw_lengths(data, batch, 0, room, "start_pos")
    pt = draw_page_table(data, cfg, batch, kind)
    results, caches = [], []
    for fn in (C.kv_append, C.kv_append_reference):
        k, v, scales, guards = make_cache(cfg)
        kn0 = kn.copy()
        r = outcome(fn, k.view, v.view, kn, vn, index_array(starts, kind),
                    new_lens=None if lens is None else index_array(lens, kind), page_table=pt, **scales)
        assert all(g.intact() for g in guards)
        np.testing.assert_array_equal(kn, kn0)
        results.append(r)
        caches.append([g.buf.copy() for g in guards])
    assert_same_outcome(*results)
    for a, b in zip(*caches):
        np.testing.assert_array_equal(a, b)  # the same bytes: copies, or the same int8 quantisation
    if results[0][0] != "ok" and not cfg["int8"]:
        assert np.isnan(caches[0][0][GUARD:-GUARD]).all(), "a refused call must not write the cache"


def filled_cache(cfg):
    """A cache with every row written (so that valid calls read no poison)."""
    k, v, scales, guards = make_cache(cfg)
    rng = np.random.default_rng(cfg["seed"])
    k.view[...] = rng.standard_normal(k.view.shape) * (40 if cfg["int8"] else 1)
    v.view[...] = rng.standard_normal(v.view.shape) * (40 if cfg["int8"] else 1)
    for sc in scales.values():
        sc[...] = rng.uniform(0.001, 0.03, sc.shape)
    return k, v, scales, guards


@SETTINGS
@given(data=st.data(), cfg=cache_strategy(), decode=st.booleans(), kind=INDEX_KINDS, use_out=st.booleans())
def test_attention_properties(data, cfg, decode, kind, use_out):
    batch = mostly(st.integers(0, max(cfg["slots"], 0) if not cfg["paged"] else 3), st.integers(0, 4), data, "B")
    s_q = 1 if decode else mostly(st.integers(1, 5), st.just(0), data, "S_q")
    h = cfg["h_kv"] * mostly(st.integers(1, 3), st.just(0), data, "group") + data.draw(st.sampled_from([0] * 19 + [1]))
    d = cfg["d"]
    act = mostly(st.just(np.float32), DTYPES, data, "activation dtype")
    how = mostly(st.just("c"), LAYOUTS, data, "layout")
    scale = mostly(st.sampled_from([0.0, 0.3]), st.sampled_from([-1.0, float("inf"), float("nan")]), data, "scale")
    qshape = (batch, h, d) if decode else (batch, s_q, h, d)
    q = layout(rand(np.random.default_rng(cfg["seed"] + 7), qshape, act), how)
    q_lens = None if decode else draw_lengths(data, batch, 0, s_q, "q_lens")
    lo = 1 if decode else (max(q_lens) if q_lens and len(q_lens) == batch and max(q_lens) <= s_q else 0)
    kv_lens = draw_lengths(data, batch, max(lo, 0), capacity(cfg), "kv_lens")
    pt = draw_page_table(data, cfg, batch, kind)
    results = []
    for fn in ((C.attention_decode, C.attention_decode_reference) if decode
               else (C.attention_prefill, C.attention_prefill_reference)):
        k, v, scales, guards = filled_cache(cfg)
        kbuf = [g.buf.copy() for g in guards]
        out = Guarded(qshape, np.float32, np.nan) if use_out else None
        args = (q, k.view, v.view) + (() if decode else (index_array(q_lens, kind),)) + (index_array(kv_lens, kind),)
        r = outcome(fn, *args, out=None if out is None else out.view, page_table=pt, scale=scale, **scales)
        assert all(g.intact() for g in guards) and (out is None or out.intact())
        for a, g in zip(kbuf, guards):
            np.testing.assert_array_equal(a, g.buf)  # attention never writes the cache
        results.append(r)
    assert_same_outcome(*results)
    if results[0][0] == "ok":
        assert np.isfinite(results[1][1]).all()
        close(results[0][1], results[1][1], tol=2e-4)


# ---------------------------------------------------------------- patch_embed / interpolate_pos_embed


@SETTINGS
@given(b=st.integers(0, 2), gh=st.sampled_from([1, 2, 3] * 4 + [0]), gw=st.sampled_from([1, 2, 3] * 4 + [0]),
       p=st.sampled_from([1, 2, 3, 4] * 3 + [0]), dh=st.sampled_from([0] * 12 + [1]), d=st.sampled_from([1, 3, 8] * 4 + [0]),
       pos_rows=st.sampled_from([0] * 16 + [1, -1]), bias=st.booleans(), ln=st.booleans(),
       wdtype=st.sampled_from([np.float32] * 16 + [np.float16, np.float64]), how=st.sampled_from(["c"] * 16 + ["strided", "fortran"]),
       std0=st.sampled_from([False] * 9 + [True]), use_out=st.booleans(), seed=st.integers(0, 9))
def test_patch_embed_properties(b, gh, gw, p, dh, d, pos_rows, bias, ln, wdtype, how, std0, use_out, seed):
    rng = np.random.default_rng(seed)
    hh, ww = gh * p + dh, gw * p
    n = gh * gw
    images = rng.integers(0, 256, (b, hh, ww, 3), dtype=np.uint8)
    weight = layout(rand(rng, (d, 3, p, p), wdtype, 0.2), how)
    args = dict(bias=rand(rng, (d,)) if bias else None, class_emb=rand(rng, (d,)), pos_emb=rand(rng, (max(n + 1 + pos_rows, 0), d)),
                mean=(0.48, 0.45, 0.40), std=(0.26, 0.0 if std0 else 0.26, 0.27),
                ln_gamma=rand(rng, (d,)) if ln else None, ln_beta=rand(rng, (d,)) if ln else None)
    results = []
    for fn in (C.patch_embed, C.patch_embed_reference):
        out = Guarded((b, n + 1, d), np.float32, np.nan) if use_out else None
        r = outcome(fn, images, weight, args["bias"], args["class_emb"], args["pos_emb"], args["mean"], args["std"],
                    ln_gamma=args["ln_gamma"], ln_beta=args["ln_beta"], out=None if out is None else out.view)
        assert out is None or out.intact()
        results.append(r)
    assert_same_outcome(*results)
    if results[0][0] == "ok":
        close(results[0][1], results[1][1], tol=1e-4)


@SETTINGS
@given(g=st.integers(0, 5), extra=st.sampled_from([0, 0, 1]), d=st.sampled_from([0, 1, 3]), new_grid=st.one_of(st.integers(-1, 7), st.sampled_from([2**31, 2**40])),
       use_out=st.booleans(), seed=st.integers(0, 9))
def test_interpolate_pos_embed_properties(g, extra, d, new_grid, use_out, seed):
    pos = rand(np.random.default_rng(seed), (1 + g * g + extra, d))
    pos0 = pos.copy()
    out = Guarded((1 + max(new_grid, 0) ** 2, d), np.float32, np.nan) if use_out and 0 <= new_grid <= 7 else None
    try:
        r = outcome(C.interpolate_pos_embed, pos, new_grid, out=None if out is None else out.view)
    except OverflowError:  # new_grid does not fit the C++ int64 argument: refused by pybind11 itself
        return
    np.testing.assert_array_equal(pos, pos0)
    assert out is None or out.intact()
    if r[0] == "ok":
        res = r[1]
        assert res.shape == (1 + new_grid * new_grid, d) and np.isfinite(res).all()
        np.testing.assert_array_equal(res[0], pos[0])
        torch = pytest.importorskip("torch")
        grid = torch.from_numpy(pos[1:]).reshape(1, g, g, d).permute(0, 3, 1, 2)
        want = torch.nn.functional.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=True)
        close(res[1:], want.permute(0, 2, 3, 1).reshape(-1, d).numpy(), tol=1e-5)


# ---------------------------------------------------------------- qgemm_pack / qgemm


@SETTINGS
@given(m=DIM, k=st.sampled_from(list(range(1, 41)) + [0]), n=DIM, xdtype=DTYPES, how=LAYOUTS,
       bias_mode=st.sampled_from(["none", "ok"] * 4 + ["wrong"]),
       packed_mode=st.sampled_from(["ok"] * 8 + ["truncated", "flipped", "other_k"]), use_out=st.booleans(),
       seed=st.integers(0, 9))
def test_qgemm_properties(m, k, n, xdtype, how, bias_mode, packed_mode, use_out, seed):
    """qgemm on the packed weights against qgemm_reference on the unpacked ones: the same refusals (a
    damaged packed buffer is refused by qgemm alone) and the same values."""
    from rsvlm_edge.models.llava.quant import quantize_w8

    rng = np.random.default_rng(seed)
    x = layout(rand(rng, (m, k)).astype(xdtype), how)
    w, scale = quantize_w8(rand(rng, (n, k))) if n and k else (np.zeros((n, k), np.int8), np.ones(n, np.float32))
    packed = C.qgemm_pack(w, scale) if n and k else None
    if packed is not None and packed_mode == "truncated":
        packed = packed[:-1]
    elif packed is not None and packed_mode == "flipped":
        packed = packed.copy()
        packed[8 + seed % 8] ^= 1  # N or K: the header's checksum fails
    elif packed is not None and packed_mode == "other_k":
        packed = C.qgemm_pack(np.ones((n, k + 1), np.int8), scale)
    bias = None if bias_mode == "none" else rand(rng, (n + (bias_mode == "wrong"),))
    x0 = x.copy()
    results = []
    for fn, weights in ((C.qgemm, (packed,)), (C.qgemm_reference, (w, scale))):
        out = Guarded((m, n), np.float32, np.nan) if use_out else None
        r = outcome(fn, x, *weights, bias, out=None if out is None else out.view)
        if out is not None:
            assert out.intact()
        np.testing.assert_array_equal(x, x0)
        results.append(r)
    if packed is not None and packed_mode != "ok":
        assert results[0][0] == "value_error", results[0]  # names packed, or x (its K, its dtype)
        return
    assert_same_outcome(*results)
    if results[0][0] == "ok":
        close(results[0][1], results[1][1])


# ---------------------------------------------------------------- tensor_arg_info


@SETTINGS
@given(shape=st.lists(st.integers(0, 4), max_size=4), dtype=st.sampled_from(
    [np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32, np.float64, np.uint16, np.bool_]),
       step=st.sampled_from([1, 1, 2, -1]), transpose=st.booleans())
def test_tensor_arg_info_properties(shape, dtype, step, transpose):
    a = np.zeros([s * abs(step) for s in shape], dtype)
    if shape:
        a = a[(slice(None, None, step),) * len(shape)]
    if transpose:
        a = a.T
    r = outcome(C.tensor_arg_info, a)
    if np.dtype(dtype) in (np.dtype(np.float64), np.dtype(np.uint16), np.dtype(np.bool_)):
        assert r[0] == "value_error" and "argument 'tensor'" in r[1]
        return
    assert r[0] == "ok", r
    info = r[1]
    assert info["shape"] == a.shape and info["data"] == a.__array_interface__["data"][0]
    assert info["strides"] == tuple(s // a.itemsize for s in a.strides)
    assert info["contiguous"] == (a.flags.c_contiguous or a.size == 0 or a.ndim == 0 or info["contiguous"])
