"""Archive commands: ``index build``, ``index add``, ``index info`` and ``search``.

faiss and ray are imported only when these commands run (``pip install 'rsvlm-edge[index]'``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .common import OnError

BUNDLE_HELP = "CLIP bundle (NAME.rsvlm), or builtin:remoteclip-vit-b-32 (random weights: timing only)"
SOURCES_HELP = "image files, folders (recursed), @list.txt / list.txt files (one path per line) and GeoTIFF scenes (tiled)"
RAY_HELP = ("embed on Ray: 'local' (start a cluster on this machine), 'auto' (the cluster `ray start` runs here, or "
            "RAY_ADDRESS), HOST:PORT or ray://HOST:10001; without --ray the embedding runs in this process")

ON_ERROR_HELP = ("strict: stop at the first unreadable image or tile (shards already written are kept: run the command "
                 "again to resume); skip: leave it out and record it with the reason in the manifest")

index_app = typer.Typer(no_args_is_help=True, help="Build, extend and describe archive indexes (FAISS) of CLIP embeddings.")


def _bundle_path(bundle: str) -> Path:
    from ..builtin import BUILTIN_CLIP, builtin_clip_bundle, builtin_name, is_builtin

    if not is_builtin(bundle):
        return Path(bundle)
    name = builtin_name(bundle)
    if name not in BUILTIN_CLIP:
        raise InputError(f"'{bundle}' is not a CLIP model", "use " + " or ".join(f"builtin:{n}" for n in BUILTIN_CLIP))
    return builtin_clip_bundle(name, "fp32")


def _tile_options(tile, stride, bands, stretch, max_nodata, base=None):
    """``TileOptions`` from the command line; options left out keep ``base``'s values (index add)."""
    from ..index.manifest import TileOptions
    from .geo import _parse_bands, _parse_stretch

    for name, value in (("--tile", tile), ("--stride", stride)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be >= 1 pixel (got {value})", f"e.g. {name} 224, or leave it out")
    if max_nodata is not None and not (math.isfinite(max_nodata) and 0 <= max_nodata <= 1):
        raise InputError(f"--max-nodata must be a fraction in 0..1 (got {max_nodata})", "e.g. --max-nodata 0.5")
    given = {"tile": tile, "stride": stride, "max_nodata": max_nodata}
    if bands is not None:
        given["bands"] = list(_parse_bands(bands))
    if stretch is not None:
        given["stretch"] = _parse_stretch(stretch)
    given = {k: v for k, v in given.items() if v is not None}
    merged = {**(base.model_dump() if base is not None else {}), **given}
    if merged.get("tile") and merged.get("stride") and merged["stride"] > merged["tile"]:
        raise InputError(f"--stride {merged['stride']} is larger than --tile {merged['tile']}",
                         "a larger stride would leave gaps between tiles")
    return TileOptions(**merged)


def _embed_options(backend, batch_size, ray, workers, cpus_per_worker, gpus_per_worker, on_error):
    from ..index.builder import EmbedOptions

    return EmbedOptions(backend=backend, batch_size=batch_size, ray=ray, workers=workers,
                        cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, on_error=on_error.value)


def _report(report) -> None:
    from ..progress import info, warn
    from .common import shown

    where = shown(report.path)
    if report.part is None:
        info(f"nothing to add: all {report.already_indexed} files are already in {where} ({report.count} embeddings)")
        return
    if report.shards_reused:
        info(f"resumed: {report.shards_reused} shard{'s' * (report.shards_reused != 1)} from the interrupted run "
             f"reused, {report.shards_written} embedded now")
    rate = f", {report.items_per_s:.1f} items/s" if report.items_per_s else ""
    rate += f", after {report.ray_start_seconds:.1f} s joining Ray" if report.ray_start_seconds else ""
    spec = report.index
    params = ", ".join(f"{k} {v}" for k, v in spec.model_dump(exclude_none=True).items()
                       if k in ("nlist", "pq_m", "nprobe", "k_factor", "trained_on") and v)
    info(f"{'indexed' if report.command == 'build' else 'added'} {report.embedded} of {report.items} items "
         f"(embedding {report.embed_seconds:.1f} s{rate}; index {report.index_seconds:.1f} s): {where} now holds "
         f"{report.count} embeddings, {spec.type} index ({spec.factory}{'; ' + params if params else ''})"
         f"{'; rebuilt: the archive crossed ' + str(spec.exact_max) + ' embeddings' if report.rebuilt else ''}")
    if report.already_indexed:
        info(f"{report.already_indexed} files were already in the index and were left out")
    if report.nodata_tiles:
        warn(f"{report.nodata_tiles} scene tiles left out: nodata fraction above --max-nodata")
    if report.unreadable:
        warn(f"{len(report.unreadable)} items skipped (could not be read); the list and reasons are in "
             f"{where}/manifest.json (`rsvlm-edge index info {where} --json`)")
        for s in report.unreadable[:5]:
            warn(f"skipped {shown(s.path)}{'' if s.window is None else ' window ' + str(s.window)}: {shown(s.reason)}")
        if len(report.unreadable) > 5:
            warn(f"... and {len(report.unreadable) - 5} more")


def build_cmd(
    bundle: Annotated[str, typer.Argument(help=BUNDLE_HELP)],
    sources: Annotated[list[Path], typer.Argument(help=SOURCES_HELP)],
    output: Annotated[Path, typer.Option("-o", "--output", help="index directory to write (new, empty, or an unfinished build to resume)")],
    tile: Annotated[Optional[int], typer.Option(help="scene tile side in pixels (default: the bundle's image size)")] = None,
    stride: Annotated[Optional[int], typer.Option(help="step between scene tiles in pixels (default: the tile)")] = None,
    bands: Annotated[Optional[str], typer.Option(help="1-based scene bands as R,G,B, e.g. 4,3,2 (default: 1,2,3, or band 1 repeated)")] = None,
    stretch: Annotated[str, typer.Option(help="LOW,HIGH percentile stretch per scene band, or 'none' for 0-255 data")] = "2,98",
    max_nodata: Annotated[float, typer.Option(help="leave out scene tiles whose nodata fraction exceeds this")] = 0.5,
    index_type: Annotated[str, typer.Option(help="auto (flat below --exact-max embeddings, else ivfpq) | flat (exact) | ivfpq")] = "auto",
    exact_max: Annotated[Optional[int], typer.Option(help="auto uses an exact flat index below this many embeddings")] = None,
    nlist: Annotated[Optional[int], typer.Option(help="ivfpq inverted lists (default: the power of two nearest sqrt(N))")] = None,
    nprobe: Annotated[Optional[int], typer.Option(help="ivfpq lists scanned per query (default: tuned, see README)")] = None,
    shard_size: Annotated[int, typer.Option(help="items per shard (the unit written, and resumed, at once)")] = 4096,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="ADDRESS", help=RAY_HELP)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Ray actors, one runtime each (default: one per GPU, else one per --cpus-per-worker CPUs)")] = None,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs (and onnxruntime threads) per Ray actor")] = 1.0,
    gpus_per_worker: Annotated[Optional[float], typer.Option(help="GPUs per Ray actor (default: 1 where the cluster has GPUs, else 0)")] = None,
    backend: Annotated[str, typer.Option(help="auto | ort | ort-cpu | ort-cuda (see `rsvlm-edge doctor`)")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option(help="images encoded at once (default: the bundle's max batch)")] = None,
    on_error: Annotated[OnError, typer.Option(help=ON_ERROR_HELP)] = OnError.strict,
) -> None:
    """Embed an archive (images, file lists, tiled GeoTIFF scenes) into a FAISS index directory.

    The embeddings are written in shards as they are made; after an error, Ctrl-C or a crash, the same command
    resumes (shards already written are kept). The manifest records the model: queries with another model are refused."""
    from ..index import build
    from ..index.builder import IndexOptions
    from ..index.faiss_index import EXACT_MAX
    from ..progress import progress

    tiles = _tile_options(tile, stride, bands, stretch, max_nodata)
    embed = _embed_options(backend, batch_size, ray, workers, cpus_per_worker, gpus_per_worker, on_error)
    index = IndexOptions(index_type=index_type, exact_max=exact_max if exact_max is not None else EXACT_MAX,
                         nlist=nlist, nprobe=nprobe)
    bundle_path = _bundle_path(bundle)
    with progress() as bar:
        report = build(bundle_path, sources, output, tiles=tiles, shard_size=shard_size, embed=embed, index=index,
                       progress=bar)
    _report(report)


def add_cmd(
    index: Annotated[Path, typer.Argument(help="index directory (from `rsvlm-edge index build`)")],
    sources: Annotated[list[Path], typer.Argument(help=SOURCES_HELP)],
    bundle: Annotated[Optional[str], typer.Option(help="the index's bundle, if it moved (default: the path recorded at build time)")] = None,
    tile: Annotated[Optional[int], typer.Option(help="scene tile side (default: as the index was built)")] = None,
    stride: Annotated[Optional[int], typer.Option(help="step between scene tiles (default: as the index was built)")] = None,
    bands: Annotated[Optional[str], typer.Option(help="scene bands R,G,B (default: as the index was built)")] = None,
    stretch: Annotated[Optional[str], typer.Option(help="percentile stretch LOW,HIGH or none (default: as the index was built)")] = None,
    max_nodata: Annotated[Optional[float], typer.Option(help="nodata fraction limit (default: as the index was built)")] = None,
    shard_size: Annotated[Optional[int], typer.Option(help="items per shard (default: as the index was built)")] = None,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="ADDRESS", help=RAY_HELP)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Ray actors (default: one per GPU, else one per --cpus-per-worker CPUs)")] = None,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs (and onnxruntime threads) per Ray actor")] = 1.0,
    gpus_per_worker: Annotated[Optional[float], typer.Option(help="GPUs per Ray actor (default: 1 where the cluster has GPUs)")] = None,
    backend: Annotated[str, typer.Option(help="auto | ort | ort-cpu | ort-cuda (see `rsvlm-edge doctor`)")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option(help="images encoded at once (default: the bundle's max batch)")] = None,
    on_error: Annotated[OnError, typer.Option(help=ON_ERROR_HELP)] = OnError.strict,
) -> None:
    """Append sources to an index (files already in it are left out); resumable like `index build`.

    The index stays searchable, unchanged, until the add commits."""
    from ..index import add
    from ..index.builder import read_manifest
    from ..progress import progress

    manifest = read_manifest(index)
    tiles = _tile_options(tile, stride, bands, stretch, max_nodata, base=manifest.parts[0].options)
    embed = _embed_options(backend, batch_size, ray, workers, cpus_per_worker, gpus_per_worker, on_error)
    with progress() as bar:
        report = add(index, sources, bundle=_bundle_path(bundle) if bundle else None, tiles=tiles,
                     shard_size=shard_size, embed=embed, progress=bar)
    _report(report)


def info_cmd(
    index: Annotated[Path, typer.Argument(help="index directory")],
    json_out: Annotated[bool, typer.Option("--json", help="print everything as JSON")] = False,
    verify: Annotated[bool, typer.Option(help="check every file's sha256 (shards included)")] = False,
) -> None:
    """Print an index's size, model, index type and parameters, and its parts."""
    from ..index import open as open_index
    from ..progress import table_console
    from .common import human_bytes

    info = open_index(index, verify=verify).info()
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    spec = info["index"]
    params = ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("type", "factory", "metric", "requested"))
    table = Table("field", "value", title=f"index {index}", show_header=False)
    table.add_row("embeddings", f"{info['count']} ({info['images']} images, {info['tiles']} scene tiles, {info['sources']} sources)")
    table.add_row("model", f"{info['model']['name']} ({info['model']['architecture']}, {info['model']['embed_dim']}-d), "
                           f"bundle sha256 {info['model']['bundle_sha256'][:16]}")
    table.add_row("bundle", info["model"]["bundle_path"])
    table.add_row("index type", f"{spec['type']} ({spec['factory']}, requested {spec['requested']})")
    table.add_row("parameters", params)
    table.add_row("on disk", human_bytes(info["bytes"]))
    for p in info["parts"]:
        table.add_row(f"part {p['part']} ({p['command']})",
                      f"{p['embedded']} of {p['items']} items embedded, {p['unreadable']} unreadable, "
                      f"{p['nodata_tiles']} nodata tiles, {p['shards']} shards; sources: {' '.join(p['sources'])}")
    if info["unfinished_add"]:
        table.add_row("unfinished", "an `index add` was interrupted: run it again to finish it")
    if verify:
        table.add_row("verified", "every file matches its sha256")
    table_console().print(table)


def search_cmd(
    index: Annotated[Path, typer.Argument(help="index directory")],
    query: Annotated[str, typer.Argument(help="a text, or the path of an image file (query by example)")],
    k: Annotated[int, typer.Option("-k", "--k", help="hits to return")] = 20,
    geojson: Annotated[Optional[Path], typer.Option(help="write the footprints of scene-tile hits here (GeoJSON, EPSG:4326)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the hits as JSON instead of a table")] = False,
    bundle: Annotated[Optional[str], typer.Option(help="the index's bundle, if it moved (must be the same model)")] = None,
    nprobe: Annotated[Optional[int], typer.Option(help="ivfpq lists scanned per query (default: the index's)")] = None,
    backend: Annotated[str, typer.Option(help="auto | ort | ort-cpu | ort-cuda (see `rsvlm-edge doctor`)")] = "auto",
) -> None:
    """Rank an index's images and tiles against a text or an image: scores, sources, footprints."""
    from ..atomic import check_output_path, write_json_atomic
    from ..images import IMAGE_SUFFIXES
    from ..index import open as open_index
    from ..index.search import hits_geojson
    from ..progress import info, table_console
    from .common import shown

    if k < 1:
        raise InputError(f"-k must be >= 1 (got {k})", "e.g. -k 20")
    if Path(query).suffix.lower() in IMAGE_SUFFIXES and not Path(query).is_file():
        raise InputError(f"image query '{query}' {'is not a file' if Path(query).exists() else 'does not exist'}",
                         "check the path (a text query is any other string)")
    if geojson is not None:
        from ..geo import require_rasterio

        require_rasterio()
        check_output_path(geojson, "--geojson output")
    opened = open_index(index, bundle=_bundle_path(bundle) if bundle else None, backend=backend)
    hits = opened.search(query, k=k, nprobe=nprobe)
    if json_out:
        typer.echo(json.dumps({"index": str(index), "query": query, "k": k, "hits": [h.to_json() for h in hits]}, indent=2))
    else:
        from rich.table import Table

        table = Table("rank", "score", "source", "window (col, row, w, h)", "bounds", title=f"{shown(index)}: {shown(query)}")
        for h in hits:
            s = h.source
            table.add_row(str(h.rank), f"{h.score:.4f}", shown(s.path), "" if s.window is None else ", ".join(map(str, s.window)),
                          "" if s.bounds is None else ", ".join(f"{v:.6g}" for v in s.bounds))
        table_console().print(table)
    if geojson is not None:
        gj = hits_geojson(hits, query)
        write_json_atomic(geojson, gj, "--geojson output")
        info(f"wrote {shown(geojson)}: {len(gj['features'])} footprints")


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    """Add ``index build|add|info`` and ``search`` to the ``rsvlm-edge`` app."""
    index_app.command("build")(build_cmd)
    index_app.command("add")(add_cmd)
    index_app.command("info")(info_cmd)
    app.add_typer(index_app, name="index")
    app.command("search")(search_cmd)
