// swiglu fast CPU path: the thread pool, fp32 (see rsvlm_edge/swiglu.h).
#include <cmath>

#include "common/host_arrays.h"
#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {

Status swiglu_cpu(const SwiGluParams& p) {
  RSVLM_RETURN_IF_ERROR(swiglu_validate(p, /*cuda=*/false));
  const host::SwiGluArrays a(p);
  host::parallel_chunks(p.n, 4096, host::threads_for(p.n), [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) a.out[i] = a.gate[i] / (1.f + std::exp(-a.gate[i])) * a.up[i];
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
