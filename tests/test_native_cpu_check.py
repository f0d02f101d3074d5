"""tests/native/cpu_kernels_check.cpp: every fast CPU kernel against its naive reference at odd shapes,
built from the kernel sources alone: natively (every kernel set this CPU has), and cross-compiled for
aarch64 and run under qemu-user, where the portable kernels are the NEON code a Jetson runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CROSS_FIX = "install Debian's g++-aarch64-linux-gnu and qemu-user (.ci/run does)"


def _sources() -> list[str]:
    kernels = sorted(str(p) for p in (ROOT / "kernels").glob("*/*.cpp"))
    core = sorted(str(p) for p in (ROOT / "csrc" / "core").glob("*.cpp"))
    return [str(ROOT / "tests" / "native" / "cpu_kernels_check.cpp"), *kernels, *core]


def _build(cxx: str, exe: Path, extra: list[str]) -> None:
    cmd = [cxx, "-O2", "-std=c++17", "-fopenmp", "-pthread", '-DRSVLM_VERSION="check"', f"-I{ROOT / 'include'}",
           f"-I{ROOT / 'kernels'}", *extra, *_sources(), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]


def _check_output(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.endswith(", 0 failed") and int(last.split()[0]) >= 40, last


def test_native_cpu_kernels_match_their_references(tmp_path):
    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    exe = tmp_path / "cpu_kernels_check"
    _build(cxx, exe, [])
    _check_output(subprocess.run([str(exe)], capture_output=True, text=True, timeout=600))


def test_aarch64_cpu_kernels_match_their_references_under_qemu(tmp_path):
    cxx, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if cxx is None or qemu is None:
        pytest.skip(f"no aarch64 cross compiler / qemu-aarch64: {CROSS_FIX}")
    exe = tmp_path / "cpu_kernels_check_aarch64"
    _build(cxx, exe, ["-static"])
    r = subprocess.run([qemu, str(exe)], capture_output=True, text=True, timeout=1200)
    _check_output(r)
    assert " portable " in r.stdout and " avx2 " not in r.stdout  # aarch64 runs the portable (NEON) kernels
