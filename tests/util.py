"""Test helpers shared across test files."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import rsvlm_edge


def package_env() -> dict[str, str]:
    """Environment for a subprocess that imports the same rsvlm_edge as this test process
    (the installed package in CI, the checkout with PYTHONPATH=$PWD in development).
    PYTHONSAFEPATH=1: ``python -m`` / ``-c`` would otherwise put the working directory first on sys.path,
    and from a checkout that imports its ``rsvlm_edge/`` (in CI without the built ``_C``, so the native
    kernels would silently not run) instead of the installed package."""
    where = str(Path(rsvlm_edge.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONSAFEPATH="1",
                PYTHONPATH=os.pathsep.join(filter(None, [where, os.environ.get("PYTHONPATH", "")])))


def run_cli(*args: str, timeout: float = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``rsvlm-edge ARGS`` in a subprocess (python -m rsvlm_edge.cli), capturing text output;
    ``env``: variables added to the package environment."""
    return subprocess.run([sys.executable, "-m", "rsvlm_edge.cli", *args], capture_output=True, text=True,
                          env={**package_env(), **(env or {})}, timeout=timeout)


def flat(text: str) -> str:
    """``text`` with every run of whitespace as one space."""
    return " ".join(text.split())


def assert_contract(r: subprocess.CompletedProcess, *needles: str) -> None:
    """The CLI's user-error contract: exit 2, exactly one ``error:`` line and one ``fix:`` line, no
    traceback, each needle present (case-insensitive, whitespace flattened)."""
    out = r.stdout + r.stderr
    assert r.returncode == 2, f"rc={r.returncode}\n{out}"
    assert "Traceback" not in out, out
    lines = r.stderr.splitlines()
    assert sum(ln.startswith("error:") for ln in lines) == 1, r.stderr
    assert sum(ln.strip().startswith("fix:") for ln in lines) == 1, r.stderr
    text = flat(r.stderr)
    for n in needles:
        assert n.lower() in text.lower(), f"{n!r} not in {text!r}"


def child_setup(fsize: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` for CLI subprocesses: default Ctrl-C handling even when the test runner ignores
    SIGINT (a background job of a non-interactive shell does, and Python keeps an inherited SIG_IGN),
    and an optional file-size limit (RLIMIT_FSIZE, bytes)."""
    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return setup


def cpu_decoder_ops(backend: str):
    """The decoder op set of a CPU backend ("numpy" or "native"); skips the test when the native
    kernels are not built."""
    import pytest

    from rsvlm_edge.backends import decoder_numpy

    if backend == "numpy":
        return decoder_numpy.NUMPY
    from rsvlm_edge.backends.decoder_native import native_ops

    try:
        return native_ops()
    except ImportError as e:
        pytest.skip(f"native kernels not built: {e}")
