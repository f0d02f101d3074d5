// layer_norm naive reference: plain loops, fp64 mean and variance (see rsvlm_edge/layer_norm.h).
#include <cmath>

#include "common/host_arrays.h"
#include "common/host_checks.h"
#include "rsvlm_edge/layer_norm.h"

namespace rsvlm_edge {

Status layer_norm_reference(const LayerNormParams& p) {
  RSVLM_RETURN_IF_ERROR(layer_norm_validate(p, /*cuda=*/false));
  const host::LayerNormArrays a(p);
  const int64_t d = p.d;
  for (int64_t t = 0; t < p.m; ++t) {
    float* x = a.x + t * d;
    if (a.add != nullptr)
      for (int64_t i = 0; i < d; ++i) x[i] = x[i] + a.add[t * d + i];  // the fp32 residual stream, as stored
    double sum = 0.0;
    for (int64_t i = 0; i < d; ++i) sum += double(x[i]);
    const double mean = sum / double(d);
    double ss = 0.0;
    for (int64_t i = 0; i < d; ++i) ss += (double(x[i]) - mean) * (double(x[i]) - mean);
    const double inv = 1.0 / std::sqrt(ss / double(d) + double(p.eps));
    for (int64_t i = 0; i < d; ++i) {
      const double b = a.beta != nullptr ? double(a.beta[i]) : 0.0;
      a.out[t * d + i] = float((double(x[i]) - mean) * inv * double(a.gamma[i]) + b);
    }
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
