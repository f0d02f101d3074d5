// layer_norm: argument checks shared by every implementation, and the CUDA stub of CPU-only builds.
#include <cstdint>
#include <string>

#include "common/host_checks.h"
#include "rsvlm_edge/layer_norm.h"

namespace rsvlm_edge {
Status layer_norm_validate(const LayerNormParams& p, bool cuda) {
  if (p.m < 0 || p.d <= 0)
    return Status::Invalid("layer_norm: needs M >= 0 rows and D >= 1, got M=" + std::to_string(p.m) +
                           ", D=" + std::to_string(p.d));
  if (p.m > 0 && (p.x == nullptr || p.gamma == nullptr || p.out == nullptr))
    return Status::Invalid("layer_norm: x, gamma and out must be given");
  if (!(p.eps >= 0.f)) return Status::Invalid("layer_norm: eps must be >= 0");
  const bool dtype_ok =
      cuda ? (p.dtype == DType::f32 || p.dtype == DType::f16 || p.dtype == DType::bf16) : p.dtype == DType::f32;
  if (!dtype_ok)
    return Status::Invalid(std::string("layer_norm: ") +
                           (cuda ? "CUDA takes float32, float16 or bfloat16" : "CPU takes float32") +
                           " activations, got " + dtype_name(p.dtype));
  const int64_t rows_bytes = host::checked_mul(host::checked_mul(p.m, p.d), dtype_size(p.dtype));
  if (rows_bytes < 0)
    return Status::Invalid("layer_norm: M x D = " + std::to_string(p.m) + " x " + std::to_string(p.d) +
                           " elements overflow int64");
  if (p.m == 0) return Status::Ok();
  // Rows are read after they are written (x += add, then the statistics) and out is written while
  // x, add, gamma and beta are still read: no written array may share memory with another one.
  const int64_t vec_bytes = int64_t(p.d) * dtype_size(p.dtype);
  if (host::overlaps(p.out, rows_bytes, p.x, rows_bytes) || host::overlaps(p.out, rows_bytes, p.add, rows_bytes) ||
      host::overlaps(p.out, rows_bytes, p.gamma, vec_bytes) || host::overlaps(p.out, rows_bytes, p.beta, vec_bytes))
    return Status::Invalid("layer_norm: out must not overlap x, add, gamma or beta; pass a separate output buffer");
  if (p.add != nullptr &&
      (host::overlaps(p.x, rows_bytes, p.add, rows_bytes) || host::overlaps(p.x, rows_bytes, p.gamma, vec_bytes) ||
       host::overlaps(p.x, rows_bytes, p.beta, vec_bytes)))
    return Status::Invalid("layer_norm: x (updated in place by the add) must not overlap add, gamma or beta");
  return Status::Ok();
}

RSVLM_NO_CUDA_LAUNCHER(layer_norm, LayerNormParams)

}  // namespace rsvlm_edge
