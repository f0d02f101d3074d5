"""bundle/safetensors_mmap.py: zero-copy read-only views of decoder.safetensors, and every malformed
header refused with a BundleError before a view is made."""

from __future__ import annotations

import json
import mmap
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from rsvlm_edge.bundle.safetensors_mmap import map_tensors
from rsvlm_edge.errors import BundleError

DTYPES = [np.float32, np.float16, np.int8, np.uint8, np.int64]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 5), min_size=0, max_size=3)),
                min_size=1, max_size=6), st.integers(0, 2**31))
def test_views_equal_the_safetensors_library(tmp_path_factory, specs, seed):
    rng = np.random.default_rng(seed)
    tensors = {f"t{i}": np.asarray(rng.standard_normal(shape) * 50).astype(dt) for i, (dt, shape) in enumerate(specs)}
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    save_file(tensors, str(path))
    got, want = map_tensors(path), load_file(str(path))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        np.testing.assert_array_equal(got[k], want[k])
        assert not got[k].flags.writeable


def test_views_share_one_memory_map_and_copy_nothing(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": np.arange(1000, dtype=np.float32), "b": np.ones((30, 40), np.int8)}, str(path))
    got = map_tensors(path)
    for arr in got.values():
        base = arr
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)  # a view of the map, no copy
        assert arr.flags.c_contiguous
        with pytest.raises(ValueError, match="read-only"):
            arr[...] = 0


def _write(path, header: object, data: bytes = b"", raw_header: bytes | None = None) -> None:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


BAD = [
    ("short", None, b"", b"\x01\x02", "shorter than the 8-byte header length"),
    ("huge header", None, b"", "HUGE", "header of"),
    ("not json", None, b"", b"{nope", "header is not JSON"),
    ("not object", [1, 2], b"", None, "header is not a JSON object"),
    ("entry not object", {"a": 5}, b"", None, "is not {dtype, shape, data_offsets}"),
    ("extra key", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, b"\0" * 4, None,
     "is not {dtype, shape, data_offsets}"),
    ("dtype", {"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, b"\0", None, "has dtype 'Q4'"),
    ("negative dim", {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "has shape"),
    ("bool dim", {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, None, "has shape"),
    ("float dim", {"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, b"\0" * 4, None, "has shape"),
    ("offsets past end", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None,
     "outside the 4-byte data"),
    ("reversed offsets", {"a": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}}, b"\0" * 4, None,
     "outside the 4-byte data"),
    ("size mismatch", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     "needs 12 bytes, its range has 8"),
    ("huge shape", {"a": {"dtype": "F32", "shape": [2**39, 2**39], "data_offsets": [0, 4]}}, b"\0" * 4, None,
     "needs"),
    ("overlap", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlap"),
]


@pytest.mark.campaign("security")
@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_malformed_files_are_bundle_errors(tmp_path, case):
    _, header, data, raw, message = case
    path = tmp_path / "bad.safetensors"
    if case[0] == "short":
        path.write_bytes(raw)
    elif raw == "HUGE":
        path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    else:
        _write(path, header, data, raw)
    with pytest.raises(BundleError, match="not a valid safetensors file") as e:
        map_tensors(path)
    assert message in str(e.value)
    assert e.value.fix == "re-export the bundle"


@pytest.mark.campaign("security")
def test_missing_file_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="cannot read"):
        map_tensors(tmp_path / "absent.safetensors")
