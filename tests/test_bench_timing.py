"""The bench's read-bandwidth buffer (rsvlm_edge/bench/timing.py): sized from the last-level cache read from
sysfs, so that a machine whose L3 holds the old fixed 256 MiB buffer (480 MiB L3s exist) measures DRAM, not L3."""

from __future__ import annotations

import pytest

from rsvlm_edge.bench.timing import last_level_cache_bytes, read_buffer_bytes


def _cache(root, index: int, level: str, size: str) -> None:
    d = root / f"index{index}"
    d.mkdir(parents=True)
    (d / "level").write_text(level + "\n")
    (d / "size").write_text(size + "\n")


def test_the_highest_level_is_the_last_level_cache(tmp_path):
    for i, (level, size) in enumerate([("1", "48K"), ("1", "64K"), ("2", "2048K"), ("3", "491520K")]):
        _cache(tmp_path, i, level, size)
    assert last_level_cache_bytes(tmp_path) == 491520 << 10


@pytest.mark.parametrize("level, size", [("x", "1M"), ("3", "lots"), ("3", "")])
def test_unreadable_entries_are_skipped(tmp_path, level, size):
    _cache(tmp_path, 0, "2", "1M")
    _cache(tmp_path, 1, level, size)
    assert last_level_cache_bytes(tmp_path) == 1 << 20


def test_no_sysfs_says_none(tmp_path):
    assert last_level_cache_bytes(tmp_path / "missing") is None


@pytest.mark.parametrize("llc, want", [(None, 256 << 20), (32 << 20, 256 << 20), (480 << 20, 960 << 20),
                                       (1152 << 20, 2 << 30)])
def test_the_buffer_is_twice_the_cache_within_bounds(llc, want):
    assert read_buffer_bytes(llc) == want
