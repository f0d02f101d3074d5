#include "rsvlm_edge/version.h"

namespace rsvlm_edge {

const char* version() { return "0.1.0"; }

bool built_with_cuda() {
#ifdef RSVLM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace rsvlm_edge
