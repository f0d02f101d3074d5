// rms_norm fast CPU path: OpenMP over rows, fp32 with 8 partial sums (see rsvlm_edge/rms_norm.h).
#include <cmath>

#include "common/cpu_math.h"
#include "rsvlm_edge/rms_norm.h"

namespace rsvlm_edge {

Status rms_norm_cpu(const RmsNormParams& p) {
  Status st = rms_norm_validate(p, /*cuda=*/false);
  if (!st.ok()) return st;
  const float* x = static_cast<const float*>(p.x);       // (T, D)
  const float* w = static_cast<const float*>(p.weight);  // (D)
  float* out = static_cast<float*>(p.out);               // (T, D), may alias x
  const int d = p.dim;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* xr = x + r * d;
    const float inv = 1.f / std::sqrt(cpu::dot(xr, xr, d) / float(d) + p.eps);
    float* o = out + r * d;
    for (int i = 0; i < d; ++i) o[i] = xr[i] * inv * w[i];
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
