// Public C++ API: library version and build facts. No torch, no Python.
#pragma once

namespace rsvlm_edge {

// Version of the runtime library, e.g. "0.1.0": the Python package version, passed in by CMake
// (RSVLM_VERSION compile definition; see CMakeLists.txt).
const char* version();

// True when this build contains the CUDA kernels (built with nvcc).
bool built_with_cuda();

}  // namespace rsvlm_edge
