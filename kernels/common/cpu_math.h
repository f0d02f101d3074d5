// Small fp32 helpers shared by the CPU kernels (header-only, inlined).
#pragma once

#include <cstdint>
#include <cstring>

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

// IEEE binary16 (stored as its uint16 bits) -> float32, exact for every input: normals,
// subnormals, signed zeros, inf and NaN (payload kept).
inline float half_to_float(uint16_t h) {
#if defined(__aarch64__)
  __fp16 v;  // GCC/Clang on aarch64: a single fcvt
  std::memcpy(&v, &h, sizeof(v));
  return static_cast<float>(v);
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24 (exact in fp32)
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  const uint32_t bits = exp == 0x1f ? sign | 0x7f800000u | (man << 13)            // inf, NaN
                                    : sign | ((exp + 112u) << 23) | (man << 13);  // rebias 15 -> 127
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

}  // namespace cpu
}  // namespace rsvlm_edge
