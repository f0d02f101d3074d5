"""The llama.cpp peer of the CPU decoder benchmark, built on request from the source distribution of
`llama-cpp-python` on the package index (it vendors llama.cpp with `convert_hf_to_gguf.py`, gguf-py,
`llama-bench`, `llama-batched-bench` and `llama-quantize`). Nothing of it is committed or imported by
the project: `ensure_llamacpp(workdir)` downloads the sdist with pip, unpacks it and builds the three
tools with CMake (CPU only, `GGML_NATIVE=ON`: the best code for this CPU, as a user would build it).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("llama-bench", "llama-batched-bench", "llama-quantize")


@dataclass(frozen=True)
class LlamaCpp:
    root: Path  # the vendored llama.cpp source tree
    bin: Path  # its build/bin
    version: str  # llama-cpp-python version of the sdist

    def tool(self, name: str) -> Path:
        return self.bin / name

    @property
    def converter(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    def python_env(self) -> dict[str, str]:
        """Environment for running the converter with the vendored gguf-py."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root / "gguf-py"), env.get("PYTHONPATH", "")])
        return env


def _run(cmd: list[str], log: Path, **kw) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(str, cmd)) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    if r.returncode != 0:
        sys.exit(f"error: `{' '.join(map(str, cmd[:4]))} ...` failed (exit {r.returncode})\nfix: see {log}")


def ensure_llamacpp(workdir: Path, jobs: int | None = None) -> LlamaCpp:
    """Download (pip), unpack and build llama.cpp's CPU tools under ``workdir`` once; reuse them later."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "build.log"
    sdists = sorted(glob.glob(str(workdir / "llama_cpp_python-*.tar.gz")))
    if not sdists:
        print("llama.cpp peer: downloading the llama-cpp-python sdist with pip ...", flush=True)
        _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--no-build-isolation",
              "llama-cpp-python", "-d", str(workdir)], log)
        sdists = sorted(glob.glob(str(workdir / "llama_cpp_python-*.tar.gz")))
    sdist = Path(sdists[-1])
    version = sdist.name[len("llama_cpp_python-"):-len(".tar.gz")]
    src = workdir / sdist.name[:-len(".tar.gz")]
    if not src.exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(workdir, filter="data")
    root = src / "vendor" / "llama.cpp"
    build = root / "build"
    if not all((build / "bin" / t).exists() for t in TOOLS):
        print(f"llama.cpp peer: building {', '.join(TOOLS)} (minutes; log {log}) ...", flush=True)
        _run(["cmake", "-S", str(root), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
              "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
              "-DLLAMA_BUILD_TOOLS=ON", "-DBUILD_SHARED_LIBS=OFF"], log)
        _run(["cmake", "--build", str(build), "-j", str(jobs or os.cpu_count() or 2), "--target", *TOOLS], log)
    return LlamaCpp(root=root, bin=build / "bin", version=version)


if __name__ == "__main__":
    peer = ensure_llamacpp(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/out/llamacpp"))
    print(peer)
