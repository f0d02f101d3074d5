"""The native kernel tests under AddressSanitizer + UndefinedBehaviorSanitizer (issue 7 section 3).

Builds a separate CPU-only build of librsvlm_edge + rsvlm_edge._C with -DRSVLM_SANITIZE=ON
(-fsanitize=address,undefined, no recovery) into build/asan (RSVLM_ASAN_BUILD_DIR overrides; reused
incrementally), puts it into a copy of the Python package in a temp dir, and runs the kernel tests,
the hardening tests and the property campaign against it in a subprocess with libasan preloaded
(and libstdc++; python itself is not instrumented). Any ASan / UBSan report aborts that run: the test asserts exit 0
and that the sanitized _C was the one imported. Skipped (with the reason) when cmake, ninja, a C++
compiler, pybind11 or libasan is missing, or when RSVLM_SKIP_SANITIZERS=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.campaign("native")

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_kernels_linear.py", "tests/test_kernels_rms_norm.py", "tests/test_kernels_rope.py",
         "tests/test_kernels_swiglu.py", "tests/test_kernels_kv_attention.py", "tests/test_kernels_patch_embed.py",
         "tests/test_kernels_qlinear.py", "tests/test_kernels_qgemm.py", "tests/test_kernels_layer_norm.py", "tests/test_kernels_gelu.py",
         "tests/test_native_hardening.py", "tests/test_native_properties.py"]

# Run by the child interpreter: import the sanitized package from PKG first (never an installed or
# in-tree one), prove it, then run pytest. Editable-install finders are dropped from sys.meta_path so
# that they cannot redirect `rsvlm_edge` to another build.
BOOTSTRAP = r"""
import os, sys
pkg = os.environ["RSVLM_ASAN_PKG"]
sys.path.insert(0, pkg)
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                    and not type(f).__name__.startswith("ScikitBuild")]
import rsvlm_edge._C as C
assert C.__file__.startswith(pkg), f"imported {C.__file__}, not the sanitized build in {pkg}"
assert C.built_with_sanitizers(), f"{C.__file__} was not built with RSVLM_SANITIZE=ON"
print("sanitized _C:", C.__file__, flush=True)
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found on PATH: cannot build the sanitizer build of the extension")
    return path


def _runtime(compiler, name):
    """Absolute path of a runtime library as `compiler -print-file-name` finds it, or skip."""
    path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not path or not os.path.isabs(path) or not os.path.exists(path):
        pytest.skip(f"{name} not found by {compiler} -print-file-name (install the compiler's ASan runtime)")
    return os.path.realpath(path)


def _preload():
    """libasan first (python is not instrumented), then libstdc++: without it ASan's __cxa_throw
    interceptor finds no real __cxa_throw and aborts on the first C++ exception (our ValueErrors)."""
    cc = os.environ.get("CC") or shutil.which("gcc")
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if cc is None or cxx is None:
        pytest.skip("gcc / g++ not found: cannot locate libasan.so and libstdc++.so.6 to preload")
    return f"{_runtime(cc, 'libasan.so')} {_runtime(cxx, 'libstdc++.so.6')}"


def test_kernel_tests_pass_under_asan_and_ubsan(tmp_path):
    if os.environ.get("RSVLM_SKIP_SANITIZERS") == "1":
        pytest.skip("RSVLM_SKIP_SANITIZERS=1")
    if os.environ.get("RSVLM_ASAN_CHILD") == "1":
        pytest.skip("already inside the sanitizer run")
    cmake, _ = _tool("cmake"), _tool("ninja")
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler (c++ / $CXX) on PATH")
    pybind11 = pytest.importorskip("pybind11", reason="pybind11 is needed to build the extension")
    preload = _preload()

    env = {k: v for k, v in os.environ.items() if not k.startswith("SKBUILD")}
    build = Path(os.environ.get("RSVLM_ASAN_BUILD_DIR", ROOT / "build" / "asan"))
    lib_dir = build / "lib"

    def run(cmd, **kw):
        r = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, **kw)
        assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
        return r

    run([cmake, "-S", ROOT, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
         "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g", "-DRSVLM_SANITIZE=ON", "-DRSVLM_CUDA=OFF",
         "-DRSVLM_BUILD_PYTHON=ON", "-DRSVLM_BUILD_EXAMPLES=OFF", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
         f"-DPython_EXECUTABLE={sys.executable}", f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={lib_dir}"])
    run([cmake, "--build", build, "-j", str(max(2, os.cpu_count() or 2))])

    # A copy of the Python package with the sanitized native libraries in place of any others.
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "rsvlm_edge", pkg / "rsvlm_edge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.so.*", "*.pyd"))
    built = sorted(p for p in lib_dir.iterdir() if p.name.startswith(("_C.", "librsvlm_edge")))
    assert any(p.name.startswith("_C.") for p in built), f"no _C extension in {lib_dir}: {built}"
    for p in built:
        shutil.copy2(p, pkg / "rsvlm_edge" / p.name)

    child_env = dict(env)
    child_env.update(
        RSVLM_ASAN_PKG=str(pkg), RSVLM_ASAN_CHILD="1", LD_PRELOAD=preload,
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:detect_odr_violation=0",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1", OMP_NUM_THREADS="2", PYTHONDONTWRITEBYTECODE="1",
    )
    child_env.pop("PYTHONPATH", None)
    # --capture=sys: pytest must not redirect fd 2, where the sanitizers write their report before aborting.
    cmd = [sys.executable, "-c", BOOTSTRAP, "-q", "-x", "--capture=sys", "-p", "no:cacheprovider", "-p", "no:faulthandler",
           "--import-mode=importlib",
           "-W", "ignore::DeprecationWarning", *[str(ROOT / t) for t in TESTS]]
    r = subprocess.run(cmd, env=child_env, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    report = ""
    for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "AddressSanitizer:"):
        if marker in r.stderr:  # the sanitizer's own report, first
            start = r.stderr.index(marker)
            report = "--- sanitizer report ---\n" + r.stderr[max(0, start - 200) : start + 8000] + "\n"
            break
    log = f"exit {r.returncode}\n{report}--- stdout ---\n{r.stdout[-8000:]}\n--- stderr ---\n{r.stderr[-8000:]}"
    assert r.returncode == 0, log
    assert "sanitized _C:" in r.stdout and " passed" in r.stdout, log
