// qlinear naive reference: plain loops, exact int64 block dots, fp64 outer sum (see rsvlm_edge/qlinear.h).
//   y[m, n] = sum_b sx[m, b] * sw[n, g(b)] * (sum_{k in b} xq[m, k] * q[n, k]) + bias[n]
#include <algorithm>
#include <cstdint>
#include <vector>

#include "rsvlm_edge/qlinear.h"

namespace rsvlm_edge {

namespace {

// q[n, k] of either weight format, as an integer.
int weight_q(const QLinearParams& p, int64_t n, int64_t k) {
  if (p.format == QWeight::i8) return static_cast<const int8_t*>(p.w)[n * p.k + k];
  const uint8_t byte = static_cast<const uint8_t*>(p.w)[n * (p.k / 2) + k / 2];
  return int(k % 2 == 0 ? byte & 0x0F : byte >> 4) - 8;
}

}  // namespace

Status qlinear_reference(const QLinearParams& p) {
  Status st = qlinear_validate(p, /*cuda=*/false);
  if (!st.ok() || p.m == 0 || p.n == 0) return st;
  const float* x = static_cast<const float*>(p.x);        // (M, K)
  const float* bias = static_cast<const float*>(p.bias);  // (N) or nullptr
  float* out = static_cast<float*>(p.out);                // (M, N)
  const int blocks = qact_blocks(p.k), group = p.k / p.groups;
  std::vector<int8_t> xq(p.k);
  std::vector<float> sx(blocks);
  for (int64_t m = 0; m < p.m; ++m) {
    quantize_activations(x + m * p.k, p.k, xq.data(), sx.data());
    for (int64_t n = 0; n < p.n; ++n) {
      double acc = 0.0;
      for (int b = 0; b < blocks; ++b) {
        int64_t dot = 0;
        const int k0 = b * kQActBlock, k1 = std::min(p.k, k0 + kQActBlock);
        for (int k = k0; k < k1; ++k) dot += int64_t(xq[k]) * weight_q(p, n, k);
        acc += double(sx[b]) * double(p.w_scale[n * p.groups + k0 / group]) * double(dot);
      }
      if (bias) acc += double(bias[n]);
      out[m * p.n + n] = float(acc);
    }
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
