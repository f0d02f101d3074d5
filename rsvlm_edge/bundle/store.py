"""The bundle on disk: a directory ``NAME.rsvlm/`` holding ``manifest.json`` and the files it lists.

Reading (``open_bundle``) parses the manifest against the one schema (``schema.py``, after migrating
0.1 bundles), checks that every listed file stays inside the bundle (no '..', no absolute paths, no
symlink leaving it) and has the recorded size and sha256, and only then returns a ``Bundle``. Nothing
about a file outside the bundle is read or reported.

Writing (``BundleWriter``) is atomic: everything goes into a temporary sibling directory
``.NAME.rsvlm.<pid>.<random>.tmp``, every file is hashed into the manifest, and the directory is then
renamed into place. Without ``overwrite`` the rename fails if another writer got there first; with
``overwrite`` the old and new directories are swapped atomically (``renameat2(RENAME_EXCHANGE)``
on Linux), so the destination path never disappears. Temporary directories left behind by a killed
writer (their pid is gone) are removed by the next writer of the same path.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import write_json_atomic
from ..errors import BundleError
from .migrate import migrate
from .schema import FORMAT_NAME, FORMAT_VERSION, MANIFEST, Manifest, check_relpath, parse_manifest

MAX_MANIFEST_BYTES = 16 << 20


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk: its directory and its typed manifest."""

    path: Path
    manifest: Manifest

    @property
    def architecture(self) -> str:
        return self.manifest.architecture

    @property
    def model(self) -> Any:
        return self.manifest.model

    def file(self, name: str) -> Path:
        """Path of a file the manifest lists (inside the bundle); refuses any other name."""
        if name not in self.manifest.files:
            raise BundleError(f"bundle {self.path} has no file '{name}' in its manifest",
                              "re-export the bundle with a current `rsvlm-edge export`")
        return _inside(self.path, name)

    def part_file(self, part: str) -> Path:
        return self.file(self.manifest.parts[part].file)


def _inside(root: Path, name: str) -> Path:
    """``root / name`` if it resolves inside ``root`` (following symlinks), else a BundleError that
    says nothing about the target."""
    try:
        check_relpath(name)
    except ValueError as e:
        raise BundleError(f"bundle '{root}' names a file outside itself: {e}", "re-export the bundle") from None
    real_root = root.resolve()
    path = root / name
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise BundleError(f"bundle '{root}': '{name}' is a link that leaves the bundle",
                          "copy the bundle with real files (cp -rL), or re-export it")
    return path


def read_manifest(root: Path) -> Manifest:
    """Parse ``root/manifest.json`` (size-limited, migrated, schema-checked)."""
    mpath = root / MANIFEST
    if mpath.is_symlink() or not mpath.is_file():
        raise BundleError(f"bundle '{root}' has no {MANIFEST}", "re-export it with `rsvlm-edge export`")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath} is larger than {MAX_MANIFEST_BYTES >> 20} MiB", "re-export the bundle")
    try:
        data = json.loads(mpath.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e.__class__.__name__})", "re-export the bundle") from None
    if isinstance(data, dict):
        if data.get("format") != FORMAT_NAME:
            raise BundleError(f"{mpath} is not an rsvlm-edge manifest (format={data.get('format')!r})",
                              "pass a bundle directory written by `rsvlm-edge export`")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
            raise BundleError(
                f"bundle '{root}' has format version {version!r}, this rsvlm-edge reads 1 to {FORMAT_VERSION}",
                "upgrade rsvlm-edge (pip install -U rsvlm-edge) or re-export with this version",
            )
        data = migrate(data)
    return parse_manifest(data, str(mpath))


def open_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Open and check a bundle: manifest valid, every listed file inside the bundle, present, with
    the recorded size and (when ``verify``) sha256."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"bundle '{root}' does not exist", "check the path, or create it with `rsvlm-edge export`")
    if not root.is_dir():
        raise BundleError(f"'{root}' is not a bundle directory", "bundles are directories named NAME.rsvlm")
    manifest = read_manifest(root)
    for name, meta in manifest.files.items():
        fpath = _inside(root, name)
        if not fpath.is_file():
            raise BundleError(f"bundle '{root}' is missing '{name}'", "copy the whole bundle directory again")
        size = fpath.stat().st_size
        if size != meta.size:
            raise BundleError(f"'{fpath}' has {size} bytes, the manifest says {meta.size} (truncated copy?)",
                              "copy the whole bundle directory again")
        if verify and sha256_of(fpath) != meta.sha256:
            raise BundleError(f"'{fpath}' fails its sha256 check (file changed or corrupt)",
                              "copy the bundle again or re-export it")
    return Bundle(root, manifest)


# ---- writing ----

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(dest: Path) -> None:
    """Remove ``.NAME.<pid>.*.tmp`` siblings of ``dest`` whose writer process no longer exists."""
    prefix = f".{dest.name}."
    if not dest.parent.is_dir():
        return
    for p in dest.parent.iterdir():
        if not (p.name.startswith(prefix) and p.name.endswith(".tmp")):
            continue
        pid = p.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    old = dest.with_name(f".{dest.name}.old")
    if old.exists() and not dest.exists():  # a swap was interrupted between its two renames
        os.replace(old, dest)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


class BundleWriter:
    """Builds a bundle in a temp directory; ``commit`` hashes the files and renames it into place.

    Use as a context manager: on an exception (Ctrl-C included) the temp directory is removed and
    the destination is untouched.
    """

    def __init__(self, dest: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.dest = Path(dest)
        self.overwrite = overwrite
        if self.dest.suffix != ".rsvlm":
            raise BundleError(f"bundle path '{self.dest}' must end in .rsvlm", f"use e.g. '{self.dest.name}.rsvlm'")
        remove_stale_temps(self.dest)
        if self.dest.exists() and not overwrite:
            raise BundleError(f"'{self.dest}' already exists", "pass --overwrite or choose another output path")
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.{os.getpid()}.", suffix=".tmp",
                                             dir=self.dest.parent))
        except OSError as e:
            raise BundleError(f"cannot write into '{self.dest.parent}' ({e.strerror})",
                              "choose a writable output directory") from None

    def path(self, name: str) -> Path:
        """Where to write file ``name`` inside the bundle being built."""
        return self.tmp / check_relpath(name)

    def commit(self, manifest: dict[str, Any]) -> Bundle:
        """Hash every file, validate and write the manifest, and move the bundle into place."""
        files: dict[str, dict[str, Any]] = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.tmp).as_posix()
                files[rel] = {"size": p.stat().st_size, "sha256": sha256_of(p)}
        full = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "created_by": f"rsvlm-edge {__version__}",
            **manifest,
            "files": files,
        }
        parsed = parse_manifest(full, f"manifest of {self.dest}")  # never write a bundle we would refuse
        write_json_atomic(self.tmp / MANIFEST, full)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        if not self.dest.exists():
            try:
                os.rename(self.tmp, self.dest)  # fails if another writer created it meanwhile
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                    raise BundleError(f"'{self.dest}' already exists (written by another export meanwhile)",
                                      "pass --overwrite or choose another output path") from None
                raise
        elif not self.overwrite:
            raise BundleError(f"'{self.dest}' already exists", "pass --overwrite or choose another output path")
        elif _exchange(self.tmp, self.dest):
            shutil.rmtree(self.tmp, ignore_errors=True)  # now holds the old bundle
        else:  # no atomic exchange: two renames; remove_stale_temps repairs an interrupted swap
            old = self.dest.with_name(f".{self.dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.dest, old)
            os.replace(self.tmp, self.dest)
            shutil.rmtree(old, ignore_errors=True)
        return Bundle(self.dest, parsed)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()
