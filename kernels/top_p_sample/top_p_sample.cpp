// top_p_sample: argument checks shared by every implementation, and the CUDA stubs of CPU-only builds.
#include <cmath>
#include <string>

#include "common/host_checks.h"
#include "rsvlm_edge/top_p_sample.h"

namespace rsvlm_edge {

Status top_p_sample_validate(const TopPSampleParams& p) {
  if (p.batch < 0 || p.vocab < 1)
    return Status::Invalid("top_p_sample: needs B >= 0 rows of V >= 1 logits, got B=" + std::to_string(p.batch) +
                           ", V=" + std::to_string(p.vocab));
  if (host::checked_mul(p.batch, p.vocab) < 0 || int64_t(p.batch) * p.vocab > (int64_t(1) << 31) - 1)
    return Status::Invalid("top_p_sample: B x V = " + std::to_string(p.batch) + " x " + std::to_string(p.vocab) +
                           " logits are more than 2^31 - 1");
  if (p.batch > 0 && (p.logits == nullptr || p.out == nullptr))
    return Status::Invalid("top_p_sample: logits and out must be given");
  if (std::isnan(p.temperature)) return Status::Invalid("top_p_sample: temperature is NaN");
  if (p.temperature > 0.f && p.batch > 0 && p.uniforms == nullptr)
    return Status::Invalid("top_p_sample: uniforms must be given when temperature > 0");
  if (!(p.top_p > 0.f && p.top_p <= 1.f))
    return Status::Invalid("top_p_sample: top_p must be in (0, 1], got " + std::to_string(p.top_p));
  return Status::Ok();
}

#ifndef RSVLM_WITH_CUDA
size_t top_p_sample_cuda_workspace(int, int) { return 0; }
#endif
RSVLM_NO_CUDA_LAUNCHER(top_p_sample, TopPSampleParams)

}  // namespace rsvlm_edge
