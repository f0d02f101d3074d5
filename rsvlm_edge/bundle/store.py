"""The bundle on disk: a directory ``NAME.rsvlm/`` holding ``manifest.json`` and the files it lists.

Reading (``open_bundle``) parses the manifest against the one schema (``schema.py``, after migrating
0.1 bundles), checks that every listed file stays inside the bundle (no '..', no absolute paths, no
symlink leaving it) and has the recorded size and sha256, and only then returns a ``Bundle``. Nothing
about a file outside the bundle is read or reported.

Writing (``BundleWriter``) is atomic: everything goes into a temporary sibling directory
``.NAME.rsvlm.<pid>.<random>.tmp``, every file is hashed into the manifest and flushed to disk, and
the directory is then renamed into place. Without ``overwrite`` the rename fails if another writer
got there first (``renameat2(RENAME_NOREPLACE)``); with ``overwrite`` the old and new directories
are swapped atomically (``renameat2(RENAME_EXCHANGE)`` on Linux), so the destination path never
disappears, and only a bundle (or an empty directory) is ever replaced. Temporary directories left
behind by a killed writer (their pid is gone) are removed by the next writer of the same path.
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
from ..atomic import _fsync_dir, _umask, fsync_file, remove_stale_temps, temp_prefix, write_json_atomic
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
        left = _interrupted_swap(root)
        if left is not None:
            raise BundleError(f"bundle '{root}' does not exist: an interrupted --overwrite left the previous bundle "
                              f"at '{left}'", f"run the export again (it restores it), or: mv '{left}' '{root}'")
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


def _interrupted_swap(root: Path) -> Path | None:
    """The '.NAME.<pid>.old' directory a writer killed mid-swap left (see ``BundleWriter``), if any."""
    try:
        for p in root.parent.iterdir():
            if p.name.startswith(temp_prefix(root)) and p.name.endswith(".old") and (p / MANIFEST).is_file():
                return p
    except OSError:
        pass
    return None


# ---- writing ----

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
_renameat2_fn: Any = None


def _renameat2(a: Path, b: Path, flags: int) -> bool:
    """Linux ``renameat2(a, b, flags)``: True on success, False where the system or the file
    system does not support it; any other failure raises OSError (EEXIST for RENAME_NOREPLACE)."""
    global _renameat2_fn
    if _renameat2_fn is None:
        try:
            _renameat2_fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):
            _renameat2_fn = False
    if _renameat2_fn is False:
        return False
    rc = _renameat2_fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (RENAME_EXCHANGE); False where unsupported."""
    return _renameat2(a, b, RENAME_EXCHANGE)


def _is_replaceable(dest: Path) -> bool:
    """``--overwrite`` replaces only a bundle (a directory with a manifest) or an empty directory,
    never another file or directory that happens to have the name."""
    if not dest.is_dir():
        return False
    if (dest / MANIFEST).is_file():
        return True
    try:
        return not any(dest.iterdir())
    except OSError:
        return False


def _exists_error(dest: Path, meanwhile: bool = False) -> BundleError:
    why = " (written by another export meanwhile)" if meanwhile else ""
    return BundleError(f"'{dest}' already exists{why}", "pass --overwrite or choose another output path")


def _write_error(dest: Path, err: OSError) -> BundleError:
    from ..atomic import output_error

    e = output_error(dest, err, "bundle")
    return BundleError(e.message, e.fix)


class BundleWriter:
    """Builds a bundle in a temp directory; ``commit`` hashes the files and moves it into place.

    Use as a context manager: on an exception (Ctrl-C and SIGTERM included) the temp directory is
    removed and the destination is untouched. Guarantees:

    * without ``overwrite`` an existing destination is refused, here and again at the final rename
      (``RENAME_NOREPLACE``), so of two writers racing for one path exactly one succeeds and the
      other gets "already exists";
    * with ``overwrite`` the old and new bundles are exchanged atomically (``RENAME_EXCHANGE``): a
      reader sees the old or the new bundle, never a missing or half-written one, even if the
      writer is killed. Only a bundle or an empty directory is ever replaced. Where the file system
      cannot exchange, two renames are used and a writer killed between them leaves the old bundle at
      ``.NAME.<pid>.old``, which the next writer of the path renames back;
    * temp directories of killed writers (their pid is gone) are removed by the next writer of the
      same path;
    * a write failure (full disk, read-only or unwritable directory) is a ``BundleError`` naming the
      destination.
    """

    def __init__(self, dest: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.dest = Path(dest)
        self.overwrite = overwrite
        self.tmp: Path | None = None
        if self.dest.suffix != ".rsvlm":
            raise BundleError(f"bundle path '{self.dest}' must end in .rsvlm", f"use e.g. '{self.dest.name}.rsvlm'")
        if overwrite and self.dest.is_symlink():
            self.dest = Path(os.path.realpath(self.dest))  # replace the link's target, keep the link
        remove_stale_temps(self.dest)
        self._check_destination()
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f"{temp_prefix(self.dest)}{os.getpid()}.", suffix=".tmp",
                                             dir=self.dest.parent))
        except OSError as e:
            raise BundleError(f"cannot write into '{self.dest.parent}' ({e.strerror})",
                              "choose a writable output directory") from None

    def _check_destination(self) -> None:
        if not os.path.lexists(self.dest):
            return
        if not self.overwrite:
            raise _exists_error(self.dest)
        if not _is_replaceable(self.dest):
            raise BundleError(f"'{self.dest}' exists and is not an rsvlm bundle; --overwrite only replaces bundles",
                              "remove it yourself, or choose another output path")

    def path(self, name: str) -> Path:
        """Where to write file ``name`` inside the bundle being built."""
        assert self.tmp is not None
        return self.tmp / check_relpath(name)

    def commit(self, manifest: dict[str, Any]) -> Bundle:
        """Hash every file, validate and write the manifest, and move the bundle into place."""
        assert self.tmp is not None
        try:
            return self._commit(manifest)
        except OSError as e:
            raise _write_error(self.dest, e) from None

    def _commit(self, manifest: dict[str, Any]) -> Bundle:
        assert self.tmp is not None
        files: dict[str, dict[str, Any]] = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.tmp).as_posix()
                fsync_file(p)
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
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        _fsync_dir(self.tmp)
        self._place()
        _fsync_dir(self.dest.parent)
        return Bundle(self.dest, parsed)

    def _place(self) -> None:
        """Move the finished temp directory to ``dest`` (see the class docstring)."""
        assert self.tmp is not None
        if self._rename_noreplace():
            return
        if not self.overwrite:
            raise _exists_error(self.dest, meanwhile=True)
        if not _is_replaceable(self.dest):
            raise BundleError(f"'{self.dest}' exists and is not an rsvlm bundle; --overwrite only replaces bundles",
                              "remove it yourself, or choose another output path")
        if _exchange(self.tmp, self.dest):
            shutil.rmtree(self.tmp, ignore_errors=True)  # now holds the old bundle
            return
        # No atomic exchange here: two renames. A writer killed between them leaves the old bundle at
        # '.NAME.<pid>.old' and no NAME; remove_stale_temps (the next writer) renames it back.
        old = self.dest.with_name(f"{temp_prefix(self.dest)}{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(self.dest, old)
        try:
            os.rename(self.tmp, self.dest)
        except OSError:
            os.rename(old, self.dest)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def _rename_noreplace(self) -> bool:
        """Rename tmp -> dest unless dest exists (atomically where RENAME_NOREPLACE works)."""
        assert self.tmp is not None
        try:
            if _renameat2(self.tmp, self.dest, RENAME_NOREPLACE):
                return True
        except FileExistsError:
            return False
        if os.path.lexists(self.dest):  # no RENAME_NOREPLACE: check, then rename (a small race window)
            return False
        try:
            os.rename(self.tmp, self.dest)  # also fails if another writer created it meanwhile
            return True
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                return False
            raise

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is not None and (exc_type is not None or self.tmp.exists()):
            self.abort()
        if exc is not None and isinstance(exc, OSError):
            raise _write_error(self.dest, exc) from None

