// Small fp32 helpers shared by the CPU kernels (header-only, inlined).
#pragma once

#include <cstdint>

namespace rsvlm_edge {
namespace cpu {

// sum_i a[i] * b[i] in fp32 with 8 independent partial sums, so that the compiler vectorises it
// without -ffast-math (the summation order is fixed, hence deterministic).
template <typename TB>
inline float dot(const float* a, const TB* b, int64_t n) {
  float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * static_cast<float>(b[i + j]);
  float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) r += a[i] * static_cast<float>(b[i]);
  return r;
}

}  // namespace cpu
}  // namespace rsvlm_edge
