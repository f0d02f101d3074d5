"""The native layout (issue 8, "Kernels"): every op can be found by its name, with a naive reference,
a fast CPU path, a CUDA kernel, a binding and a test; public headers only under include/rsvlm_edge/;
the library version comes from the Python package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPS = {  # op folder -> the Python bindings it provides (each also as <name>_reference)
    "linear": ["linear"],
    "rms_norm": ["rms_norm"],
    "layer_norm": ["layer_norm"],
    "gelu": ["gelu"],
    "rope": ["rope"],
    "swiglu": ["swiglu"],
    "kv_attention": ["kv_append", "attention_prefill", "attention_decode"],
    "patch_embed": ["patch_embed"],
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_has_reference_cpu_cuda_binding_and_test(op):
    folder = ROOT / "kernels" / op
    for name in (f"{op}.cpp", f"{op}_ref.cpp", f"{op}_cpu.cpp", f"{op}.cu"):
        assert (folder / name).is_file(), f"kernels/{op}/{name} is missing"
    assert (ROOT / "include" / "rsvlm_edge" / f"{op}.h").is_file()
    assert (ROOT / "csrc" / f"bind_{op}.cpp").is_file()
    assert (ROOT / "tests" / f"test_kernels_{op}.py").is_file()
    header = (ROOT / "include" / "rsvlm_edge" / f"{op}.h").read_text()
    assert "_reference(" in header and "_cpu(" in header and "_cuda(" in header, f"{op}.h declares every implementation"
    ref = (folder / f"{op}_ref.cpp").read_text()
    assert "#pragma omp" not in ref and "immintrin" not in ref, "the naive reference has no OpenMP / SIMD"


def test_bindings_expose_every_reference():
    C = pytest.importorskip("rsvlm_edge._C")
    for names in OPS.values():
        for name in names:
            assert callable(getattr(C, name)) and callable(getattr(C, name + "_reference"))


def test_public_headers_live_under_include_only_and_use_the_prefix():
    assert not (ROOT / "csrc" / "include").exists()
    assert not list((ROOT / "kernels").rglob("*.h")) or all(
        p.parent.name == "common" for p in (ROOT / "kernels").rglob("*.h")), "kernels/ holds private headers in common/ only"
    public = {p.name for p in (ROOT / "include" / "rsvlm_edge").iterdir()}
    assert {"kernels.h", "status.h", "dtype.h", "device.h", "version.h"} <= public
    pattern = re.compile(r'#include\s+[<"]([a-z_]+\.h)[>"]')
    for src in [*ROOT.glob("kernels/**/*.c*"), *ROOT.glob("csrc/**/*.c*"), *ROOT.glob("examples/cpp/*.cpp"),
                *ROOT.glob("include/**/*.h")]:
        for inc in pattern.findall(src.read_text()):
            assert inc not in public, f"{src.relative_to(ROOT)} includes {inc!r} without the rsvlm_edge/ prefix"
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"PUBLIC \$\{CMAKE_CURRENT_SOURCE_DIR\}/include\s+PRIVATE \$\{CMAKE_CURRENT_SOURCE_DIR\}/kernels", cmake)


def test_library_version_is_the_package_version():
    C = pytest.importorskip("rsvlm_edge._C")
    init = (Path(C.__file__).parent / "__init__.py").read_text()
    m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", init, re.M)
    if m is None:
        pytest.skip("rsvlm_edge/__init__.py has no literal __version__")
    assert C.version() == m.group(1)
