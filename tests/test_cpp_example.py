"""The C++ API examples (the fused patch embedding; greedy decoding with CpuDecodeStep) build against librsvlm_edge
alone (no Python module) and pass their ctests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cpp_example_builds_and_passes_ctest(tmp_path):
    cmake, ctest = shutil.which("cmake"), shutil.which("ctest")
    if cmake is None or ctest is None:
        pytest.skip("cmake/ctest not found on PATH")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKBUILD")}
    build = tmp_path / "build"

    def run(cmd):
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    run([cmake, "-S", ROOT, "-B", build, *generator, "-DCMAKE_BUILD_TYPE=Release", "-DRSVLM_CUDA=OFF",
         "-DRSVLM_BUILD_PYTHON=OFF", "-DRSVLM_BUILD_EXAMPLES=ON"])
    run([cmake, "--build", build, "-j2"])
    out = run([ctest, "--test-dir", build, "--output-on-failure"])
    assert "100% tests passed" in out and "patch_embed_example" in out and "decode_step_example" in out
