"""Archive indexes: embed image folders, file lists and tiled GeoTIFF scenes with a CLIP bundle (in this
process or on a Ray cluster), stream the embeddings to resumable shards, index them with FAISS, and
search them by text, image or embedding.

    import rsvlm_edge.index as rx
    rx.build("remoteclip-b32.rsvlm", ["archive/", "@more.txt", "S2_scene.tif"], "archive.index")
    hits = rx.open("archive.index").search("a harbor with container ships", k=20)
    hits[0].score, hits[0].source.path, hits[0].source.window, hits[0].footprint()

faiss and ray are imported only when an index is built, opened or embedded with Ray
(``pip install 'rsvlm-edge[index]'``). Layout of an index directory: ``manifest.json`` (``manifest``),
``index-G.faiss`` and ``table-G.npz`` (generation G), ``plans/``, ``shards/`` and, while a build or an
add is unfinished, ``build.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .builder import BuildReport, EmbedOptions, IndexOptions
    from .manifest import TileOptions
    from .search import ArchiveIndex


def open(path: str | os.PathLike[str], bundle: str | os.PathLike[str] | None = None, backend: str = "auto",
         verify: bool = False) -> ArchiveIndex:
    """Open an index for searching (``search.open_index``): ``.search(query, k)``, ``.info()``."""
    from .search import open_index

    return open_index(path, bundle=bundle, backend=backend, verify=verify)


def build(bundle: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
          *, tiles: TileOptions | None = None, shard_size: int | None = None, embed: EmbedOptions | None = None,
          index: IndexOptions | None = None, progress: Any = None) -> BuildReport:
    """Build (or resume building) an index of ``sources`` in ``out`` (``builder.build_index``)."""
    from .builder import DEFAULT_SHARD_SIZE, build_index

    return build_index(bundle, sources, out, tiles=tiles, shard_size=shard_size or DEFAULT_SHARD_SIZE, embed=embed,
                       index=index, progress=progress)


def add(path: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]], *,
        bundle: str | os.PathLike[str] | None = None, tiles: TileOptions | None = None,
        shard_size: int | None = None, embed: EmbedOptions | None = None, progress: Any = None) -> BuildReport:
    """Append ``sources`` to the index at ``path`` (``builder.add_to_index``)."""
    from .builder import add_to_index

    return add_to_index(path, sources, bundle=bundle, tiles=tiles, shard_size=shard_size, embed=embed,
                        progress=progress)


def __getattr__(name: str):
    if name in ("EmbedOptions", "IndexOptions", "BuildReport"):
        from . import builder as _build

        return getattr(_build, name)
    if name == "TileOptions":
        from .manifest import TileOptions

        return TileOptions
    if name in ("ArchiveIndex", "Hit", "hits_geojson"):
        from . import search as _search

        return getattr(_search, name)
    raise AttributeError(name)


__all__ = ["open", "build", "add", "ArchiveIndex", "BuildReport", "EmbedOptions", "Hit", "IndexOptions", "TileOptions",
           "hits_geojson"]
