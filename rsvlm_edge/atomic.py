"""Never lose a user's output: write to a temp file beside the destination, then rename onto it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temp path in ``dest``'s directory (same suffix); rename it onto ``dest`` if the block
    succeeds, delete it if the block raises. The file gets the usual permissions (0666 & ~umask)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix or ".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(dest: str | os.PathLike[str], obj: Any) -> None:
    """JSON (indented, trailing newline) written atomically."""
    with atomic_path(dest) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
