"""What an index directory records about itself (pydantic models, read and written atomically).

``INDEX/manifest.json`` (``IndexManifest``) describes a finished index: the model it was built with
(bundle name and content digest, so that queries with another model are refused), the FAISS index
type and its parameters, the generation files it points to (FAISS index, ids -> source table), each
part (one ``index build`` or ``index add``: its sources, tiling options, shards, skipped files) and
every file with its size and sha256. Renaming a new manifest into place is the commit point of a
build or an add: until then the previous manifest (and the files it names) stays valid.

``INDEX/build.json`` (``PendingPart``) exists while a build or an add is unfinished: what was asked
(sources, options, bundle) and the plan of items to embed, so that running the same command again
resumes it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import __version__
from ..atomic import atomic_path
from ..bundle import Bundle
from ..errors import BundleError, InputError

FORMAT_NAME = "rsvlm-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PENDING = "build.json"
MAX_RECORD_BYTES = 64 << 20  # the unreadable-file lists of a large archive can be long
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

Count = Annotated[int, Field(strict=True, ge=0)]
Positive = Annotated[int, Field(strict=True, ge=1)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Record):
    size: Count
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _HEX64.match(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v


class ModelRef(_Record):
    """The CLIP bundle an index was built with. ``bundle_sha256`` is ``bundle_digest``: it changes
    whenever anything that shapes an embedding changes, and nothing else does."""

    name: str
    architecture: str
    bundle_sha256: str
    bundle_path: str
    embed_dim: Positive
    image_size: Positive


class TileOptions(_Record):
    """How GeoTIFF scenes are cut into tiles (as ``classify-scene`` does): ``tile``/``stride`` in
    scene pixels (None: the model's image size / the tile), 1-based ``bands`` (None: 1,2,3 or band 1
    repeated), ``stretch`` percentiles (None: values already in 0..255), ``max_nodata`` fraction."""

    tile: Positive | None = None
    stride: Positive | None = None
    bands: list[Positive] | None = None
    stretch: tuple[float, float] | None = (2.0, 98.0)
    max_nodata: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5


class SkippedSource(_Record):
    """An image or tile left out (``--on-error skip``) and why. ``window`` is col_off, row_off,
    width, height for a scene tile, None for a whole image."""

    path: str
    window: list[int] | None = None
    reason: str


class FaissSpec(_Record):
    """The FAISS index: ``flat`` (IndexFlatIP, exact) or ``ivfpq`` (IVF with PQ codes, candidates
    re-ranked with 8-bit scalar-quantised vectors: ``IVF{nlist},PQ{pq_m}x{pq_bits},Refine(SQ8)``).
    Scores are inner products of L2-normalised embeddings (cosines). ``requested`` is what the user
    asked for (``auto`` re-chooses the type when ``index add`` crosses ``exact_max``)."""

    type: Literal["flat", "ivfpq"]
    requested: Literal["auto", "flat", "ivfpq"]
    factory: str
    metric: Literal["inner_product"] = "inner_product"
    exact_max: Positive
    nlist: Positive | None = None
    pq_m: Positive | None = None
    pq_bits: Positive | None = None
    nprobe: Positive | None = None
    k_factor: Positive | None = None
    trained_on: Count = 0


class Part(_Record):
    """One ``index build`` or ``index add``: ``items`` planned (images + tiles), ``embedded`` of
    them in the index, ``nodata_tiles`` left out for nodata, ``unreadable`` left out with a reason."""

    part: Count
    command: Literal["build", "add"]
    sources: list[str]
    options: TileOptions
    shard_size: Positive
    plan: str
    plan_sha256: str
    shards: list[str]
    items: Count
    embedded: Count
    nodata_tiles: Count = 0
    unreadable: list[SkippedSource] = Field(default_factory=list)


class IndexManifest(_Record):
    """``INDEX/manifest.json``: see the module docstring."""

    format: Literal["rsvlm-index"] = FORMAT_NAME
    format_version: Literal[1] = FORMAT_VERSION
    created: str
    updated: str
    created_by: str = f"rsvlm-edge {__version__}"
    model: ModelRef
    count: Count
    index: FaissSpec
    generation: Positive
    index_file: str
    table_file: str
    parts: list[Part]
    files: dict[str, FileEntry]

    @field_validator("files")
    @classmethod
    def _names(cls, v: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in v:
            check_relpath(name)
        return v


class PendingPart(_Record):
    """``INDEX/build.json``: an unfinished build or add (see the module docstring). ``plan`` is the
    file holding the items to embed (a ``SourceTable``), ``plan_sha256`` its digest, which every
    shard of this part records too."""

    command: Literal["build", "add"]
    part: Count
    sources: list[str]
    options: TileOptions
    shard_size: Positive
    bundle_sha256: str
    plan: str
    plan_sha256: str
    items: Count
    unreadable: list[SkippedSource] = Field(default_factory=list)
    started: str


def check_relpath(name: str) -> str:
    """A file name inside the index directory: relative, POSIX, without '..' or empty components."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"'{name}' is not a relative path inside the index")
    return name


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def bundle_digest(bundle: Bundle) -> str:
    """Content digest of a CLIP bundle: sha256 of its files' sha256s, model config and preprocessing
    (canonical JSON). Equal for two exports of the same weights with the same settings (unlike the
    manifest file, which records when it was written); different for any change of weights,
    tokenizer, precision or preprocessing."""
    m = bundle.manifest
    record = {"files": {name: entry.sha256 for name, entry in sorted(m.files.items())},
              "model": m.model.model_dump(mode="json"), "preprocess": m.preprocess.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def model_ref(bundle: Bundle) -> ModelRef:
    """The ``ModelRef`` of a (CLIP) bundle."""
    m = bundle.manifest
    return ModelRef(name=m.name, architecture=str(getattr(m.model, "name", m.architecture)),
                    bundle_sha256=bundle_digest(bundle), bundle_path=str(Path(bundle.path).resolve()),
                    embed_dim=int(m.model.embed_dim), image_size=int(m.preprocess.image_size))


R = TypeVar("R", bound=BaseModel)


def read_record(path: Path, kind: type[R], what: str) -> R:
    """Parse a JSON record; a missing, oversized, truncated or invalid file is an ``InputError``
    naming it."""
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist", "check the index path")
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise InputError(f"{what} '{path}' is larger than {MAX_RECORD_BYTES >> 20} MiB", "it is not an index record")
    fix = "the file is damaged; rebuild the index with `rsvlm-edge index build` into a new directory"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"{what} '{path}' is not valid JSON ({e.__class__.__name__}; truncated?)", fix) from None
    if kind is IndexManifest and isinstance(data, dict):
        if data.get("format") != FORMAT_NAME:
            raise InputError(f"'{path}' is not an rsvlm-edge index manifest (format={data.get('format')!r})",
                             "pass a directory written by `rsvlm-edge index build`")
        if data.get("format_version") != FORMAT_VERSION:
            raise InputError(f"index '{path.parent}' has format version {data.get('format_version')!r}; this "
                             f"rsvlm-edge reads version {FORMAT_VERSION}", "use the rsvlm-edge version that built it")
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise InputError(f"{what} '{path}' is invalid: {where}: {first['msg']}", fix) from None


def write_record(path: Path, record: BaseModel, what: str) -> None:
    """Write a record as indented JSON, atomically (temp file, fsync, rename)."""
    with atomic_path(path, what=what) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(record.model_dump_json(indent=1))
        f.write("\n")


def open_clip_bundle(path: str | Path) -> Bundle:
    """Open and verify a bundle (every file's sha256) and make sure it is a CLIP bundle."""
    from ..bundle import open_bundle

    bundle = open_bundle(path)
    if bundle.architecture != "clip":
        raise InputError(f"'{path}' is a {bundle.architecture} bundle; archive indexes need a CLIP bundle",
                         "export a CLIP with `rsvlm-edge export clip`, or use builtin models via their cached bundle")
    return bundle


def check_model(expected: ModelRef, bundle: Bundle, path: str | Path) -> None:
    """Refuse a bundle other than the one an index was built with (by content digest)."""
    digest = bundle_digest(bundle)
    if digest != expected.bundle_sha256:
        got = model_ref(bundle)
        raise BundleError(f"'{path}' is model '{got.name}' ({got.architecture}, bundle sha256 {digest[:12]}); the index "
                          f"was built with '{expected.name}' ({expected.architecture}, bundle sha256 "
                          f"{expected.bundle_sha256[:12]})",
                          "query and extend the index with the bundle it was built with, or build a new index "
                          "with this bundle")


def index_bundle(expected: ModelRef, bundle: str | Path | None = None) -> Bundle:
    """The bundle to query or extend an index with: ``bundle`` or the path recorded at build time,
    opened, verified and checked to be the model the index was built with."""
    path = bundle if bundle is not None else expected.bundle_path
    try:
        opened = open_clip_bundle(path)
    except BundleError as e:
        if bundle is not None:
            raise
        raise BundleError(f"the bundle this index was built with cannot be opened: {e.message}",
                          "pass its current location with --bundle PATH (the same model)") from None
    check_model(expected, opened, path)
    return opened
