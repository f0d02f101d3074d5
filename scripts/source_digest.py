"""Print a short sha256 digest of the project's source files (C++/CUDA, Python, CMake, scripts), so that a
report made from a copy of the working tree (scripts/gpu-check.sh on a lent GPU machine, whose .git may be
stale) can be matched to a local commit: run this in both places and compare."""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIRS = ("include", "kernels", "csrc", "rsvlm_edge", "scripts", "bench", "tests", "examples")
SUFFIXES = {".py", ".h", ".cpp", ".cu", ".cuh", ".sh", ".txt", ".toml"}


def source_digest(root: Path = ROOT) -> str:
    h = hashlib.sha256()
    files = [p for d in DIRS for p in (root / d).rglob("*") if p.is_file() and p.suffix in SUFFIXES
             and "__pycache__" not in p.parts and "out" not in p.relative_to(root).parts[:2]]
    for path in sorted(files + [root / "CMakeLists.txt", root / "pyproject.toml"]):
        if path.exists():
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


if __name__ == "__main__":
    print(source_digest())
