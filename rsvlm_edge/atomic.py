"""Never lose a user's output: write to a temp file beside the destination, then rename onto it.

Guarantees of ``atomic_path`` (every file output of the CLI goes through it):

* the destination holds either its old content or the complete new content, never a partial file:
  the data goes to ``.NAME.<pid>.<random>.tmp`` in the same directory, is flushed to disk (fsync)
  and then renamed onto ``NAME``; on any exception (Ctrl-C and SIGTERM included) the temp file is
  removed and the destination is untouched;
* temp files left behind by a killed writer (SIGKILL, power loss: their pid is gone) are removed by
  the next write to the same path;
* a destination that is a device or a pipe (``/dev/stdout``, ``/dev/null``, ``/dev/full``) is
  written directly (it cannot be renamed onto); a directory is refused;
* failures (read-only directory, full disk, permission denied, name too long) become an
  ``InputError`` that names the destination, not the temp file, with a fix.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError

_MAX_NAME_IN_TEMP = 160  # keeps '.NAME.<pid>.<random>.tmp' under the usual 255-byte name limit


def temp_prefix(dest: Path) -> str:
    """Prefix of the temp names of writers of ``dest``: ``.NAME.`` (NAME cut to a safe length)."""
    return f".{dest.name[:_MAX_NAME_IN_TEMP]}."


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (in this pid namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_owner(dest: Path, name: str) -> int | None:
    """The writer pid encoded in temp name ``name`` of ``dest`` (``.NAME.<pid>.<...>.tmp`` or
    ``.NAME.<pid>.old``), or None if ``name`` is not one of ours."""
    prefix = temp_prefix(dest)
    if not name.startswith(prefix) or not (name.endswith(".tmp") or name.endswith(".old")):
        return None
    pid = name[len(prefix):].split(".", 1)[0]
    return int(pid) if pid.isdigit() else None


def remove_stale_temps(dest: str | os.PathLike[str]) -> list[Path]:
    """Remove temp files/directories of ``dest`` whose writer process is gone; returns what was removed.

    An interrupted directory swap (``.NAME.<pid>.old`` present, ``NAME`` missing) is repaired by
    renaming the old directory back, so the destination reappears."""
    dest = Path(dest)
    removed: list[Path] = []
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        pid = temp_owner(dest, p.name)
        if pid is None or pid_alive(pid):
            continue
        if p.name.endswith(".old") and not os.path.lexists(dest):
            try:
                os.rename(p, dest)  # put the previous version back
                continue
            except OSError:
                pass
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        except OSError:
            pass
    return removed


_FIXES = {
    errno.ENOSPC: "free some space on that disk, or write the output elsewhere",
    errno.EDQUOT: "free some space (disk quota exceeded), or write the output elsewhere",
    errno.EFBIG: "the file is larger than this file system or process allows (ulimit -f); write it elsewhere",
    errno.EROFS: "that file system is read-only; choose a writable directory for the output",
    errno.EACCES: "choose a directory you can write to, or fix its permissions",
    errno.EPERM: "choose a directory you can write to (the file or directory may be immutable)",
    errno.ENAMETOOLONG: "use a shorter output file name",
    errno.ENOTDIR: "a component of the output path is a file, not a directory; fix the path",
    errno.EISDIR: "give a file name, not a directory",
}


def output_error(dest: str | os.PathLike[str], err: OSError, what: str = "output") -> InputError:
    """An ``InputError`` naming ``dest`` (never the temp file) for an OSError while writing it."""
    fix = _FIXES.get(err.errno or 0, "check the output path, its permissions and free disk space")
    return InputError(f"cannot write {what} '{dest}': {err.strerror or err}", fix)


def _check_dest(dest: Path, what: str) -> None:
    if dest.name in ("", ".", ".."):
        raise InputError(f"{what} '{dest}' is a directory, not a file name", "give a file name, e.g. out/result.json")
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        return
    except OSError as e:
        raise output_error(dest, e, what) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{what} '{dest}' is a directory", f"give a file path, e.g. {dest / ('result' + (dest.suffix or '.json'))}")


def _resolve(dest: Path, what: str) -> tuple[Path, bool]:
    """(where to write, written in place?): a device or pipe (followed through links, e.g.
    /dev/stdout) is written in place; a link to a regular file (or a dangling one) is followed, so
    the link stays and its target is replaced; a directory is refused."""
    _check_dest(dest, what)
    try:
        st = os.stat(dest)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        return dest, True
    if dest.is_symlink():
        dest = Path(os.path.realpath(dest))
        _check_dest(dest, what)
    return dest, False


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_output_path(dest: str | os.PathLike[str], what: str = "output") -> Path:
    """Fail fast, before long work: ``dest`` must not be a directory and its directory must be
    writable (probed by creating and removing a temp file there). Returns ``dest`` as a Path."""
    dest, special = _resolve(Path(dest), what)
    if special:
        return dest  # a device or pipe, written in place
    parent = dest.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # atomic_path creates the missing directories; probe the first existing one
    if not parent.is_dir():
        raise InputError(f"{what} '{dest}': '{parent}' is not a directory", "fix the output path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{temp_prefix(dest)}{os.getpid()}.", suffix=".tmp", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise output_error(dest, e, what) from None
    return dest


@contextmanager
def atomic_path(dest: str | os.PathLike[str], what: str = "output") -> Iterator[str]:
    """Yield a temp path in ``dest``'s directory; rename it onto ``dest`` if the block succeeds,
    delete it if the block raises. The file gets the mode of the file it replaces,
    or the usual ``0666 & ~umask``. ``dest`` is created with its parent directories.

    A symlinked ``dest`` is resolved (the link stays, its target is replaced). A device or pipe
    ``dest`` is yielded as is and written directly."""
    dest, special = _resolve(Path(dest), what)
    if special:  # /dev/stdout, /dev/null, /dev/full, a FIFO: written in place
        try:
            yield str(dest)
        except OSError as e:
            if not _about(e, str(dest)):
                raise
            raise output_error(dest, e, what) from None
        return
    try:
        st: os.stat_result | None = os.stat(dest)
    except OSError:
        st = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(dest)
        fd, tmp = tempfile.mkstemp(prefix=f"{temp_prefix(dest)}{os.getpid()}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
    except OSError as e:
        raise output_error(dest, e, what) from None
    try:
        try:
            yield tmp
        except OSError as e:
            if not _about(e, tmp):
                raise  # an error of the work inside the block (reading an input, say), not of the output
            raise output_error(dest, e, what) from None
        try:
            mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
            os.chmod(tmp, mode)  # mkstemp makes 0600
            fsync_file(tmp)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except OSError as e:
            raise output_error(dest, e, what) from None
    except BaseException:
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:
            pass
        raise


def _about(err: OSError, path: str) -> bool:
    """Whether an OSError raised inside an ``atomic_path`` block is about writing ``path`` (its
    filename, or none: a failed write() on an open file carries no name)."""
    name = getattr(err, "filename", None)
    if name is None:
        return True
    try:
        return os.path.abspath(os.fsdecode(name)) == os.path.abspath(path)
    except (TypeError, ValueError):
        return False


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_json_atomic(dest: str | os.PathLike[str], obj: Any, what: str = "JSON output") -> None:
    """JSON (indented, trailing newline) written atomically."""
    with atomic_path(dest, what=what) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
