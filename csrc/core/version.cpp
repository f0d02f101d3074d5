#include "rsvlm_edge/version.h"

#ifndef RSVLM_VERSION
#error \
    "RSVLM_VERSION must be defined by the build (CMakeLists.txt: project version from SKBUILD_PROJECT_VERSION or rsvlm_edge/__init__.py)"
#endif

namespace rsvlm_edge {

const char* version() { return RSVLM_VERSION; }

bool built_with_cuda() {
#ifdef RSVLM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace rsvlm_edge
