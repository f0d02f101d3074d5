// swiglu fast CPU path: OpenMP, fp32 (see rsvlm_edge/swiglu.h).
#include <cmath>

#include "common/host_arrays.h"
#include "common/host_checks.h"
#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {

Status swiglu_cpu(const SwiGluParams& p) {
  RSVLM_RETURN_IF_ERROR(swiglu_validate(p, /*cuda=*/false));
  const host::SwiGluArrays a(p);
#pragma omp parallel for schedule(static) num_threads(host::threads_for(p.n))
  for (int64_t i = 0; i < p.n; ++i) a.out[i] = a.gate[i] / (1.f + std::exp(-a.gate[i])) * a.up[i];
  return Status::Ok();
}

}  // namespace rsvlm_edge
