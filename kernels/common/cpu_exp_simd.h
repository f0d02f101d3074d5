// exp on 8 (AVX2 + FMA) and 16 (AVX-512F) fp32 lanes, shared by the CPU kernels that need it (attention's softmax,
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

#define RSVLM_AVX512_FMA __attribute__((target("avx512f,avx512vl,avx512bw,avx2,fma")))

// exp_nonpositive_ps on 16 lanes (AVX-512F), the same arithmetic lane for lane.
RSVLM_AVX512_FMA inline __m512 exp_nonpositive_ps512(__m512 x) {
  const __m512 tiny = _mm512_set1_ps(-87.3f);
  const __mmask16 under = _mm512_cmp_ps_mask(x, tiny, _CMP_LT_OQ);
  x = _mm512_max_ps(x, tiny);
  const __m512 fx = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                         _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, z, _mm512_add_ps(x, _mm512_set1_ps(1.f)));
  const __m512i n = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~under), y, _mm512_castsi512_ps(n));
}

}  // namespace cpu
}  // namespace rsvlm_edge
