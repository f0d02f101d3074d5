// rms_norm naive reference: plain loops, fp64 sum of squares and products (see rsvlm_edge/rms_norm.h).
#include <cmath>

#include "common/host_arrays.h"
#include "common/host_checks.h"
#include "rsvlm_edge/rms_norm.h"

namespace rsvlm_edge {

Status rms_norm_reference(const RmsNormParams& p) {
  RSVLM_RETURN_IF_ERROR(rms_norm_validate(p, /*cuda=*/false));
  const host::RmsNormArrays a(p);
  for (int64_t t = 0; t < p.rows; ++t) {
    float* x = a.x + t * p.dim;
    if (a.add != nullptr)
      for (int i = 0; i < p.dim; ++i) x[i] = float(double(x[i]) + double(a.add[t * p.dim + i]));
    double ss = 0.0;
    for (int i = 0; i < p.dim; ++i) ss += double(x[i]) * double(x[i]);
    const double inv = 1.0 / std::sqrt(ss / double(p.dim) + double(p.eps));
    for (int i = 0; i < p.dim; ++i) a.out[t * p.dim + i] = float(double(x[i]) * inv * double(a.weight[i]));
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
