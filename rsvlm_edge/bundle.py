"""The bundle: a directory ``NAME.rsvlm/`` holding ``manifest.json`` and the files it lists.

Writing is atomic: everything goes into a temporary sibling directory, every file is hashed into
the manifest, and only then is the directory renamed into place. A user's existing bundle is
never lost half-way. Reading checks the format version and every file's size and sha256 before
anything is loaded; a bundle that fails a check is refused, never half-loaded.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic
from .errors import BundleError

FORMAT_NAME = "rsvlm-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARCHITECTURES = ("clip", "llava")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: dict[str, Any]

    @property
    def architecture(self) -> str:
        return self.manifest["architecture"]

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    def file(self, name: str) -> Path:
        """Path of a file the manifest lists; refuses names it does not list."""
        if name not in self.manifest["files"]:
            raise BundleError(
                f"bundle {self.path} has no file '{name}' in its manifest",
                "re-export the bundle with a current `rsvlm-edge export`",
            )
        return self.path / name


class BundleWriter:
    """Builds a bundle in a temp directory; ``commit`` hashes the files and renames it into place.

    Use as a context manager: on an exception the temp directory is removed and the destination
    is untouched.
    """

    def __init__(self, dest: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.dest = Path(dest)
        if self.dest.suffix != ".rsvlm":
            raise BundleError(
                f"bundle path '{self.dest}' must end in .rsvlm", f"use e.g. '{self.dest.name}.rsvlm'"
            )
        if self.dest.exists() and not overwrite:
            raise BundleError(
                f"'{self.dest}' already exists", "pass --overwrite or choose another output path"
            )
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.", dir=self.dest.parent))

    def path(self, name: str) -> Path:
        """Where to write file ``name`` inside the bundle being built."""
        return self.tmp / name

    def commit(self, manifest: dict[str, Any]) -> Bundle:
        """Hash every file, write the manifest, and atomically move the bundle into place."""
        if manifest.get("architecture") not in ARCHITECTURES:
            raise BundleError(f"unknown bundle architecture {manifest.get('architecture')!r}")
        files: dict[str, dict[str, Any]] = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.tmp).as_posix()
                files[rel] = {"size": p.stat().st_size, "sha256": sha256_of(p)}
        from . import __version__

        full = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "created_by": f"rsvlm-edge {__version__}",
            **manifest,
            "files": files,
        }
        write_json_atomic(self.tmp / MANIFEST, full)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        if self.dest.exists():
            old = self.dest.with_name(f".{self.dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.dest, old)
            os.replace(self.tmp, self.dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.dest)
        return Bundle(self.dest, full)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()


def open_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Open and check a bundle: manifest present and parseable, format version known, every
    listed file present with the recorded size and (when ``verify``) sha256."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"bundle '{root}' does not exist", "check the path, or create it with `rsvlm-edge export`")
    if not root.is_dir():
        raise BundleError(f"'{root}' is not a bundle directory", "bundles are directories named NAME.rsvlm")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"bundle '{root}' has no {MANIFEST}", "re-export it with `rsvlm-edge export`")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e})", "re-export the bundle") from None
    if manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{mpath} is not an rsvlm-edge manifest (format={manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"bundle '{root}' has format version {version}, this rsvlm-edge reads up to {FORMAT_VERSION}",
            "upgrade rsvlm-edge (pip install -U rsvlm-edge) or re-export with this version",
        )
    if manifest.get("architecture") not in ARCHITECTURES:
        raise BundleError(f"bundle '{root}' has unknown architecture {manifest.get('architecture')!r}")
    for name, meta in manifest.get("files", {}).items():
        fpath = root / name
        if not fpath.is_file():
            raise BundleError(f"bundle '{root}' is missing '{name}'", "copy the whole bundle directory again")
        if fpath.stat().st_size != meta["size"]:
            raise BundleError(
                f"'{fpath}' has {fpath.stat().st_size} bytes, the manifest says {meta['size']} (truncated copy?)",
                "copy the whole bundle directory again",
            )
        if verify and sha256_of(fpath) != meta["sha256"]:
            raise BundleError(
                f"'{fpath}' fails its sha256 check (file changed or corrupt)",
                "copy the bundle again or re-export it",
            )
    return Bundle(root, manifest)
