"""Weights in the process's own memory on transparent huge pages, for the CPU kernels that stream them.

A bundle's tensors are read-only views of the file's memory map (``bundle/safetensors_mmap.py``): 4 KiB
page-cache pages. A batch-1 decode step reads every weight once, and reading them from 4 KiB pages costs
TLB walks (and the L2 streamer stops at every 4 KiB boundary). Measured on the 2-vCPU AMX Xeon (480 MiB
L3), the 154 w8 linear weights of a TinyLlama-shape decoder (1.0 GB) read back to back by ``qlinear``
at batch 1: 22.0 GB/s from the file map, 24.1 GB/s copied to anonymous 4 KiB pages, 27.7 GB/s copied to
anonymous memory on 2 MiB huge pages.

``HugePageArena`` places arrays in anonymous maps of ``chunk_bytes`` (2 MiB-aligned, ``madvise
(MADV_HUGEPAGE)``), one after another at 4 KiB-aligned offsets, so that nearly every byte sits on a huge
page (where the kernel has transparent huge pages in ``madvise`` or ``always`` mode; elsewhere these are
plain anonymous pages). Only touched pages are resident: a chunk's unused tail costs address space, plus
at most one partly used 2 MiB page. A chunk is unmapped when no array placed in it is alive.
"""

from __future__ import annotations

import mmap

import numpy as np

from ..bundle.safetensors_mmap import release_pages

HUGE_PAGE = 2 << 20
ARRAY_ALIGN = 4096  # each array starts on a 4 KiB boundary of its chunk


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class HugePageArena:
    """Anonymous, huge-page-backed memory for arrays that live as long as their owner (decoder weights)."""

    def __init__(self, chunk_bytes: int = 256 << 20) -> None:
        self.chunk_bytes = _round_up(max(chunk_bytes, HUGE_PAGE), HUGE_PAGE)
        self._map: mmap.mmap | None = None
        self._offset = 0  # next free byte of self._map
        self._end = 0  # end of its usable (2 MiB-aligned) range
        self.placed_bytes = 0

    def _new_chunk(self, nbytes: int) -> None:
        size = max(self.chunk_bytes, _round_up(nbytes, HUGE_PAGE))
        mm = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                mm.madvise(mmap.MADV_HUGEPAGE)
            except OSError:  # a kernel without transparent huge pages: plain anonymous pages
                pass
        address = np.frombuffer(mm, dtype=np.uint8, count=1).__array_interface__["data"][0]
        self._map, self._offset = mm, _round_up(address, HUGE_PAGE) - address
        self._end = self._offset + size

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised, writable, C-contiguous array in the arena."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        if nbytes == 0:
            return np.empty(shape, dtype)
        if self._map is None or self._offset + nbytes > self._end:
            self._new_chunk(nbytes)
        assert self._map is not None
        out = np.frombuffer(self._map, dtype=dtype, count=count, offset=self._offset).reshape(shape)
        self._offset += _round_up(nbytes, ARRAY_ALIGN)
        self.placed_bytes += nbytes
        return out

    def copy(self, src: np.ndarray) -> np.ndarray:
        """A read-only copy of ``src`` (at least 1-D) in the arena; when ``src`` is a view of a bundle's file map,
        its pages are released from this process's resident memory (they stay in the page cache)."""
        return self.concat([src])

    def concat(self, arrays: list[np.ndarray]) -> np.ndarray:
        """``arrays`` (each (n_i, ...), one dtype and trailing shape) as one read-only array (sum n_i, ...) in the
        arena, their rows in order; the mapped pages of each source are released once it is copied."""
        first = arrays[0]
        out = self.empty((sum(a.shape[0] for a in arrays), *first.shape[1:]), first.dtype)
        row = 0
        for a in arrays:
            np.copyto(out[row:row + a.shape[0]], a, casting="no")
            release_pages(a)
            row += a.shape[0]
        out.flags.writeable = False
        return out
