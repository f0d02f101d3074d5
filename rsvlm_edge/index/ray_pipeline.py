"""The embedding stage as a Ray Data pipeline (``index build --ray ADDRESS``).

read (``ray.data.from_arrow``: one block per batch of items, never across a shard) -> decode/tile
(``pipeline.decode_batch``) -> ``map_batches`` on an actor pool of ``ClipEmbedder`` (one runtime per
actor, ``num_gpus`` per actor where the cluster has GPUs) -> the driver, which writes the same shards
as the in-process path. Where the cluster has GPUs, decoding runs as CPU tasks ahead of the GPU
actors; on a CPU-only cluster each actor decodes its own batches (a separate decode stage would need
CPUs the actor pool may hold, and nothing would be gained by moving pixels between processes).

Blocks are the batches of the in-process path and ``batch_size=None`` hands each block to the
embedder whole, so every item is encoded in the same batch with and without Ray: identical shards.

ray is imported only here, only when ``--ray`` is given (``pip install 'rsvlm-edge[index]'``).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Iterator

import numpy as np

from ..errors import InputError, RsvlmError
from .pipeline import ClipEmbedder, EmbedConfig, chunk_ranges, decode_batch
from .sources import SourceTable

LOCAL = "local"
AUTO = "auto"
PROBE_TIMEOUT_S = 5.0
ADDRESS_FIX = ("start the cluster (`ray start --head` on its head node) and pass its address (--ray HOST:6379 or "
               "ray://HOST:10001), use --ray local for a cluster on this machine, or leave --ray out to embed in "
               "this process")


def require_ray():
    """Import ray (with Ray Data), or say how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError("--ray needs ray[data], which is not installed", "pip install 'rsvlm-edge[index]'") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--ray '{address}' is not a Ray address",
                         "use --ray local, --ray auto, --ray HOST:PORT (the head node's GCS port, 6379) or ray://HOST:10001")
    return host.strip("[]"), int(port)


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse an address where nothing answers, before ``ray.init`` (which would retry for minutes)."""
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise InputError(f"the Ray cluster at '{address}' does not answer ({why})", ADDRESS_FIX) from None


def connect(address: str) -> bool:
    """Join (or, for ``local``, start) a Ray cluster unless this process is already connected (an
    address is still checked to answer). Returns whether this call connected (and so should
    ``ray.shutdown()`` when done)."""
    if address != LOCAL and address != AUTO:
        probe(address)
    ray = require_ray()
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address == LOCAL:
            ray.init(**quiet)
        else:
            ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        raise InputError(f"cannot join the Ray cluster at '{address}' ({str(e).splitlines()[0][:200]})",
                         ADDRESS_FIX) from None
    return True


class DecodeAndEmbed:
    """Actor of a CPU-only pool: decodes its batches, then embeds them (see the module docstring)."""

    def __init__(self, config: EmbedConfig) -> None:
        self.config = config
        self.embedder = ClipEmbedder(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.embedder(decode_batch(batch, self.config))


def _rsvlm_cause(e: BaseException) -> RsvlmError | None:
    """The rsvlm-edge error behind a Ray task/actor failure, if that is what it is."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, RsvlmError) and type(x).__module__.startswith("rsvlm_edge"):
            return x
        stack += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def embed_with_ray(plan: SourceTable, ranges: list[tuple[int, int]], config: EmbedConfig, workers: int | None = None,
                   cpus_per_worker: float = 1.0, gpus_per_worker: float | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Run decode + embed for the items of ``ranges`` on the connected Ray cluster; yields the
    embedder's output batches (item, embedding, status, reason) in item order."""
    import pyarrow as pa

    ray = require_ray()
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.execution_options.preserve_order)
    ctx.enable_progress_bars = False  # the CLI draws its own (rich) progress bar
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # shards complete one after another
    logging.getLogger("ray.data").setLevel(logging.ERROR)

    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0.0))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus >= 1 else 0.0
    if workers is None:
        workers = max(1, int(gpus // gpus_per_worker)) if gpus_per_worker > 0 else \
            max(1, int(resources.get("CPU", 1.0) // cpus_per_worker))
    threads = max(1, int(round(cpus_per_worker)))
    config = dataclasses.replace(config, threads=threads)
    blocks = [pa.table(plan.batch(a, b)) for a, b in chunk_ranges(ranges, config.batch_size)]
    workers = min(workers, len(blocks))  # an actor per block at most: more would only start and idle
    ds = ray.data.from_arrow(blocks)
    pool = {"batch_size": None, "batch_format": "numpy", "concurrency": workers, "num_cpus": cpus_per_worker,
            "fn_constructor_kwargs": {"config": config}}
    if gpus_per_worker > 0:
        ds = ds.map_batches(decode_batch, fn_kwargs={"config": config}, batch_size=None, batch_format="numpy")
        ds = ds.map_batches(ClipEmbedder, num_gpus=gpus_per_worker, **pool)
    else:
        ds = ds.map_batches(DecodeAndEmbed, **pool)
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    except (KeyboardInterrupt, RsvlmError):
        raise
    except Exception as e:  # a task or actor failed: surface our own error if it is one
        cause = _rsvlm_cause(e)
        if cause is not None:
            raise type(cause)(cause.message, cause.fix) from None
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise RsvlmError(f"the Ray pipeline failed ({type(e).__name__}: {first})",
                         "see the Ray logs (/tmp/ray/session_latest/logs on the head node); shards already "
                         "written are kept, so running the command again resumes") from None
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.execution_options.preserve_order = saved
