// qgemm naive reference on the unpacked weights: plain loops, exact int64 dots, fp64 outer product (see
// rsvlm_edge/qgemm.h).
//   y[m, n] = sx[m] * sw[n] * (sum_k xq[m, k] * w[n, k]) + bias[n]
#include <cstdint>
#include <string>
#include <vector>

#include "rsvlm_edge/qgemm.h"

namespace rsvlm_edge {

Status qgemm_reference(const QGemmParams& p) {
  Status st = qgemm_validate(p, /*packed=*/false);
  if (!st.ok()) return st;
  for (int64_t i = 0; i < int64_t(p.n) * p.k; ++i)
    if (p.w[i] == -128)
      return Status::Invalid(
          "qgemm_reference: argument 'w' must hold int8 values in [-127, 127] (the symmetric w8 "
          "format), got -128 at (" +
          std::to_string(i / p.k) + ", " + std::to_string(i % p.k) + ")");
  if (p.m == 0) return st;
  std::vector<int8_t> xq(p.k);
  for (int64_t m = 0; m < p.m; ++m) {
    const float sx = qgemm_quantize_row(p.x + m * p.k, p.k, xq.data());
    for (int64_t n = 0; n < p.n; ++n) {
      int64_t dot = 0;
      for (int64_t k = 0; k < p.k; ++k) dot += int64_t(xq[k]) * int64_t(p.w[n * p.k + k]);
      double acc = double(sx) * double(p.w_scale[n]) * double(dot);
      if (p.bias) acc += double(p.bias[n]);
      p.out[m * p.n + n] = float(acc);
    }
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
