// swiglu naive reference: one plain loop in fp64 (see rsvlm_edge/swiglu.h).
#include <cmath>

#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {

Status swiglu_reference(const SwiGluParams& p) {
  Status st = swiglu_validate(p, /*cuda=*/false);
  if (!st.ok()) return st;
  const float* g = static_cast<const float*>(p.gate);  // (n)
  const float* u = static_cast<const float*>(p.up);    // (n)
  float* out = static_cast<float*>(p.out);             // (n), may alias gate or up
  for (int64_t i = 0; i < p.n; ++i) {
    const double gi = g[i], ui = u[i];
    out[i] = float(gi / (1.0 + std::exp(-gi)) * ui);
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
