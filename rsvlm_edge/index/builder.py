"""``index build`` and ``index add``: plan the items, embed them into shards (in this process or on
Ray), then build the FAISS index and the ids -> source table and commit them with the manifest.

Resuming: the plan and what was asked are recorded in ``INDEX/build.json`` before the first shard.
Running the same command again after an error, Ctrl-C or a crash keeps every shard already written
(each was written atomically and is checked when reused) and embeds only the missing ones; other
sources or options than the unfinished run's are refused rather than mixed in.

Atomicity: the FAISS index and the table of each generation get new file names; the manifest,
renamed into place last, points to them. An index being extended (``index add``) stays queryable
with its previous generation until then, and an ``index add`` that fails loses nothing.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import output_error
from ..bundle import Bundle, sha256_of
from ..errors import InputError
from . import faiss_index
from .manifest import (
    MANIFEST,
    PENDING,
    FaissSpec,
    FileEntry,
    IndexManifest,
    ModelRef,
    Part,
    PendingPart,
    SkippedSource,
    TileOptions,
    index_bundle,
    model_ref,
    now,
    open_clip_bundle,
    read_record,
    write_record,
)
from .pipeline import ClipEmbedder, EmbedConfig, embed_in_process
from .shards import SHARD_DIR, ShardAssembler, iter_part_shards, read_shard, shard_name, shard_ranges
from .sources import SourceTable, expand_sources, plan_items

DEFAULT_SHARD_SIZE = 4096
PLAN_DIR = "plans"
LOCK_FILE = ".lock"


@dataclass
class EmbedOptions:
    """How the embedding runs (not part of what is built: a resumed build may change them).

    ``ray``: None to embed in this process; ``local`` (start a Ray cluster on this machine), ``auto``
    (the cluster ``ray start`` runs here, or ``RAY_ADDRESS``), ``HOST:PORT`` or ``ray://HOST:PORT``.
    ``workers``: Ray actors (default: one per GPU, else one per ``cpus_per_worker`` CPUs).
    ``on_error``: ``strict`` stops at the first unreadable image or tile; ``skip`` leaves it out and
    records it with its reason in the manifest."""

    backend: str = "auto"
    batch_size: int | None = None
    ray: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    on_error: str = "strict"


@dataclass
class IndexOptions:
    """Which FAISS index ``index build`` makes (``faiss_index.choose_spec``)."""

    index_type: str = "auto"
    exact_max: int = faiss_index.EXACT_MAX
    nlist: int | None = None
    nprobe: int | None = None
    k_factor: int | None = None


@dataclass
class BuildReport:
    """What a build or add did. ``shards_reused`` were found complete from an interrupted run;
    ``embed_seconds`` is the embedding itself, after ``ray_start_seconds`` spent joining Ray."""

    path: Path
    command: str
    part: int | None
    items: int = 0
    embedded: int = 0
    nodata_tiles: int = 0
    unreadable: list[SkippedSource] = field(default_factory=list)
    already_indexed: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    count: int = 0
    index: FaissSpec | None = None
    items_reused: int = 0
    ray_start_seconds: float = 0.0
    embed_seconds: float = 0.0
    index_seconds: float = 0.0
    rebuilt: bool = False

    @property
    def items_per_s(self) -> float | None:
        """Items (images and tiles) decoded and embedded per second by this run (None when it
        embedded nothing)."""
        done = self.items - self.items_reused
        return done / self.embed_seconds if self.embed_seconds > 0 and done > 0 else None


class _Bar:
    """A rich ``Progress`` task, or nothing."""

    def __init__(self, progress: Any, label: str, total: int | None) -> None:
        self.progress = progress
        self.task = progress.add_task(label, total=total) if progress is not None else None

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)


@dataclass
class _Job:
    """The part being built: its record, its plan, and how many files were left out as already indexed."""

    pending: PendingPart
    plan: SourceTable
    already_indexed: int = 0


# --- the directory ---------------------------------------------------------------------------------

def _is_index_dir(out: Path) -> str:
    """``new`` (absent or empty), ``pending`` (an unfinished build), or ``index`` (a manifest)."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise InputError(f"'{out}' is a file, not an index directory", "pass a new or empty directory with -o")
    if (out / MANIFEST).exists():
        return "index"
    if (out / PENDING).exists():
        return "pending"
    if any(not p.name.startswith(".") for p in out.iterdir()):
        raise InputError(f"'{out}' is not empty and holds no index", "pass a new or empty directory with -o")
    return "new"


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One writer per index directory at a time (``flock`` on ``INDEX/.lock``)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise output_error(out, e, "index directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another rsvlm-edge process is writing the index '{out}'",
                             "wait for it to finish, then run this command again") from None
        yield
    finally:
        os.close(fd)


def _normalise_sources(sources: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Sources as absolute paths (``@`` kept for lists), so that a resumed run compares equal from
    any working directory."""
    out = []
    for s in map(os.fspath, sources):
        out.append("@" + str(Path(s[1:]).resolve()) if s.startswith("@") else str(Path(s).resolve()))
    return out


def read_manifest(path: str | os.PathLike[str]) -> IndexManifest:
    """``INDEX/manifest.json``, checked against the schema (``InputError`` if absent or damaged)."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"index '{root}' {'is not a directory' if root.exists() else 'does not exist'}",
                         "pass a directory written by `rsvlm-edge index build`")
    if not (root / MANIFEST).exists():
        if (root / PENDING).exists():
            raise InputError(f"the index '{root}' is not finished (an interrupted `index build`)",
                             "run the same `rsvlm-edge index build` command again to finish it")
        raise InputError(f"'{root}' is not an index (no {MANIFEST})", "pass a directory written by `rsvlm-edge index build`")
    return read_record(root / MANIFEST, IndexManifest, "index manifest")


# --- planning --------------------------------------------------------------------------------------

def _differences(pending: PendingPart, asked: dict[str, Any]) -> list[str]:
    return [name for name, value in asked.items() if getattr(pending, name) != value]


@dataclass
class _NewPlan:
    """Items of a new part, before anything is written."""

    plan: SourceTable
    unreadable: list[SkippedSource]
    already_indexed: int


def _plan(sources: Sequence[str | os.PathLike[str]], tiles: TileOptions, ref: ModelRef, skip: bool,
          exclude: set[str] = frozenset()) -> _NewPlan | None:
    """Expand the sources and plan their items (files in ``exclude`` left out). None: nothing new."""
    files, missing = expand_sources(sources, skip_missing=skip)
    new = [f for f in files if str(f) not in exclude]
    if not new:
        return None
    plan, bad = plan_items(new, tiles, ref.image_size, skip_errors=skip)
    if len(plan) == 0:
        raise InputError(f"nothing to embed: all {len(new)} sources were left out ({(missing + bad)[0].reason})",
                         "check the sources")
    return _NewPlan(plan, missing + bad, len(files) - len(new))


def _record(out: Path, command: str, part: int, sources: Sequence[str | os.PathLike[str]], tiles: TileOptions,
            shard_size: int, ref: ModelRef, new: _NewPlan) -> _Job:
    """Write the plan and ``build.json`` (before anything is embedded, so that a rerun resumes)."""
    plan_rel = f"{PLAN_DIR}/part-{part:03d}.npz"
    new.plan.save(out / plan_rel, "build plan")
    pending = PendingPart(command=command, part=part, sources=_normalise_sources(sources), options=tiles,
                          shard_size=shard_size, bundle_sha256=ref.bundle_sha256, plan=plan_rel,
                          plan_sha256=sha256_of(out / plan_rel), items=len(new.plan), unreadable=new.unreadable,
                          started=now())
    write_record(out / PENDING, pending, "build record")
    return _Job(pending, new.plan, already_indexed=new.already_indexed)


def _resume(out: Path, command: str, part: int, sources: Sequence[str | os.PathLike[str]], tiles: TileOptions,
            shard_size: int, ref: ModelRef, pending: PendingPart) -> _Job:
    """The recorded plan of an unfinished run, after checking that the same thing is asked."""
    asked = {"command": command, "part": part, "sources": _normalise_sources(sources), "options": tiles,
             "shard_size": shard_size, "bundle_sha256": ref.bundle_sha256}
    diff = _differences(pending, asked)
    if diff:
        raise InputError(f"'{out}' holds an unfinished `index {pending.command}` with other {', '.join(diff)} "
                         f"(its sources: {' '.join(pending.sources)})",
                         f"run that command again to finish it, or abandon it: rm '{out / PENDING}' and "
                         f"rm -r '{out / SHARD_DIR / f'part-{pending.part:03d}'}'")
    plan_path = out / pending.plan
    if not plan_path.is_file() or sha256_of(plan_path) != pending.plan_sha256:
        raise InputError(f"the plan of the unfinished build, '{plan_path}', is missing or changed",
                         f"abandon the unfinished run: rm '{out / PENDING}' and run the command again")
    return _Job(pending, SourceTable.load(plan_path, "build plan"))


# --- embedding -------------------------------------------------------------------------------------

@dataclass
class _RaySession:
    seconds: float = 0.0


@contextmanager
def _ray_session(embed: EmbedOptions) -> Iterator[_RaySession]:
    """Join (or start) the Ray cluster of ``embed.ray`` for the duration of a build, before anything
    is written; leave it afterwards if this process joined it."""
    session = _RaySession()
    if embed.ray is None:
        yield session
        return
    from . import ray_pipeline

    t0 = time.perf_counter()
    joined = ray_pipeline.connect(embed.ray)
    session.seconds = time.perf_counter() - t0
    try:
        yield session
    finally:
        if joined:
            import ray

            ray.shutdown()


def _embed(out: Path, job: _Job, ref: ModelRef, bundle: Bundle, embed: EmbedOptions,
           todo: dict[int, tuple[int, int]], reused: int, progress: Any) -> float:
    """Embed the items of the shards in ``todo`` (in this process, or on the Ray cluster this
    process has joined) and write those shards. Returns the seconds spent."""
    from ..images import max_pixels
    from ..progress import info

    p = job.pending
    batch = min(embed.batch_size or bundle.manifest.max_batch, bundle.manifest.max_batch)
    config = EmbedConfig(bundle=str(bundle.path), bundle_sha256=ref.bundle_sha256, image_size=ref.image_size,
                         embed_dim=ref.embed_dim, batch_size=batch, backend=embed.backend,
                         bands=tuple(p.options.bands) if p.options.bands else None, stretch=p.options.stretch,
                         max_nodata=p.options.max_nodata, max_pixels=max_pixels())

    def strict(item: int, reason: str) -> None:
        kept = reused + len(assembler.written)
        raise InputError(reason, "pass --on-error skip to leave unreadable images out (the "
                         f"{kept} shard{'s' * (kept != 1)} already written are kept; running the command again resumes)")

    assembler = ShardAssembler(out, p.part, p.plan_sha256, ref.embed_dim, todo, p.shard_size,
                               on_unreadable=None if embed.on_error == "skip" else strict)
    ranges = [todo[s] for s in sorted(todo)]
    bar = _Bar(progress, "embedding", sum(b - a for a, b in ranges))
    t0 = time.perf_counter()
    if embed.ray is None:
        from ..models.clip.runtime import ClipRuntime

        runtime = ClipRuntime(bundle, backend=embed.backend, max_batch=batch)
        batches = embed_in_process(job.plan, ranges, config, ClipEmbedder(config, runtime))
    else:
        from . import ray_pipeline

        batches = ray_pipeline.embed_with_ray(job.plan, ranges, config, embed.workers, embed.cpus_per_worker,
                                              embed.gpus_per_worker)
    try:
        for out_batch in batches:
            bar.advance(assembler.add(out_batch))
        elapsed = time.perf_counter() - t0
    except KeyboardInterrupt:
        kept = reused + len(assembler.written)
        info(f"{kept} of {len(shard_ranges(p.items, p.shard_size))} shards are written in '{out / SHARD_DIR}'; "
             "run the same command again to resume")
        raise
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    if not assembler.done:
        raise RuntimeError(f"the pipeline ended with shards {sorted(assembler.pending)} incomplete")
    return elapsed


# --- finishing -------------------------------------------------------------------------------------

def _part_blocks(out: Path, parts: Sequence[Part], dim: int) -> Callable[[], Iterator[np.ndarray]]:
    """A re-iterable source of the embeddings of ``parts``, shard by shard, in id order."""
    def blocks() -> Iterator[np.ndarray]:
        for part in parts:
            for shard in iter_part_shards(out, part.part, shard_ranges(part.items, part.shard_size),
                                          part.plan_sha256, dim):
                if len(shard.items):
                    yield shard.embeddings
    return blocks


def _part_record(out: Path, job: _Job, dim: int) -> tuple[Part, np.ndarray]:
    """The ``Part`` of the finished embedding and the plan rows it embedded (ascending)."""
    p = job.pending
    kept, nodata = [], 0
    unreadable = list(p.unreadable)
    for shard in iter_part_shards(out, p.part, shard_ranges(p.items, p.shard_size), p.plan_sha256, dim):
        kept.append(shard.items)
        nodata += len(shard.nodata_items)
        for item, reason in zip(shard.unreadable_items.tolist(), shard.unreadable_reasons.tolist()):
            ref = job.plan.ref(item)
            unreadable.append(SkippedSource(path=ref.path, window=list(ref.window) if ref.window else None, reason=reason))
    rows = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    names = [shard_name(p.part, s) for s in range(len(shard_ranges(p.items, p.shard_size)))]
    return Part(part=p.part, command=p.command, sources=p.sources, options=p.options, shard_size=p.shard_size,
                plan=p.plan, plan_sha256=p.plan_sha256, shards=names, items=p.items, embedded=len(rows),
                nodata_tiles=nodata, unreadable=unreadable), rows


def _finalize(out: Path, job: _Job, ref: ModelRef, manifest: IndexManifest | None, options: IndexOptions,
              report: BuildReport, progress: Any) -> IndexManifest:
    """Build the FAISS index and the table of the new generation, write them, then commit the manifest."""
    dim = ref.embed_dim
    part, rows = _part_record(out, job, dim)
    if manifest is None and len(rows) == 0:
        raise InputError(f"none of the {part.items} items could be embedded ({len(part.unreadable)} unreadable, "
                         f"{part.nodata_tiles} nodata tiles)",
                         f"check the sources (run without --on-error skip to see the first error); rm -r '{out}' to start over")
    parts = (list(manifest.parts) if manifest else []) + [part]
    count = (manifest.count if manifest else 0) + len(rows)
    new_rows = job.plan.take(rows)
    t0 = time.perf_counter()
    bar = _Bar(progress, "indexing", count)
    if manifest is None:
        spec = faiss_index.choose_spec(count, dim, options.index_type, options.exact_max, options.nlist,
                                       options.nprobe, options.k_factor)
        index, trained = faiss_index.build(spec, dim, count, _part_blocks(out, parts, dim), bar.advance)
        spec = spec.model_copy(update={"trained_on": trained})
        table = new_rows
    else:
        old = manifest.index
        table = SourceTable.load(out / manifest.table_file, "source table").concat(new_rows)
        if old.requested == "auto" and old.type == "flat" and count >= old.exact_max:
            spec = faiss_index.choose_spec(count, dim, "auto", old.exact_max)
            index, trained = faiss_index.build(spec, dim, count, _part_blocks(out, parts, dim), bar.advance)
            spec = spec.model_copy(update={"trained_on": trained})
            report.rebuilt = True
        else:
            spec = old
            index = faiss_index.read(out / manifest.index_file, manifest.count, dim)
            bar.advance(manifest.count)
            for block in _part_blocks(out, [part], dim)():
                index.add(np.ascontiguousarray(block))
                bar.advance(len(block))
    if len(table) != count:
        raise RuntimeError(f"table of {len(table)} rows for {count} vectors")
    generation = manifest.generation + 1 if manifest else 1
    index_rel, table_rel = f"index-{generation:06d}.faiss", f"table-{generation:06d}.npz"
    faiss_index.write(index, out / index_rel)
    table.save(out / table_rel, "source table")
    files = dict(manifest.files) if manifest else {}
    if manifest is not None:
        files.pop(manifest.index_file, None)
        files.pop(manifest.table_file, None)
    for rel in [index_rel, table_rel, part.plan, *part.shards]:
        files[rel] = FileEntry(size=(out / rel).stat().st_size, sha256=sha256_of(out / rel))
    committed = IndexManifest(created=manifest.created if manifest else now(), updated=now(), model=ref, count=count,
                              index=spec, generation=generation, index_file=index_rel, table_file=table_rel,
                              parts=parts, files=files)
    write_record(out / MANIFEST, committed, "index manifest")  # the commit point
    (out / PENDING).unlink(missing_ok=True)
    _remove_old_generations(out, committed)
    report.index_seconds = time.perf_counter() - t0
    return committed


def _remove_old_generations(out: Path, manifest: IndexManifest) -> None:
    for p in list(out.glob("index-*.faiss")) + list(out.glob("table-*.npz")):
        if p.name not in (manifest.index_file, manifest.table_file):
            p.unlink(missing_ok=True)


def _run(out: Path, job: _Job, ref: ModelRef, bundle: Bundle, manifest: IndexManifest | None, embed: EmbedOptions,
         options: IndexOptions, progress: Any) -> BuildReport:
    p = job.pending
    report = BuildReport(out, p.command, p.part, items=p.items, already_indexed=job.already_indexed)
    todo: dict[int, tuple[int, int]] = {}
    for s, (a, b) in enumerate(shard_ranges(p.items, p.shard_size)):
        path = out / shard_name(p.part, s)
        if path.exists():
            read_shard(path, p.part, s, a, b, p.plan_sha256, ref.embed_dim)  # a corrupt shard is refused here
            report.shards_reused += 1
            report.items_reused += b - a
        else:
            todo[s] = (a, b)
    if todo:
        report.embed_seconds = _embed(out, job, ref, bundle, embed, todo, report.shards_reused, progress)
    report.shards_written = len(todo)
    committed = _finalize(out, job, ref, manifest, options, report, progress)
    last = committed.parts[-1]
    report.embedded, report.nodata_tiles, report.unreadable = last.embedded, last.nodata_tiles, last.unreadable
    report.count, report.index = committed.count, committed.index
    return report


# --- the two commands ------------------------------------------------------------------------------

def _check_embed_options(embed: EmbedOptions) -> None:
    if embed.on_error not in ("strict", "skip"):
        raise InputError(f"unknown on_error '{embed.on_error}'", "use strict or skip")
    for name, value in (("--batch-size", embed.batch_size), ("--workers", embed.workers)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be >= 1 (got {value})", f"e.g. {name} 8, or leave it out")
    if not embed.cpus_per_worker > 0 or (embed.gpus_per_worker is not None and embed.gpus_per_worker < 0):
        raise InputError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0", "e.g. --cpus-per-worker 1")


def _check_index_options(options: IndexOptions) -> None:
    if options.index_type not in ("auto", "flat", "ivfpq"):
        raise InputError(f"unknown index type '{options.index_type}'", "choose auto, flat or ivfpq")
    for name, value in (("--exact-max", options.exact_max), ("--nlist", options.nlist), ("--nprobe", options.nprobe),
                        ("k_factor", options.k_factor)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be >= 1 (got {value})", f"e.g. {name} 16, or leave it out")


def build_index(bundle: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                *, tiles: TileOptions | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                embed: EmbedOptions | None = None, index: IndexOptions | None = None, progress: Any = None) -> BuildReport:
    """Build an index of ``sources`` with a CLIP ``bundle`` into the directory ``out``, or resume the
    unfinished build there (see the module docstring). ``progress``: a rich ``Progress`` or None."""
    out = Path(out)
    tiles, embed, index = tiles or TileOptions(), embed or EmbedOptions(), index or IndexOptions()
    _check_embed_options(embed)
    _check_index_options(index)
    if shard_size < 1:
        raise InputError(f"--shard-size must be >= 1 (got {shard_size})", "e.g. --shard-size 4096")
    state = _is_index_dir(out)
    if state == "index":
        raise InputError(f"'{out}' already holds an index",
                         f"append sources with `rsvlm-edge index add {out} SOURCES...`, or choose another -o")
    opened = open_clip_bundle(bundle)
    ref = model_ref(opened)
    new = _plan(sources, tiles, ref, embed.on_error == "skip") if state == "new" else None  # before any write
    with _ray_session(embed) as ray_session, _locked(out):
        if new is not None:
            job = _record(out, "build", 0, sources, tiles, shard_size, ref, new)
        else:
            pending = read_record(out / PENDING, PendingPart, "build record")
            job = _resume(out, "build", 0, sources, tiles, shard_size, ref, pending)
        report = _run(out, job, ref, opened, None, embed, index, progress)
    report.ray_start_seconds = ray_session.seconds
    return report


def add_to_index(path: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]], *,
                 bundle: str | os.PathLike[str] | None = None, tiles: TileOptions | None = None,
                 shard_size: int | None = None, embed: EmbedOptions | None = None, progress: Any = None) -> BuildReport:
    """Append ``sources`` to the index at ``path`` (files already indexed are left out), or resume
    an unfinished add. Tiling options and shard size default to the first build's. The bundle
    (default: the one recorded at build time) must be the model the index was built with."""
    out = Path(path)
    embed = embed or EmbedOptions()
    _check_embed_options(embed)
    manifest = read_manifest(out)
    opened = index_bundle(manifest.model, bundle)
    ref = model_ref(opened)
    tiles = tiles or manifest.parts[0].options
    shard_size = shard_size or manifest.parts[-1].shard_size
    if shard_size < 1:
        raise InputError(f"--shard-size must be >= 1 (got {shard_size})", "e.g. --shard-size 4096")
    with _ray_session(embed) as ray_session, _locked(out):
        pending = read_record(out / PENDING, PendingPart, "build record") if (out / PENDING).exists() else None
        if pending is not None and pending.part < len(manifest.parts):
            (out / PENDING).unlink()  # committed before a crash removed it
            pending = None
        part = len(manifest.parts)
        if pending is not None:
            job = _resume(out, "add", part, sources, tiles, shard_size, ref, pending)
        else:
            indexed = SourceTable.load(out / manifest.table_file, "source table").indexed_paths()
            new = _plan(sources, tiles, ref, embed.on_error == "skip", exclude=indexed)
            if new is None:
                return BuildReport(out, "add", None, already_indexed=len(expand_sources(sources, True)[0]),
                                   count=manifest.count, index=manifest.index)
            job = _record(out, "add", part, sources, tiles, shard_size, ref, new)
        report = _run(out, job, ref, opened, manifest, embed, IndexOptions(exact_max=manifest.index.exact_max), progress)
    report.ray_start_seconds = ray_session.seconds
    return report


__all__ = ["BuildReport", "DEFAULT_SHARD_SIZE", "EmbedOptions", "IndexOptions", "add_to_index", "build_index", "read_manifest"]
