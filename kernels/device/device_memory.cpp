// device_memory.h in a build without CUDA: every call answers kNotCompiled (device_memory.cu is the CUDA one).
#include "rsvlm_edge/device_memory.h"

namespace rsvlm_edge {

#ifndef RSVLM_WITH_CUDA
namespace {
Status no_cuda() {
  return Status::NotCompiled("this build of rsvlm_edge has no CUDA kernels (rebuild with nvcc: RSVLM_CUDA=ON)");
}
}  // namespace

Status device_alloc(int64_t, void** ptr) {
  if (ptr) *ptr = nullptr;
  return no_cuda();
}
void device_free(void*) noexcept {}
Status device_copy_from_host(void*, const void*, int64_t) { return no_cuda(); }
Status device_copy_to_host(void*, const void*, int64_t) { return no_cuda(); }
Status device_copy(void*, const void*, int64_t) { return no_cuda(); }
Status device_zero(void*, int64_t) { return no_cuda(); }
#endif

}  // namespace rsvlm_edge
