// linear naive reference: plain loops, fp64 accumulation (see rsvlm_edge/linear.h).
//   y[m, n] = (sum_k x[m, k] * float(W[n, k])) * scale[n] + bias[n]
#include <cstdint>

#include "common/cpu_math.h"
#include "rsvlm_edge/linear.h"

namespace rsvlm_edge {

namespace {

// W[row, col] as a double: float32, float16 (exact conversion) or int8 (scale applied later).
double weight_at(const LinearParams& p, int64_t row, int64_t col) {
  const int64_t i = row * p.k + col;
  switch (p.w_dtype) {
    case DType::f16:
      return cpu::half_to_float(static_cast<const uint16_t*>(p.w)[i]);
    case DType::i8:
      return static_cast<const int8_t*>(p.w)[i];
    default:
      return static_cast<const float*>(p.w)[i];
  }
}

}  // namespace

Status linear_reference(const LinearParams& p) {
  Status st = linear_validate(p, /*cuda=*/false);
  if (!st.ok()) return st;
  const float* x = static_cast<const float*>(p.x);        // (M, K)
  const float* bias = static_cast<const float*>(p.bias);  // (N) or nullptr
  float* out = static_cast<float*>(p.out);                // (M, N)
  for (int64_t m = 0; m < p.m; ++m) {
    for (int64_t n = 0; n < p.n; ++n) {
      double acc = 0.0;
      for (int64_t k = 0; k < p.k; ++k) acc += double(x[m * p.k + k]) * weight_at(p, n, k);
      if (p.w_dtype == DType::i8) acc *= double(p.w_scale[n]);
      if (bias) acc += double(bias[n]);
      out[m * p.n + n] = float(acc);
    }
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
