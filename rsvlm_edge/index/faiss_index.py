"""The FAISS side of an index: which index type for how many vectors, its parameters, building it
from shards (streamed, never the whole archive in one array), searching, reading and writing.

* ``flat``: ``IndexFlatIP``, exact. Chosen below ``EXACT_MAX`` vectors: one query scans every vector
  (about 0.17-0.20 ms per 1,000 vectors of 512 dims on the 2-core bench CPU, bench/bench_index.py), so
  25,000 vectors answer in about 5 ms.
* ``ivfpq``: ``IVF{nlist},PQ{m}x8,Refine(SQ8)``: an inverted file of ``nlist`` lists (k-means
  centroids) holding PQ codes of the residuals (``m`` sub-quantisers of 8 bits, 8 dims each), whose
  ``k * k_factor`` best candidates are re-ranked with 8-bit scalar-quantised copies of the vectors.
  PQ codes alone rank near neighbours poorly (recall@20 0.42 on 1,000,000 CLIP-like 512-d vectors);
  the SQ8 re-ranking brings it to 0.97 for about 590 bytes per vector instead of 2,048. ``nlist`` is
  the power of two nearest sqrt(N); the defaults for ``nprobe`` (lists scanned per query) and
  ``k_factor`` were tuned on those 1,000,000 vectors (see ``NPROBE_PER_1024_LISTS``).

faiss is imported only when an index is built, read or searched (``pip install 'rsvlm-edge[index]'``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from .manifest import FaissSpec

EXACT_MAX = 25_000
IVF_TRAIN_PER_LIST = 64  # k-means training vectors per inverted list (faiss asks for >= 39)
PQ_BITS = 8
PQ_DIMS_PER_CODE = 8  # dims per PQ sub-quantiser: m = dim / 8 (64 codes of 1 byte for 512 dims)
PQ_MIN_TRAIN = 1 << PQ_BITS  # each sub-quantiser has 256 centroids
REFINE = "SQ8"
# Tuned by bench/bench_index.py on 1,000,000 CLIP-like 512-d vectors (nlist 1024; bench/RESULTS.md): recall@20
# is bounded by k_factor (0.42 at 1, 0.91 at 8, 0.96 at 16, 0.97 at 32, whatever nprobe from 8 to 32); nprobe 16
# keeps a margin for archives less clustered than the bench data. nprobe 16 x k_factor 32: recall@20 0.974,
# p50 1.6 ms, p99 2.1 ms per query on the shared 2-core bench CPU (goal: >= 0.95 at <= 5 ms).
NPROBE_PER_1024_LISTS = 16
K_FACTOR = 32
MIN_NLIST = 4
MAX_NLIST = 1 << 16


def require_faiss():
    """Import faiss, or say how to install it."""
    try:
        import faiss
    except ImportError:
        raise InputError("archive indexes need faiss, which is not installed", "pip install 'rsvlm-edge[index]'") from None
    return faiss


def pq_subquantizers(dim: int) -> int:
    """PQ sub-quantisers for ``dim``: dim / 8 when 8 divides dim, else the largest divisor of dim
    that leaves at least 8 dims per code (1 for a prime dim)."""
    target = max(1, dim // PQ_DIMS_PER_CODE)
    return next(m for m in range(target, 0, -1) if dim % m == 0)


def default_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest sqrt(n), within 4..65536 and at most
    n / 39 (faiss's minimum of training vectors per list)."""
    nlist = 2 ** round(math.log2(max(math.sqrt(n), 1)))
    return int(max(MIN_NLIST, min(nlist, MAX_NLIST, max(MIN_NLIST, n // 39))))


def default_nprobe(nlist: int) -> int:
    return int(max(1, min(nlist, round(nlist * NPROBE_PER_1024_LISTS / 1024))))


def min_vectors(requested: str) -> int:
    """Fewest vectors an index type can be trained on."""
    return 1 if requested == "flat" else max(PQ_MIN_TRAIN, MIN_NLIST * 39)


def choose_spec(n: int, dim: int, requested: str = "auto", exact_max: int = EXACT_MAX,
                nlist: int | None = None, nprobe: int | None = None, k_factor: int | None = None) -> FaissSpec:
    """The index for ``n`` vectors of ``dim`` dims: ``flat`` below ``exact_max`` (or when asked),
    else ``ivfpq`` with the default parameters unless given."""
    if requested not in ("auto", "flat", "ivfpq"):
        raise InputError(f"unknown index type '{requested}'", "choose auto, flat or ivfpq")
    kind = "flat" if requested == "flat" or (requested == "auto" and n < exact_max) else "ivfpq"
    if kind == "flat":
        return FaissSpec(type="flat", requested=requested, factory="Flat", exact_max=exact_max)
    if n < min_vectors("ivfpq"):
        raise InputError(f"an ivfpq index needs at least {min_vectors('ivfpq')} embeddings to train on; this one has {n}",
                         "use --index-type flat (exact) or auto for small archives")
    nlist = nlist or default_nlist(n)
    if nlist > n:
        raise InputError(f"--nlist {nlist} is more than the {n} embeddings", f"use --nlist {default_nlist(n)} or leave it out")
    m = pq_subquantizers(dim)
    return FaissSpec(type="ivfpq", requested=requested, factory=f"IVF{nlist},PQ{m}x{PQ_BITS},Refine({REFINE})",
                     exact_max=exact_max, nlist=nlist, pq_m=m, pq_bits=PQ_BITS,
                     nprobe=min(nprobe or default_nprobe(nlist), nlist), k_factor=k_factor or K_FACTOR)


def training_rows(n: int, spec: FaissSpec) -> np.ndarray:
    """Rows (ascending, evenly spread over the whole archive) that train an ``ivfpq`` index."""
    want = min(n, max(spec.nlist * IVF_TRAIN_PER_LIST, PQ_MIN_TRAIN))
    return np.unique(np.linspace(0, n - 1, want).round().astype(np.int64))


def new_index(spec: FaissSpec, dim: int):
    """An empty (untrained) index for ``spec``."""
    faiss = require_faiss()
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.type == "ivfpq":
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.do_polysemous_training = False  # only for Hamming-distance pre-filtering, which is not used
        for cp in (ivf.cp, ivf.pq.cp):  # sample sizes are chosen on purpose (training_rows): no warnings
            cp.min_points_per_centroid = 1
    return index


def build(spec: FaissSpec, dim: int, n: int, blocks: Callable[[], Iterable[np.ndarray]],
          on_block: Callable[[int], None] | None = None):
    """Build the index of ``n`` vectors that ``blocks()`` yields in order (e.g. shard by shard; it
    is called twice for ``ivfpq``: once to gather the training rows, once to add). ``on_block(rows)``
    reports progress. Returns the index and the number of training vectors."""
    index = new_index(spec, dim)
    trained_on = 0
    if not index.is_trained:
        rows = training_rows(n, spec)
        sample, seen = [], 0
        for block in blocks():
            take = rows[(rows >= seen) & (rows < seen + len(block))] - seen
            sample.append(np.asarray(block, dtype=np.float32)[take])
            seen += len(block)
        train = np.ascontiguousarray(np.concatenate(sample))
        index.train(train)
        trained_on = len(train)
    for block in blocks():
        index.add(np.ascontiguousarray(block, dtype=np.float32))
        if on_block:
            on_block(len(block))
    if index.ntotal != n:
        raise RuntimeError(f"built an index of {index.ntotal} vectors, expected {n}")
    return index, trained_on


def search(index, spec: FaissSpec, queries: np.ndarray, k: int, nprobe: int | None = None,
           k_factor: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k), ids (Q, k)) of the ``k`` best vectors per query; ids are -1 past the end."""
    faiss = require_faiss()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if spec.type == "flat":
        return index.search(q, k)
    ivf_params = faiss.SearchParametersIVF(nprobe=int(nprobe or spec.nprobe))
    params = faiss.IndexRefineSearchParameters(k_factor=float(k_factor or spec.k_factor), base_index_params=ivf_params)
    return index.search(q, k, params=params)


def write(index, path: Path) -> None:
    """Serialise the index to ``path`` atomically."""
    faiss = require_faiss()
    with atomic_path(path, what="FAISS index") as tmp:
        faiss.write_index(index, tmp)


def read(path: Path, count: int, dim: int):
    """Read an index file and check it holds ``count`` vectors of ``dim`` dims."""
    faiss = require_faiss()
    fix = "the index file is damaged; rebuild the index with `rsvlm-edge index build` into a new directory"
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise InputError(f"FAISS index '{path}' cannot be read ({str(e).splitlines()[0][:160]})", fix) from None
    if index.ntotal != count or index.d != dim:
        raise InputError(f"FAISS index '{path}' holds {index.ntotal} vectors of {index.d} dims; the manifest says "
                         f"{count} of {dim}", fix)
    return index
