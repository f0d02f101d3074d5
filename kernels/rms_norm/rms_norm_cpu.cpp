// rms_norm fast CPU path: OpenMP over rows, fp32 with 8 partial sums (see rsvlm_edge/rms_norm.h).
#include <cmath>

#include "common/cpu_math.h"
#include "common/host_arrays.h"
#include "common/host_checks.h"
#include "rsvlm_edge/rms_norm.h"

namespace rsvlm_edge {

Status rms_norm_cpu(const RmsNormParams& p) {
  RSVLM_RETURN_IF_ERROR(rms_norm_validate(p, /*cuda=*/false));
  const host::RmsNormArrays a(p);
  const int d = p.dim;
#pragma omp parallel for schedule(static) num_threads(host::threads_for(p.rows * int64_t(d)))
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* xr = a.x + r * d;
    const float inv = 1.f / std::sqrt(cpu::dot(xr, xr, d) / float(d) + p.eps);
    float* o = a.out + r * d;
    for (int i = 0; i < d; ++i) o[i] = xr[i] * inv * a.weight[i];
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
