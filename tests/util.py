"""Test helpers shared across test files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import rsvlm_edge


def package_env() -> dict[str, str]:
    """Environment for a subprocess that imports the same rsvlm_edge as this test process
    (the installed package in CI, the checkout with PYTHONPATH=$PWD in development)."""
    where = str(Path(rsvlm_edge.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [where, os.environ.get("PYTHONPATH", "")])))


def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``rsvlm-edge ARGS`` in a subprocess (python -m rsvlm_edge.cli), capturing text output."""
    return subprocess.run([sys.executable, "-m", "rsvlm_edge.cli", *args], capture_output=True, text=True,
                          env=package_env(), timeout=timeout)
