"""Subprocesses of the tests (the CLI above all) import the same rsvlm_edge as the test process, also when
started from the checkout, whose rsvlm_edge/ has no built _C in CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from util import package_env


def test_a_subprocess_started_in_the_checkout_imports_this_package_and_its_native_module():
    checkout = Path(__file__).resolve().parents[1]
    try:
        import rsvlm_edge._C  # noqa: F401

        native = True
    except ImportError:
        native = False
    code = ("import rsvlm_edge, importlib.util; "
            "print(rsvlm_edge.__file__); print(importlib.util.find_spec('rsvlm_edge._C') is not None)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=checkout,
                       env=package_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    where, has_native = r.stdout.split()
    assert Path(where).resolve() == Path(rsvlm_edge.__file__).resolve()
    assert has_native == str(native)
