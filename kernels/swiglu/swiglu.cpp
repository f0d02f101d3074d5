// swiglu: argument checks shared by every implementation, and the CUDA stub of CPU-only builds.
#include <string>

#include "common/host_checks.h"
#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {

Status swiglu_validate(const SwiGluParams& p, bool cuda) {
  if (p.n < 0) return Status::Invalid("swiglu: needs n >= 0, got " + std::to_string(p.n));
  if (p.n > 0 && (p.gate == nullptr || p.up == nullptr || p.out == nullptr))
    return Status::Invalid("swiglu: gate, up and out must be given");
  return host::check_activation_dtype("swiglu", p.dtype, cuda);
}

RSVLM_NO_CUDA_LAUNCHER(swiglu, SwiGluParams)

}  // namespace rsvlm_edge
