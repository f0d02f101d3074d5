"""The bundle: one typed manifest schema for every architecture (``schema``), migration of 0.1
bundles (``migrate``), verified reading and atomic writing (``store``)."""

from .schema import FORMAT_NAME, FORMAT_VERSION, MANIFEST, DecoderPart, GraphPart, Manifest, TensorSpec
from .store import Bundle, BundleWriter, open_bundle, read_manifest, sha256_of

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "Bundle", "BundleWriter", "DecoderPart", "GraphPart", "Manifest",
    "TensorSpec", "open_bundle", "read_manifest", "sha256_of",
]
