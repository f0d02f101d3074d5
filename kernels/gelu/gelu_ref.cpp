// gelu naive reference: one plain loop in fp64 with the library's erfc / tanh / exp (see rsvlm_edge/gelu.h).
#include <cmath>

#include "common/host_arrays.h"
#include "common/host_checks.h"
#include "rsvlm_edge/gelu.h"

namespace rsvlm_edge {
namespace {

double gelu_ref(double x, GeluKind kind) {
  if (std::isinf(x)) return x > 0 ? x : -0.0;  // the limits (x * 0 would be NaN)
  switch (kind) {
    case GeluKind::erf:  // x * 0.5 * (1 + erf(x / sqrt 2)), as erfc: no cancellation for x < 0
      return x * 0.5 * std::erfc(-x / std::sqrt(2.0));
    case GeluKind::tanh: {  // 0.5 x (1 + tanh(u)) written as x / (1 + exp(-2u)): the same, without cancellation
      const double u = std::sqrt(2.0 / 3.14159265358979323846) * (x + 0.044715 * x * x * x);
      return x / (1.0 + std::exp(-2.0 * u));
    }
    case GeluKind::quick:
      return x / (1.0 + std::exp(-1.702 * x));
  }
  return x;
}

}  // namespace

Status gelu_reference(const GeluParams& p) {
  RSVLM_RETURN_IF_ERROR(gelu_validate(p, /*cuda=*/false));
  const host::GeluArrays a(p);
  const int64_t n = p.m * p.n;  // validate checked it fits
  for (int64_t i = 0; i < n; ++i) a.x[i] = float(gelu_ref(double(a.x[i]), p.kind));
  return Status::Ok();
}

}  // namespace rsvlm_edge
