// rms_norm naive reference: plain loops, fp64 sum of squares and products (see rsvlm_edge/rms_norm.h).
#include <cmath>

#include "rsvlm_edge/rms_norm.h"

namespace rsvlm_edge {

Status rms_norm_reference(const RmsNormParams& p) {
  Status st = rms_norm_validate(p, /*cuda=*/false);
  if (!st.ok()) return st;
  const float* x = static_cast<const float*>(p.x);       // (T, D)
  const float* w = static_cast<const float*>(p.weight);  // (D)
  float* out = static_cast<float*>(p.out);               // (T, D), may alias x
  for (int64_t t = 0; t < p.rows; ++t) {
    double ss = 0.0;
    for (int i = 0; i < p.dim; ++i) ss += double(x[t * p.dim + i]) * double(x[t * p.dim + i]);
    const double inv = 1.0 / std::sqrt(ss / double(p.dim) + double(p.eps));
    for (int i = 0; i < p.dim; ++i) out[t * p.dim + i] = float(double(x[t * p.dim + i]) * inv * double(w[i]));
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
