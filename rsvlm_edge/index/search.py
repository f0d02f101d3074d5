"""Querying an index: ``ArchiveIndex`` (``rsvlm_edge.index.open``) ranks the archive's images and
tiles against a text, an image or an embedding, and gives each hit its source and, for scene
tiles, its footprint (GeoJSON, EPSG:4326)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import sha256_of
from ..errors import InputError
from . import faiss_index
from .builder import read_manifest
from .manifest import PENDING, IndexManifest, index_bundle
from .sources import SourceRef, SourceTable


@dataclass(frozen=True)
class Hit:
    """One result: its rank (1 = best), id (row of the index), cosine score and source."""

    rank: int
    id: int
    score: float
    source: SourceRef

    def to_json(self) -> dict[str, Any]:
        s = self.source
        return {"rank": self.rank, "id": self.id, "score": self.score, "path": s.path,
                "window": None if s.window is None else dict(zip(("col_off", "row_off", "width", "height"), s.window)),
                "bounds": None if s.bounds is None else list(s.bounds), "crs": s.crs}

    def footprint(self) -> dict[str, Any] | None:
        """GeoJSON Polygon of a tile's corners in its scene's CRS (counter-clockwise), or None for a
        whole image."""
        s = self.source
        if s.window is None or s.transform is None:
            return None
        a, b, c, d, e, f = s.transform  # pixel (x=col, y=row) -> scene CRS, as geo.SceneResult.tile_polygon
        x0, y0, w, h = s.window
        ring = [(a * x + b * y + c, d * x + e * y + f) for x, y in ((x0, y0 + h), (x0 + w, y0 + h), (x0 + w, y0), (x0, y0))]
        area = sum(xa * yb - xb * ya for (xa, ya), (xb, yb) in zip(ring, ring[1:] + ring[:1]))
        if area < 0:
            ring.reverse()
        return {"type": "Polygon", "coordinates": [[list(p) for p in ring + ring[:1]]]}


def _is_image_path(query: str) -> bool:
    from ..images import IMAGE_SUFFIXES

    return Path(query).suffix.lower() in IMAGE_SUFFIXES and Path(query).is_file()


class ArchiveIndex:
    """An opened index (see ``open``). The CLIP runtime is loaded on the first text or image query,
    from the bundle recorded at build time or the one given, after checking it is the same model."""

    def __init__(self, path: Path, manifest: IndexManifest, table: SourceTable, index: Any,
                 bundle: str | os.PathLike[str] | None = None, backend: str = "auto") -> None:
        self.path, self.manifest, self.table, self._index = path, manifest, table, index
        self._bundle_arg, self._backend = bundle, backend
        self._runtime = None

    def __len__(self) -> int:
        return self.manifest.count

    @property
    def count(self) -> int:
        return self.manifest.count

    @property
    def runtime(self):
        """The ``ClipRuntime`` of the index's model (loaded once, model checked)."""
        if self._runtime is None:
            from ..models.clip.runtime import ClipRuntime

            bundle = index_bundle(self.manifest.model, self._bundle_arg)
            self._runtime = ClipRuntime(bundle, backend=self._backend)
        return self._runtime

    def embed_query(self, query: Any) -> np.ndarray:
        """(E,) normalised embedding of a query: a text, an image (a path of an existing image file,
        a PIL image or a uint8 HxWx3 array) or an embedding ((E,) array, normalised here)."""
        dim = self.manifest.model.embed_dim
        if isinstance(query, np.ndarray) and query.ndim == 1:
            if query.shape[0] != dim or not np.isfinite(query).all():
                raise InputError(f"query embedding has shape {query.shape}, expected ({dim},) finite values",
                                 "pass an embedding made with the index's model")
            q = query.astype(np.float32)
            return q / max(float(np.linalg.norm(q)), 1e-12)
        if isinstance(query, str) and not _is_image_path(query):
            if not query.strip():
                raise InputError("the text query is empty", 'pass a description, e.g. "a harbor with container ships"')
            return self.runtime.encode_texts([query])[0]
        return self.runtime.encode_images([query])[0]

    def search(self, query: Any, k: int = 20, nprobe: int | None = None) -> list[Hit]:
        """The ``k`` best hits for one query (see ``embed_query``), best first. ``nprobe`` overrides
        the inverted lists scanned by an ``ivfpq`` index."""
        return self.search_embeddings(self.embed_query(query)[None], k, nprobe)[0]

    def search_embeddings(self, queries: np.ndarray, k: int = 20, nprobe: int | None = None) -> list[list[Hit]]:
        """Hits for each row of ``queries`` (Q, E) (L2-normalised embeddings)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer (got {k!r})", "e.g. -k 20")
        if nprobe is not None and nprobe < 1:
            raise InputError(f"nprobe must be >= 1 (got {nprobe})", "e.g. --nprobe 16, or leave it out")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.manifest.model.embed_dim:
            raise InputError(f"queries have shape {queries.shape}, expected (Q, {self.manifest.model.embed_dim})")
        scores, ids = faiss_index.search(self._index, self.manifest.index, queries, min(int(k), self.count), nprobe)
        return [[Hit(r + 1, int(i), float(s), self.table.ref(int(i)))
                 for r, (s, i) in enumerate(zip(row_s, row_i)) if i >= 0] for row_s, row_i in zip(scores, ids)]

    def info(self) -> dict[str, Any]:
        """Size, model, index type and parameters, parts, files."""
        m = self.manifest
        sources = len(np.unique(self.table.source)) if len(self.table) else 0
        tiles = int((self.table.window[:, 0] >= 0).sum())
        return {
            "path": str(self.path), "count": m.count, "sources": sources, "tiles": tiles, "images": m.count - tiles,
            "model": m.model.model_dump(), "index": m.index.model_dump(exclude_none=True),
            "generation": m.generation, "created": m.created, "updated": m.updated, "created_by": m.created_by,
            "parts": [{"part": p.part, "command": p.command, "sources": p.sources, "items": p.items,
                       "embedded": p.embedded, "nodata_tiles": p.nodata_tiles, "unreadable": len(p.unreadable),
                       "shards": len(p.shards)} for p in m.parts],
            "bytes": sum(f.size for f in m.files.values()),
            "unfinished_add": (self.path / PENDING).exists(),
        }


def hits_geojson(hits: Sequence[Hit], query: str | None = None) -> dict[str, Any]:
    """FeatureCollection of the footprints of the hits that are scene tiles with a CRS, reprojected
    to EPSG:4326 (RFC 7946); properties: rank, id, score, path, window, bounds and source_crs."""
    from ..geo import require_rasterio

    require_rasterio()
    from rasterio.warp import transform_geom

    features, left_out = [], 0
    for h in hits:
        geom = h.footprint()
        if geom is None or not h.source.crs:
            left_out += 1
            continue
        props = h.to_json()
        props["source_crs"] = props.pop("crs")
        features.append({"type": "Feature", "geometry": transform_geom(h.source.crs, "EPSG:4326", geom),
                         "properties": props})
    return {"type": "FeatureCollection",
            "properties": {"query": query, "hits": len(hits), "without_footprint": left_out,
                           "note": "bounds are in source_crs; geometries are reprojected to EPSG:4326 (RFC 7946); "
                                   "hits that are whole images or scenes without a CRS have no footprint"},
            "features": features}


def open_index(path: str | os.PathLike[str], bundle: str | os.PathLike[str] | None = None, backend: str = "auto",
               verify: bool = False) -> ArchiveIndex:
    """Open the index at ``path``: manifest checked, FAISS index and table read and checked against
    it (sizes always, every file's sha256 when ``verify``). ``bundle`` overrides the bundle path
    recorded at build time for text and image queries (it must be the same model)."""
    root = Path(path)
    m = read_manifest(root)
    fix = "the index is damaged; rebuild it with `rsvlm-edge index build` into a new directory"
    for rel in ([m.index_file, m.table_file] + (list(m.files) if verify else [])):
        entry = m.files.get(rel)
        f = root / rel
        if entry is None:
            raise InputError(f"index manifest '{root / 'manifest.json'}' does not list '{rel}'", fix)
        if not f.is_file():
            raise InputError(f"index file '{f}' is missing", fix)
        if f.stat().st_size != entry.size:
            raise InputError(f"index file '{f}' has {f.stat().st_size} bytes, the manifest says {entry.size} (truncated?)", fix)
        if verify and sha256_of(f) != entry.sha256:
            raise InputError(f"index file '{f}' fails its sha256 check (changed or corrupt)", fix)
    table = SourceTable.load(root / m.table_file)
    if len(table) != m.count:
        raise InputError(f"source table '{root / m.table_file}' has {len(table)} rows, the manifest says {m.count}", fix)
    index = faiss_index.read(root / m.index_file, m.count, m.model.embed_dim)
    return ArchiveIndex(root, m, table, index, bundle, backend)
