// gelu fast CPU path: the thread pool over chunks of the (M * N) elements, fp32, in place (see
// rsvlm_edge/gelu.h). Per CPU kernel set (cpu_kernels(), rsvlm_edge/linear.h): avx512vnni -> 16 lanes
// (masked tail), avx2 -> 8 lanes (the last < 8 elements through the scalar code), portable -> the
// scalar code (the same formulas with std::exp).
//
// erf: with Phi(x) = 0.5 (1 + erf(x / sqrt 2)), gelu(x) = x Phi(x).
//   |x| <= 1:  erf(x / sqrt 2) = x P(x^2), P of degree 5 in x^2; gelu = x/2 + (x/2) erf (one rounding),
//              given the sign of x (the sign of the result; -0 stays -0)
//   |x| > 1:   q = 1 - Phi(|x|) = 0.5 erfc(|x| / sqrt 2) = exp(-x^2 / 2) N(|x|) / D(|x|), N / D of degree
//              4 / 5; gelu = x - x q for x > 0, x q for x < 0. No 1 + erf cancellation: the negative
//              tail keeps its relative accuracy. x^2 is split exactly (h + l; l from an FMA, in the
//              scalar code from fp64) so that exp(-x^2 / 2) = exp(-h / 2) (1 - l / 2) is not off by the
//              rounding of x^2.
//   P, N and D are least-squares fits in fp64 iterated towards minimax (Lawson weights), then rounded
//   to fp32; before rounding, max relative error 7.1e-10 for x P on [0, 1] and 3.1e-10 for N / D on
//   [1, 14]. Beyond
//   |x| = 13.2 exp(-x^2 / 2) underflows (x86 lanes: q = 0; scalar: from |x| = 14) and gelu is x or -0.
//   Measured against the fp64 reference (rounded to fp32) over 2e6 points of [-16, 16], every kernel
//   set: at most 1 ulp apart (2.4e-7 absolute, 1.2e-7 * max(1, |x|)); tanh and quick 1.7e-7 * max(1, |x|)
//   (tests/test_kernels_gelu.py holds all three to 3e-7 * max(1, |x|)).
// tanh:  0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
// quick: x sigmoid(1.702 x).
//   sigmoid(z) from e = exp(-|z|) (cpu::exp_nonpositive_ps on x86, never overflows): 1 / (1 + e) for
//   z >= 0, e / (1 + e) below.
// Special values: the products use x clamped to +-FLT_MAX (NaN kept), so act(-inf) = -FLT_MAX * 0 = -0
// instead of -inf * 0 = NaN, and act(+inf) = +inf; NaN gives NaN.
#include <cfloat>
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#define RSVLM_X86 1
#include <immintrin.h>

#include "common/cpu_exp_simd.h"
#endif

#include "common/host_arrays.h"
#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/gelu.h"
#include "rsvlm_edge/linear.h"

namespace rsvlm_edge {
namespace {

// erf(x / sqrt 2) = x * P(x^2) on |x| <= 1 (increasing powers of x^2).
constexpr float kP0 = 7.978845835e-01f, kP1 = -1.329807192e-01f, kP2 = 1.994664781e-02f, kP3 = -2.372660441e-03f,
                kP4 = 2.269733232e-04f, kP5 = -1.530862755e-05f;
// 0.5 erfc(a / sqrt 2) exp(a^2 / 2) = N(a) / D(a) on 1 <= a <= 14 (increasing powers of a).
constexpr float kN0 = 5.000150800e-01f, kN1 = 4.738241136e-01f, kN2 = 2.124331295e-01f, kN3 = 5.130074546e-02f,
                kN4 = 6.039187312e-03f;
constexpr float kD1 = 1.745710015e+00f, kD2 = 1.317254066e+00f, kD3 = 5.475676656e-01f, kD4 = 1.285941750e-01f,
                kD5 = 1.513796020e-02f;
constexpr float kTailClamp = 14.f;  // exp(-14^2 / 2) underflows: q = 0 from here on
// tanh: 2u = x (kT0 + kT1 x^2), kT0 = 2 sqrt(2/pi), kT1 = kT0 * 0.044715.
constexpr float kT0 = 1.5957691216057308f, kT1 = 0.0713548162726009f;
constexpr float kQuick = 1.702f;

// ---------------------------------------------------------------- scalar (portable, and the AVX2 tail)

inline float gelu_erf_scalar(float x) {
  const float ax = std::fabs(x);
  if (ax <= 1.f) {
    const float s = x * x;
    const float p = ((((kP5 * s + kP4) * s + kP3) * s + kP2) * s + kP1) * s + kP0;
    const float hx = 0.5f * x;
    return std::copysign(hx + hx * (x * p), x);  // one rounding; -0 stays -0 (-0 + 0 would be +0)
  }
  if (std::isnan(x)) return x;
  if (ax >= kTailClamp) return x > 0.f ? x : -0.f;  // q underflows (and +-inf * 0 would be NaN)
  const float a = ax;
  const double hd = double(a) * double(a);  // exact
  const float h = static_cast<float>(hd), l = static_cast<float>(hd - double(h));
  float e = std::exp(-0.5f * h);
  e -= e * (0.5f * l);
  const float num = (((kN4 * a + kN3) * a + kN2) * a + kN1) * a + kN0;
  const float den = ((((kD5 * a + kD4) * a + kD3) * a + kD2) * a + kD1) * a + 1.f;
  const float q = e * (num / den);
  return x > 0.f ? x - x * q : x * q;
}

// x * sigmoid(z) for z of the sign of x.
inline float x_sigmoid_scalar(float x, float z) {
  if (std::isinf(x)) return x > 0.f ? x : -0.f;
  const float e = std::exp(-std::fabs(z));
  return x * ((z >= 0.f ? 1.f : e) / (1.f + e));
}

template <GeluKind K>
inline float gelu_scalar(float x) {
  if constexpr (K == GeluKind::erf) return gelu_erf_scalar(x);
  if constexpr (K == GeluKind::tanh) return x_sigmoid_scalar(x, x * (kT0 + kT1 * (x * x)));
  return x_sigmoid_scalar(x, kQuick * x);
}

// x[i] = act(x[i]) for i in [begin, end): x (M * N) fp32, in place.
using GeluRangeFn = void (*)(float* x, int64_t begin, int64_t end);

template <GeluKind K>
void gelu_portable(float* x, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) x[i] = gelu_scalar<K>(x[i]);
}

#if RSVLM_X86
// ---------------------------------------------------------------- AVX2 + FMA, 8 lanes

RSVLM_AVX2_FMA inline __m256 clamp_finite_ps(__m256 x) {  // to +-FLT_MAX; NaN stays NaN (it is the 2nd operand)
  return _mm256_min_ps(_mm256_set1_ps(FLT_MAX), _mm256_max_ps(_mm256_set1_ps(-FLT_MAX), x));
}

RSVLM_AVX2_FMA inline __m256 gelu_erf_ps(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  const __m256 ax = _mm256_andnot_ps(sign, x);
  // |x| <= 1
  const __m256 s = _mm256_mul_ps(x, x);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kP5), s, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(kP0));
  const __m256 hx = _mm256_mul_ps(x, _mm256_set1_ps(0.5f));
  const __m256 small =  // x/2 + (x/2) erf in one rounding, with the sign of x (so that -0 stays -0)
      _mm256_or_ps(_mm256_andnot_ps(sign, _mm256_fmadd_ps(hx, _mm256_mul_ps(x, p), hx)), _mm256_and_ps(sign, x));
  // |x| > 1 (a NaN lane computes with a = 14; its result takes the NaN from xm below)
  const __m256 a = _mm256_min_ps(ax, _mm256_set1_ps(kTailClamp));
  const __m256 h = _mm256_mul_ps(a, a);
  const __m256 l = _mm256_fmsub_ps(a, a, h);
  __m256 e = cpu::exp_nonpositive_ps(_mm256_mul_ps(h, _mm256_set1_ps(-0.5f)));
  e = _mm256_fnmadd_ps(e, _mm256_mul_ps(l, _mm256_set1_ps(0.5f)), e);
  __m256 num = _mm256_fmadd_ps(_mm256_set1_ps(kN4), a, _mm256_set1_ps(kN3));
  num = _mm256_fmadd_ps(num, a, _mm256_set1_ps(kN2));
  num = _mm256_fmadd_ps(num, a, _mm256_set1_ps(kN1));
  num = _mm256_fmadd_ps(num, a, _mm256_set1_ps(kN0));
  __m256 den = _mm256_fmadd_ps(_mm256_set1_ps(kD5), a, _mm256_set1_ps(kD4));
  den = _mm256_fmadd_ps(den, a, _mm256_set1_ps(kD3));
  den = _mm256_fmadd_ps(den, a, _mm256_set1_ps(kD2));
  den = _mm256_fmadd_ps(den, a, _mm256_set1_ps(kD1));
  den = _mm256_fmadd_ps(den, a, _mm256_set1_ps(1.f));
  const __m256 q = _mm256_mul_ps(e, _mm256_div_ps(num, den));
  const __m256 xm = clamp_finite_ps(x);
  const __m256 pos = _mm256_fnmadd_ps(xm, q, x);  // x - x q; +inf - FLT_MAX * 0 = +inf
  const __m256 neg = _mm256_mul_ps(xm, q);        // x q; -inf -> -FLT_MAX * 0 = -0
  const __m256 tail = _mm256_blendv_ps(neg, pos, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
  return _mm256_blendv_ps(tail, small, _mm256_cmp_ps(ax, _mm256_set1_ps(1.f), _CMP_LE_OQ));
}

// x * sigmoid(z), z of the sign of x, computed from xm = clamp_finite_ps(x).
RSVLM_AVX2_FMA inline __m256 x_sigmoid_ps(__m256 x, __m256 xm, __m256 z) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 e = cpu::exp_nonpositive_ps(_mm256_or_ps(z, _mm256_set1_ps(-0.f)));  // exp(-|z|)
  const __m256 num = _mm256_blendv_ps(e, one, _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GE_OQ));
  const __m256 r = _mm256_mul_ps(xm, _mm256_div_ps(num, _mm256_add_ps(one, e)));
  return _mm256_blendv_ps(r, x, _mm256_cmp_ps(x, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ));  // +inf stays +inf
}

template <GeluKind K>
RSVLM_AVX2_FMA inline __m256 gelu_ps(__m256 x) {
  if constexpr (K == GeluKind::erf) return gelu_erf_ps(x);
  const __m256 xm = clamp_finite_ps(x);
  if constexpr (K == GeluKind::tanh)
    return x_sigmoid_ps(
        x, xm, _mm256_mul_ps(xm, _mm256_fmadd_ps(_mm256_set1_ps(kT1), _mm256_mul_ps(xm, xm), _mm256_set1_ps(kT0))));
  return x_sigmoid_ps(x, xm, _mm256_mul_ps(_mm256_set1_ps(kQuick), xm));
}

template <GeluKind K>
RSVLM_AVX2_FMA void gelu_avx2(float* x, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) _mm256_storeu_ps(x + i, gelu_ps<K>(_mm256_loadu_ps(x + i)));
  gelu_portable<K>(x, i, end);
}

// ---------------------------------------------------------------- AVX-512F, 16 lanes (same arithmetic)

RSVLM_AVX512_FMA inline __m512 clamp_finite_ps512(__m512 x) {
  return _mm512_min_ps(_mm512_set1_ps(FLT_MAX), _mm512_max_ps(_mm512_set1_ps(-FLT_MAX), x));
}

RSVLM_AVX512_FMA inline __m512 gelu_erf_ps512(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 s = _mm512_mul_ps(x, x);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kP5), s, _mm512_set1_ps(kP4));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(kP3));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(kP2));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(kP1));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(kP0));
  const __m512 hx = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
  const __m512i sign = _mm512_set1_epi32(int32_t(0x80000000u));
  const __m512 small = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(  // (sign & x) | (~sign & r)
      sign, _mm512_castps_si512(x), _mm512_castps_si512(_mm512_fmadd_ps(hx, _mm512_mul_ps(x, p), hx)), 0xCA));
  const __m512 a = _mm512_min_ps(ax, _mm512_set1_ps(kTailClamp));
  const __m512 h = _mm512_mul_ps(a, a);
  const __m512 l = _mm512_fmsub_ps(a, a, h);
  __m512 e = cpu::exp_nonpositive_ps512(_mm512_mul_ps(h, _mm512_set1_ps(-0.5f)));
  e = _mm512_fnmadd_ps(e, _mm512_mul_ps(l, _mm512_set1_ps(0.5f)), e);
  __m512 num = _mm512_fmadd_ps(_mm512_set1_ps(kN4), a, _mm512_set1_ps(kN3));
  num = _mm512_fmadd_ps(num, a, _mm512_set1_ps(kN2));
  num = _mm512_fmadd_ps(num, a, _mm512_set1_ps(kN1));
  num = _mm512_fmadd_ps(num, a, _mm512_set1_ps(kN0));
  __m512 den = _mm512_fmadd_ps(_mm512_set1_ps(kD5), a, _mm512_set1_ps(kD4));
  den = _mm512_fmadd_ps(den, a, _mm512_set1_ps(kD3));
  den = _mm512_fmadd_ps(den, a, _mm512_set1_ps(kD2));
  den = _mm512_fmadd_ps(den, a, _mm512_set1_ps(kD1));
  den = _mm512_fmadd_ps(den, a, _mm512_set1_ps(1.f));
  const __m512 q = _mm512_mul_ps(e, _mm512_div_ps(num, den));
  const __m512 xm = clamp_finite_ps512(x);
  const __m512 pos = _mm512_fnmadd_ps(xm, q, x);
  const __m512 neg = _mm512_mul_ps(xm, q);
  const __m512 tail = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), neg, pos);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(1.f), _CMP_LE_OQ), tail, small);
}

RSVLM_AVX512_FMA inline __m512 x_sigmoid_ps512(__m512 x, __m512 xm, __m512 z) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 neg_abs_z =
      _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(z), _mm512_set1_epi32(int32_t(0x80000000u))));
  const __m512 e = cpu::exp_nonpositive_ps512(neg_abs_z);
  const __m512 num = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GE_OQ), e, one);
  const __m512 r = _mm512_mul_ps(xm, _mm512_div_ps(num, _mm512_add_ps(one, e)));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ), r, x);
}

template <GeluKind K>
RSVLM_AVX512_FMA inline __m512 gelu_ps512(__m512 x) {
  if constexpr (K == GeluKind::erf) return gelu_erf_ps512(x);
  const __m512 xm = clamp_finite_ps512(x);
  if constexpr (K == GeluKind::tanh)
    return x_sigmoid_ps512(
        x, xm, _mm512_mul_ps(xm, _mm512_fmadd_ps(_mm512_set1_ps(kT1), _mm512_mul_ps(xm, xm), _mm512_set1_ps(kT0))));
  return x_sigmoid_ps512(x, xm, _mm512_mul_ps(_mm512_set1_ps(kQuick), xm));
}

template <GeluKind K>
RSVLM_AVX512_FMA void gelu_avx512(float* x, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) _mm512_storeu_ps(x + i, gelu_ps512<K>(_mm512_loadu_ps(x + i)));
  if (i < end) {  // masked tail: the lanes past `end` are neither read nor written
    const __mmask16 m = static_cast<__mmask16>((1u << (end - i)) - 1u);
    _mm512_mask_storeu_ps(x + i, m, gelu_ps512<K>(_mm512_maskz_loadu_ps(m, x + i)));
  }
}
#endif

// The range body for `K` and the active CPU kernel set.
template <GeluKind K>
GeluRangeFn choose_for_kind() {
#if RSVLM_X86
  switch (cpu_kernels()) {
    case CpuKernels::avx512vnni:
    case CpuKernels::amx:
      return gelu_avx512<K>;
    case CpuKernels::avx2:
      return gelu_avx2<K>;
    default:
      break;
  }
#endif
  return gelu_portable<K>;
}

GeluRangeFn choose_gelu(GeluKind kind) {
  switch (kind) {
    case GeluKind::tanh:
      return choose_for_kind<GeluKind::tanh>();
    case GeluKind::quick:
      return choose_for_kind<GeluKind::quick>();
    default:
      return choose_for_kind<GeluKind::erf>();
  }
}

}  // namespace

Status gelu_cpu(const GeluParams& p) {
  RSVLM_RETURN_IF_ERROR(gelu_validate(p, /*cuda=*/false));
  const host::GeluArrays a(p);
  const int64_t n = p.m * p.n;  // validate checked it fits
  const GeluRangeFn range = choose_gelu(p.kind);
  host::parallel_chunks(n, 4096, host::threads_for(n),
                        [&](int64_t begin, int64_t end, int) { range(a.x, begin, end); });
  return Status::Ok();
}

}  // namespace rsvlm_edge
