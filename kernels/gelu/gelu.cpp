// gelu: argument checks shared by every implementation, and the CUDA stub of CPU-only builds.
#include <string>

#include "common/host_checks.h"
#include "rsvlm_edge/gelu.h"

namespace rsvlm_edge {

const char* gelu_kind_name(GeluKind k) {
  switch (k) {
    case GeluKind::erf:
      return "erf";
    case GeluKind::tanh:
      return "tanh";
    case GeluKind::quick:
      return "quick";
  }
  return "?";
}

Status gelu_validate(const GeluParams& p, bool cuda) {
  if (p.m < 0 || p.n < 0)
    return Status::Invalid("gelu: needs M >= 0 and N >= 0, got M=" + std::to_string(p.m) +
                           ", N=" + std::to_string(p.n));
  if (host::checked_mul(host::checked_mul(p.m, p.n), 4) < 0)
    return Status::Invalid("gelu: M x N = " + std::to_string(p.m) + " x " + std::to_string(p.n) +
                           " elements overflow int64");
  if (p.m > 0 && p.n > 0 && p.x == nullptr) return Status::Invalid("gelu: x must be given");
  if (p.kind != GeluKind::erf && p.kind != GeluKind::tanh && p.kind != GeluKind::quick)
    return Status::Invalid("gelu: kind must be GeluKind::erf, tanh or quick, got " +
                           std::to_string(static_cast<int32_t>(p.kind)));
  const bool dtype_ok =
      cuda ? (p.dtype == DType::f32 || p.dtype == DType::f16 || p.dtype == DType::bf16) : p.dtype == DType::f32;
  if (!dtype_ok)
    return Status::Invalid(std::string("gelu: ") +
                           (cuda ? "CUDA takes float32, float16 or bfloat16" : "CPU takes float32") +
                           " activations, got " + dtype_name(p.dtype));
  return Status::Ok();
}

RSVLM_NO_CUDA_LAUNCHER(gelu, GeluParams)

}  // namespace rsvlm_edge
