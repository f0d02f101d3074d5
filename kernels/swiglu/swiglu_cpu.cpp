// swiglu fast CPU path: OpenMP, fp32 (see rsvlm_edge/swiglu.h).
#include <cmath>

#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {

Status swiglu_cpu(const SwiGluParams& p) {
  Status st = swiglu_validate(p, /*cuda=*/false);
  if (!st.ok()) return st;
  const float* g = static_cast<const float*>(p.gate);  // (n)
  const float* u = static_cast<const float*>(p.up);    // (n)
  float* out = static_cast<float*>(p.out);             // (n), may alias gate or up
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.n; ++i) out[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  return Status::Ok();
}

}  // namespace rsvlm_edge
