#!/usr/bin/env bash
# Developer build: compiles librsvlm_edge + rsvlm_edge/_C into the source tree so that
# `PYTHONPATH=$PWD python -m pytest` uses this checkout without reinstalling.
# Usage: scripts/dev-build.sh [extra cmake -D options]   (RSVLM_CUDA=OFF to skip nvcc)
# The AddressSanitizer + UBSan build is not made here: tests/test_native_sanitizers.py builds it
# into build/asan (-DRSVLM_SANITIZE=ON) and runs the kernel tests against it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DRSVLM_BUILD_PYTHON=ON \
  -DRSVLM_CUDA="${RSVLM_CUDA:-AUTO}" -DRSVLM_CUDA_ARCHS="${RSVLM_CUDA_ARCHS:-87;90}" \
  -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python)" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$root/rsvlm_edge" "$@" >/dev/null
cmake --build build/dev -j"$(nproc)"
