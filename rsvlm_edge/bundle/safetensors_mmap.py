"""Zero-copy, read-only numpy views of a ``.safetensors`` file through one memory map.

``safetensors.numpy.load_file`` copies every tensor out of its own memory map, so a decoder's peak
RSS is about twice its weight bytes while loading. Here each tensor is an ``np.frombuffer`` view of a
read-only ``mmap`` of the file (as llama.cpp maps GGUF files): resident memory is the pages touched,
shared with the page cache and with other processes mapping the same bundle, and loading costs no
copy. The views keep the map alive; they are read-only (a write raises).

The header is untrusted input and checked completely before any view is made: its length, JSON
shape, known dtypes, non-negative shapes whose byte size equals the data range, ranges inside the
data section and not overlapping. Format: https://github.com/huggingface/safetensors (8-byte
little-endian header length N, N bytes of JSON, then the data section).
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np

from ..errors import BundleError

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


def _bad(path: Path, what: str) -> BundleError:
    return BundleError(f"'{path}' is not a valid safetensors file ({what})", "re-export the bundle")


def map_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of ``path`` as a read-only view into one memory map (metadata is ignored)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 8:
                raise _bad(path, f"{size} bytes, shorter than the 8-byte header length")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise BundleError(f"cannot read '{path}' ({e.strerror or e})", "check the bundle's files") from None
    (n,) = struct.unpack("<Q", mm[:8])
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise _bad(path, f"header of {n} bytes in a file of {size}")
    try:
        header = json.loads(bytes(mm[8:8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    data_start, data_len = 8 + n, size - 8 - n
    ranges: list[tuple[int, int, str]] = []
    out: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(spec, dict) or set(spec) - {"dtype", "shape", "data_offsets"}:
            raise _bad(path, f"entry '{name:.80}' is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if dtype not in DTYPES:
            raise _bad(path, f"tensor '{name:.80}' has dtype {dtype!r:.20}, not one of {', '.join(DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)):
            raise _bad(path, f"tensor '{name:.80}' has shape {shape!r:.60}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len):
            raise _bad(path, f"tensor '{name:.80}' has data_offsets {offsets!r:.60} outside the {data_len}-byte data")
        itemsize = np.dtype(DTYPES[dtype]).itemsize
        count = int(np.prod(shape, dtype=np.float64))
        if count * itemsize != offsets[1] - offsets[0]:
            raise _bad(path, f"tensor '{name:.80}' {dtype} {tuple(shape)} needs {count * itemsize} bytes, "
                             f"its range has {offsets[1] - offsets[0]}")
        ranges.append((offsets[0], offsets[1], name))
        arr = np.frombuffer(mm, dtype=DTYPES[dtype], count=count, offset=data_start + offsets[0])
        out[name] = arr.reshape(shape)
    ranges.sort()
    for (_, end, a), (start, _, b) in zip(ranges, ranges[1:]):
        if start < end:
            raise _bad(path, f"tensors '{a:.60}' and '{b:.60}' overlap")
    return out


def release_pages(view: np.ndarray) -> None:
    """Drop this process's mapping of the whole pages inside ``view`` (a tensor of ``map_tensors``) from
    its resident memory, once a copy of the tensor replaced it: the pages stay in the page cache, and a
    later read of the view faults them back in from the file. A no-op for arrays that are not such views."""
    base = view
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # numpy 2's np.frombuffer keeps a memoryview of the map
        base = base.obj
    if not isinstance(base, mmap.mmap) or view.nbytes == 0:
        return
    start_addr = view.__array_interface__["data"][0]
    map_addr = np.frombuffer(base, dtype=np.uint8, count=1).__array_interface__["data"][0]
    page = mmap.PAGESIZE
    first = -(-(start_addr - map_addr) // page) * page  # first whole page inside the view
    last = (start_addr - map_addr + view.nbytes) // page * page
    if last > first:
        base.madvise(mmap.MADV_DONTNEED, first, last - first)

