"""Embedding shards: the durable output of the embedding stage, written one at a time.

A part's plan (items 0..N-1) is cut into shards of ``shard_size`` consecutive items. Shard ``s`` of
part ``p`` is ``shards/part-PPP/shard-SSSSSS.npz`` (numpy, no pickles) holding:

* ``items`` (K,) int64 and ``embeddings`` (K, E) float32: the items embedded, ascending;
* ``nodata_items`` (M,) int64: scene tiles left out because their nodata fraction is too high;
* ``unreadable_items`` (U,) int64 and ``unreadable_reasons`` (U,) str: items left out (``--on-error skip``);
* ``meta``: JSON with the part, shard, item range and the sha256 of the plan it belongs to.

Together the three item arrays cover the shard's range exactly. Each shard is written atomically
(``rsvlm_edge.atomic``), so a shard file is either complete or absent; a build that stops (error,
Ctrl-C, crash) keeps the shards it wrote and the next run skips them. ``ShardAssembler`` gathers
the pipeline's output rows (in any order) and writes each shard as soon as all its items are in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError

SHARD_DIR = "shards"
STATUS_OK, STATUS_NODATA, STATUS_UNREADABLE = "ok", "nodata", "unreadable"


def shard_name(part: int, shard: int) -> str:
    """Path of a shard relative to the index directory."""
    return f"{SHARD_DIR}/part-{part:03d}/shard-{shard:06d}.npz"


def shard_ranges(items: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) item ranges of the shards of a plan of ``items`` items."""
    return [(a, min(a + shard_size, items)) for a in range(0, items, shard_size)]


@dataclass
class Shard:
    """The content of one shard file (see the module docstring)."""

    part: int
    shard: int
    start: int
    stop: int
    plan_sha256: str
    items: np.ndarray
    embeddings: np.ndarray
    nodata_items: np.ndarray
    unreadable_items: np.ndarray
    unreadable_reasons: np.ndarray

    def write(self, path: Path) -> None:
        """Write atomically (temp file, fsync, rename)."""
        meta = {"part": self.part, "shard": self.shard, "start": self.start, "stop": self.stop,
                "plan_sha256": self.plan_sha256}
        with atomic_path(path, what="shard") as tmp, open(tmp, "wb") as f:
            np.savez(f, items=self.items, embeddings=self.embeddings, nodata_items=self.nodata_items,
                     unreadable_items=self.unreadable_items, unreadable_reasons=self.unreadable_reasons,
                     meta=np.array(json.dumps(meta)))


def corrupt_shard(path: Path, why: str) -> InputError:
    return InputError(f"shard '{path}' is corrupt ({why})",
                      f"delete it (rm '{path}') and run the same command again: only that shard is embedded again")


def read_shard(path: Path, part: int, shard: int, start: int, stop: int, plan_sha256: str, dim: int) -> Shard:
    """Read and check a shard: readable, of this part/shard/range/plan, items covering the range
    exactly, embeddings (K, dim) float32 and finite. Anything else is an ``InputError`` (corrupt
    shard) that says how to have it embedded again."""
    names = ("items", "embeddings", "nodata_items", "unreadable_items", "unreadable_reasons", "meta")
    try:
        with np.load(path, allow_pickle=False) as z:
            cols = {n: z[n] for n in names}
        meta = json.loads(str(cols["meta"]))
    except KeyError as e:
        raise corrupt_shard(path, f"no array {e}") from None
    except Exception as e:  # truncated zip, bad CRC, bad JSON, pickled arrays
        raise corrupt_shard(path, f"{e.__class__.__name__}: {str(e)[:120]}") from None
    expected = {"part": part, "shard": shard, "start": start, "stop": stop, "plan_sha256": plan_sha256}
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
        raise corrupt_shard(path, "it belongs to another build plan or place")
    emb = cols["embeddings"]
    if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape != (len(cols["items"]), dim):
        raise corrupt_shard(path, f"embeddings {emb.dtype} {emb.shape}, expected float32 ({len(cols['items'])}, {dim})")
    if not np.isfinite(emb).all():
        raise corrupt_shard(path, "embeddings are not finite")
    covered = np.sort(np.concatenate([cols["items"], cols["nodata_items"], cols["unreadable_items"]]))
    if not np.array_equal(covered, np.arange(start, stop)) or not np.all(np.diff(cols["items"]) > 0):
        raise corrupt_shard(path, f"its items do not cover {start}..{stop - 1} exactly once, in order")
    if len(cols["unreadable_reasons"]) != len(cols["unreadable_items"]):
        raise corrupt_shard(path, "unreadable items and reasons differ in length")
    return Shard(part, shard, start, stop, plan_sha256, cols["items"].astype(np.int64), emb,
                 cols["nodata_items"].astype(np.int64), cols["unreadable_items"].astype(np.int64),
                 cols["unreadable_reasons"].astype(str))


@dataclass
class _Open:
    """A shard being filled."""

    start: int
    stop: int
    rows: dict[int, tuple[str, str, np.ndarray | None]] = field(default_factory=dict)


class ShardAssembler:
    """Collects embedding rows (item, status, reason, embedding) for the pending shards of a part
    and writes each shard when its last item arrives. ``on_unreadable(item, reason)`` is called for
    an unreadable item when it arrives; it may raise (strict mode) to stop the build: the shards
    already written stay."""

    def __init__(self, root: Path, part: int, plan_sha256: str, dim: int, pending: dict[int, tuple[int, int]],
                 shard_size: int, on_unreadable=None) -> None:
        self.root, self.part, self.plan_sha256, self.dim = root, part, plan_sha256, dim
        self.shard_size = shard_size
        self.pending = dict(pending)
        self.open: dict[int, _Open] = {}
        self.on_unreadable = on_unreadable
        self.written: list[int] = []

    def add(self, batch: dict[str, np.ndarray]) -> int:
        """Take one output batch of the pipeline; returns how many items it held."""
        items = batch["item"]
        for i, item in enumerate(items.tolist()):
            status, reason = str(batch["status"][i]), str(batch["reason"][i])
            if status == STATUS_UNREADABLE and self.on_unreadable is not None:
                self.on_unreadable(item, reason)
            s = item // self.shard_size
            if s not in self.pending:
                raise RuntimeError(f"item {item} of shard {s}, which is not pending")
            start, stop = self.pending[s]
            slot = self.open.setdefault(s, _Open(start, stop))
            slot.rows[item] = (status, reason, batch["embedding"][i] if status == STATUS_OK else None)
            if len(slot.rows) == stop - start:
                self._write(s, self.open.pop(s))
        return len(items)

    def _write(self, s: int, slot: _Open) -> None:
        order = sorted(slot.rows)
        ok = [i for i in order if slot.rows[i][0] == STATUS_OK]
        bad = [i for i in order if slot.rows[i][0] == STATUS_UNREADABLE]
        emb = np.stack([slot.rows[i][2] for i in ok]).astype(np.float32) if ok else np.zeros((0, self.dim), np.float32)
        Shard(self.part, s, slot.start, slot.stop, self.plan_sha256, np.array(ok, dtype=np.int64), emb,
              np.array([i for i in order if slot.rows[i][0] == STATUS_NODATA], dtype=np.int64),
              np.array(bad, dtype=np.int64), np.array([slot.rows[i][1] for i in bad], dtype=str)
              ).write(self.root / shard_name(self.part, s))
        del self.pending[s]
        self.written.append(s)

    @property
    def done(self) -> bool:
        return not self.pending


def iter_part_shards(root: Path, part: int, ranges: list[tuple[int, int]], plan_sha256: str, dim: int
                     ) -> Iterator[Shard]:
    """Every shard of a finished part, in order, checked (``read_shard``)."""
    for s, (a, b) in enumerate(ranges):
        path = root / shard_name(part, s)
        if not path.is_file():
            raise InputError(f"shard '{path}' is missing",
                             "restore it from a backup, or rebuild the index into a new directory (`rsvlm-edge index build`)")
        yield read_shard(path, part, s, a, b, plan_sha256, dim)
