// linear: argument checks shared by every implementation, and the CUDA stub of CPU-only builds.
#include <string>

#include "common/host_checks.h"
#include "rsvlm_edge/linear.h"

namespace rsvlm_edge {

Status linear_validate(const LinearParams& p, bool cuda) {
  if (p.m < 0 || p.n < 0 || p.k <= 0)
    return Status::Invalid("linear: needs M >= 0, N >= 0 and K >= 1, got M=" + std::to_string(p.m) +
                           ", N=" + std::to_string(p.n) + ", K=" + std::to_string(p.k));
  if (cuda && p.w_dtype != DType::i8 && p.w_dtype != p.act_dtype)
    return Status::Invalid(std::string("linear: CUDA takes int8 weights or weights in the activation dtype ") +
                           dtype_name(p.act_dtype) + ", got " + dtype_name(p.w_dtype));
  if (!cuda && p.w_dtype != DType::f32 && p.w_dtype != DType::f16 && p.w_dtype != DType::i8)
    return Status::Invalid(std::string("linear: CPU takes float32, float16 or int8 weights, got ") +
                           dtype_name(p.w_dtype));
  const bool work = p.m > 0 && p.n > 0;
  if (work && (p.x == nullptr || p.w == nullptr || p.out == nullptr))
    return Status::Invalid("linear: x, w and out must be given");
  if (work && p.w_dtype == DType::i8 && p.w_scale == nullptr)
    return Status::Invalid("linear: int8 weights need w_scale (N) float32");
  return host::check_activation_dtype("linear", p.act_dtype, cuda);
}

RSVLM_NO_CUDA_LAUNCHER(linear, LinearParams)

}  // namespace rsvlm_edge
