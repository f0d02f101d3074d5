// rms_norm: argument checks shared by every implementation, and the CUDA stub of CPU-only builds.
#include <string>

#include "common/host_checks.h"
#include "rsvlm_edge/rms_norm.h"

namespace rsvlm_edge {

Status rms_norm_validate(const RmsNormParams& p, bool cuda) {
  if (p.rows < 0 || p.dim <= 0)
    return Status::Invalid("rms_norm: needs T >= 0 rows and D >= 1, got T=" + std::to_string(p.rows) +
                           ", D=" + std::to_string(p.dim));
  if (p.rows > 0 && (p.x == nullptr || p.weight == nullptr || p.out == nullptr))
    return Status::Invalid("rms_norm: x, weight and out must be given");
  if (!(p.eps >= 0.f)) return Status::Invalid("rms_norm: eps must be >= 0");
  return host::check_activation_dtype("rms_norm", p.dtype, cuda);
}

RSVLM_NO_CUDA_LAUNCHER(rms_norm, RmsNormParams)

}  // namespace rsvlm_edge
