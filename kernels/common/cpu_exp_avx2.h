// exp on 8 fp32 lanes with AVX2 + FMA, shared by the CPU kernels that need it (attention's softmax,
// swiglu's sigmoid). x86 only: include it inside `#if defined(__x86_64__)`; the functions carry their
// own target attribute, so callers dispatch on cpu_kernels() at run time.
#pragma once

#include <immintrin.h>

#define RSVLM_AVX2_FMA __attribute__((target("avx2,fma")))

namespace rsvlm_edge {
namespace cpu {

// exp(x) on 8 lanes for x <= 0: Cephes' expf (range reduction by ln 2 split in two constants,
// degree-5 polynomial, 2^n from the exponent bits), within 2 ulp of std::exp; x below -87.3 (where
// expf underflows to 0 or a subnormal) returns 0. A NaN lane returns exp(-87.3) (about 1e-38), not NaN:
// a caller that must propagate NaN multiplies by its input (swiglu does).
RSVLM_AVX2_FMA inline __m256 exp_nonpositive_ps(__m256 x) {
  const __m256 tiny = _mm256_set1_ps(-87.3f);
  const __m256 under = _mm256_cmp_ps(x, tiny, _CMP_LT_OQ);
  x = _mm256_max_ps(x, tiny);
  const __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, z, _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  const __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(n)));
}

}  // namespace cpu
}  // namespace rsvlm_edge
