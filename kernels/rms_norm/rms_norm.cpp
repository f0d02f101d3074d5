// rms_norm: argument checks shared by every implementation, and the CUDA stub of CPU-only builds.
#include <string>

#include "common/host_checks.h"
#include "rsvlm_edge/rms_norm.h"

namespace rsvlm_edge {

Status rms_norm_validate(const RmsNormParams& p, bool cuda) {
  if (p.rows < 0 || p.dim <= 0)
    return Status::Invalid("rms_norm: needs T >= 0 rows and D >= 1, got T=" + std::to_string(p.rows) +
                           ", D=" + std::to_string(p.dim));
  if (p.rows > 0 && (p.x == nullptr || p.weight == nullptr || p.out == nullptr))
    return Status::Invalid("rms_norm: x, weight and out must be given");
  if (!(p.eps >= 0.f)) return Status::Invalid("rms_norm: eps must be >= 0");
  RSVLM_RETURN_IF_ERROR(host::check_activation_dtype("rms_norm", p.dtype, cuda));
  const int64_t rows_bytes = host::checked_mul(host::checked_mul(p.rows, p.dim), dtype_size(p.dtype));
  if (rows_bytes < 0)
    return Status::Invalid("rms_norm: T x D = " + std::to_string(p.rows) + " x " + std::to_string(p.dim) +
                           " elements overflow int64");
  if (p.add == nullptr || p.rows == 0) return Status::Ok();
  // With add, x is written (x += add) and read back, and out is written while x, add and weight are
  // still read: none of them may share memory.
  const int64_t vec_bytes = int64_t(p.dim) * dtype_size(p.dtype);
  if (host::overlaps(p.x, rows_bytes, p.add, rows_bytes) || host::overlaps(p.x, rows_bytes, p.weight, vec_bytes))
    return Status::Invalid("rms_norm: x (updated in place by the add) must not overlap add or weight");
  if (host::overlaps(p.out, rows_bytes, p.x, rows_bytes) || host::overlaps(p.out, rows_bytes, p.add, rows_bytes) ||
      host::overlaps(p.out, rows_bytes, p.weight, vec_bytes))
    return Status::Invalid("rms_norm: with add, out must not overlap x, add or weight; pass a separate output buffer");
  return Status::Ok();
}

RSVLM_NO_CUDA_LAUNCHER(rms_norm, RmsNormParams)

}  // namespace rsvlm_edge
