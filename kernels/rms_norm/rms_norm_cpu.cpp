// rms_norm fast CPU path: the thread pool over rows, fp32 with 8 partial sums, the residual add first (see rsvlm_edge/rms_norm.h).
#include <cmath>

#include "common/cpu_math.h"
#include "common/host_arrays.h"
#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/rms_norm.h"

namespace rsvlm_edge {

Status rms_norm_cpu(const RmsNormParams& p) {
  RSVLM_RETURN_IF_ERROR(rms_norm_validate(p, /*cuda=*/false));
  const host::RmsNormArrays a(p);
  const int d = p.dim;
  host::parallel_for(p.rows, 8, host::threads_for(p.rows * int64_t(d)), [&](int64_t r, int) {
    float* xr = a.x + r * d;
    if (a.add != nullptr) {
      const float* ar = a.add + r * d;
      for (int i = 0; i < d; ++i) xr[i] += ar[i];
    }
    const float inv = 1.f / std::sqrt(cpu::dot(xr, xr, d) / float(d) + p.eps);
    float* o = a.out + r * d;
    for (int i = 0; i < d; ++i) o[i] = xr[i] * inv * a.weight[i];
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
