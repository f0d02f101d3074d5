// swiglu naive reference: one plain loop in fp64 (see rsvlm_edge/swiglu.h).
#include <cmath>

#include "common/host_arrays.h"
#include "common/host_checks.h"
#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {

Status swiglu_reference(const SwiGluParams& p) {
  RSVLM_RETURN_IF_ERROR(swiglu_validate(p, /*cuda=*/false));
  const host::SwiGluArrays a(p);
  for (int64_t i = 0; i < p.n; ++i) {
    const double gi = a.gate[i], ui = a.up[i];
    a.out[i] = float(gi / (1.0 + std::exp(-gi)) * ui);
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
