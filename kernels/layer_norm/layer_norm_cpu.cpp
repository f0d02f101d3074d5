// layer_norm fast CPU path: the thread pool over rows, fp32 two-pass statistics (see
// rsvlm_edge/layer_norm.h). One row body per CPU kernel set (cpu_kernels(), rsvlm_edge/linear.h):
// avx512vnni -> 16 lanes (masked tail), avx2 -> 8 lanes (scalar tail), portable -> plain C++ with 8
// partial sums (vectorised by the compiler: NEON on aarch64). Each body: x += add (stored back) fused
// with the sum, mean = sum / D, var = sum((x - mean)^2) / D, out = (x - mean) * rstd * gamma + beta.
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#define RSVLM_X86 1
#include <immintrin.h>

#include "common/cpu_exp_simd.h"  // RSVLM_AVX2_FMA, RSVLM_AVX512_FMA
#endif

#include "common/host_arrays.h"
#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/layer_norm.h"
#include "rsvlm_edge/linear.h"

namespace rsvlm_edge {
namespace {

// One row: x (D) += add (D, or nullptr) in place, then out (D) = LayerNorm(x) * gamma (D) + beta (D, or
// nullptr). d >= 1.
using LayerNormRowFn = void (*)(float* x, const float* add, const float* gamma, const float* beta, float* out,
                                int64_t d, float eps);

// sum of 8 partial sums in a fixed order.
inline float sum8(const float s[8]) { return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])); }

void row_portable(float* x, const float* add, const float* gamma, const float* beta, float* out, int64_t d, float eps) {
  float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t i = 0;
  if (add != nullptr) {
    for (; i + 8 <= d; i += 8)
      for (int j = 0; j < 8; ++j) {
        x[i + j] += add[i + j];
        s[j] += x[i + j];
      }
  } else {
    for (; i + 8 <= d; i += 8)
      for (int j = 0; j < 8; ++j) s[j] += x[i + j];
  }
  float sum = sum8(s);
  for (; i < d; ++i) {
    if (add != nullptr) x[i] += add[i];
    sum += x[i];
  }
  const float mean = sum / static_cast<float>(d);
  float q[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (i = 0; i + 8 <= d; i += 8)
    for (int j = 0; j < 8; ++j) {
      const float dv = x[i + j] - mean;
      q[j] += dv * dv;
    }
  float ss = sum8(q);
  for (; i < d; ++i) ss += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
  if (beta != nullptr)
    for (i = 0; i < d; ++i) out[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
  else
    for (i = 0; i < d; ++i) out[i] = (x[i] - mean) * rstd * gamma[i];
}

#if RSVLM_X86
RSVLM_AVX2_FMA inline float hsum256(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// 8 lanes, two accumulators per pass; the last d % 8 elements in scalar code.
RSVLM_AVX2_FMA void row_avx2(float* x, const float* add, const float* gamma, const float* beta, float* out, int64_t d,
                             float eps) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  if (add != nullptr) {
    for (; i + 16 <= d; i += 16) {
      const __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(add + i));
      const __m256 v1 = _mm256_add_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(add + i + 8));
      _mm256_storeu_ps(x + i, v0);
      _mm256_storeu_ps(x + i + 8, v1);
      a0 = _mm256_add_ps(a0, v0);
      a1 = _mm256_add_ps(a1, v1);
    }
    for (; i + 8 <= d; i += 8) {
      const __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(add + i));
      _mm256_storeu_ps(x + i, v0);
      a0 = _mm256_add_ps(a0, v0);
    }
  } else {
    for (; i + 16 <= d; i += 16) {
      a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
      a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
    }
    for (; i + 8 <= d; i += 8) a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
  }
  float sum = hsum256(_mm256_add_ps(a0, a1));
  for (; i < d; ++i) {
    if (add != nullptr) x[i] += add[i];
    sum += x[i];
  }
  const float mean = sum / static_cast<float>(d);
  const __m256 vm = _mm256_set1_ps(mean);
  a0 = _mm256_setzero_ps();
  a1 = _mm256_setzero_ps();
  for (i = 0; i + 16 <= d; i += 16) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm), d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm);
    a0 = _mm256_fmadd_ps(d0, d0, a0);
    a1 = _mm256_fmadd_ps(d1, d1, a1);
  }
  for (; i + 8 <= d; i += 8) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
    a0 = _mm256_fmadd_ps(d0, d0, a0);
  }
  float ss = hsum256(_mm256_add_ps(a0, a1));
  for (; i < d; ++i) ss += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
  const __m256 vr = _mm256_set1_ps(rstd);
  for (i = 0; i + 8 <= d; i += 8) {
    const __m256 y =
        _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vr), _mm256_loadu_ps(gamma + i));
    _mm256_storeu_ps(out + i, beta != nullptr ? _mm256_add_ps(y, _mm256_loadu_ps(beta + i)) : y);
  }
  for (; i < d; ++i) out[i] = (x[i] - mean) * rstd * gamma[i] + (beta != nullptr ? beta[i] : 0.f);
}

// 16 lanes; the last d % 16 elements through masked loads and stores (no scalar tail).
RSVLM_AVX512_FMA void row_avx512(float* x, const float* add, const float* gamma, const float* beta, float* out,
                                 int64_t d, float eps) {
  const int64_t full = d - d % 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (d % 16)) - 1u);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t i = 0;
  if (add != nullptr) {
    for (; i + 32 <= d; i += 32) {
      const __m512 v0 = _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(add + i));
      const __m512 v1 = _mm512_add_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(add + i + 16));
      _mm512_storeu_ps(x + i, v0);
      _mm512_storeu_ps(x + i + 16, v1);
      a0 = _mm512_add_ps(a0, v0);
      a1 = _mm512_add_ps(a1, v1);
    }
    for (; i < full; i += 16) {
      const __m512 v0 = _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(add + i));
      _mm512_storeu_ps(x + i, v0);
      a0 = _mm512_add_ps(a0, v0);
    }
    if (tail != 0) {
      const __m512 v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(tail, x + i), _mm512_maskz_loadu_ps(tail, add + i));
      _mm512_mask_storeu_ps(x + i, tail, v0);
      a1 = _mm512_add_ps(a1, v0);  // masked-off lanes are 0 + 0
    }
  } else {
    for (; i + 32 <= d; i += 32) {
      a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x + i));
      a1 = _mm512_add_ps(a1, _mm512_loadu_ps(x + i + 16));
    }
    for (; i < full; i += 16) a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x + i));
    if (tail != 0) a1 = _mm512_add_ps(a1, _mm512_maskz_loadu_ps(tail, x + i));
  }
  const float mean = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) / static_cast<float>(d);
  const __m512 vm = _mm512_set1_ps(mean);
  a0 = _mm512_setzero_ps();
  a1 = _mm512_setzero_ps();
  for (i = 0; i + 32 <= d; i += 32) {
    const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(x + i), vm), d1 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm);
    a0 = _mm512_fmadd_ps(d0, d0, a0);
    a1 = _mm512_fmadd_ps(d1, d1, a1);
  }
  for (; i < full; i += 16) {
    const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(x + i), vm);
    a0 = _mm512_fmadd_ps(d0, d0, a0);
  }
  if (tail != 0) {
    const __m512 d0 = _mm512_maskz_sub_ps(tail, _mm512_maskz_loadu_ps(tail, x + i), vm);  // 0 off the tail
    a1 = _mm512_fmadd_ps(d0, d0, a1);
  }
  const float ss = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  const __m512 vr = _mm512_set1_ps(1.f / std::sqrt(ss / static_cast<float>(d) + eps));
  for (i = 0; i < full; i += 16) {
    const __m512 y =
        _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vr), _mm512_loadu_ps(gamma + i));
    _mm512_storeu_ps(out + i, beta != nullptr ? _mm512_add_ps(y, _mm512_loadu_ps(beta + i)) : y);
  }
  if (tail != 0) {
    __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + i), vm), vr),
                             _mm512_maskz_loadu_ps(tail, gamma + i));
    if (beta != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(tail, beta + i));
    _mm512_mask_storeu_ps(out + i, tail, y);
  }
}
#endif

// The row body for the active CPU kernel set.
LayerNormRowFn choose_row() {
#if RSVLM_X86
  switch (cpu_kernels()) {
    case CpuKernels::avx512vnni:
    case CpuKernels::amx:
      return row_avx512;
    case CpuKernels::avx2:
      return row_avx2;
    default:
      break;
  }
#endif
  return row_portable;
}

}  // namespace

Status layer_norm_cpu(const LayerNormParams& p) {
  RSVLM_RETURN_IF_ERROR(layer_norm_validate(p, /*cuda=*/false));
  const host::LayerNormArrays a(p);
  const int64_t d = p.d;  // >= 1 (validated)
  const LayerNormRowFn row = choose_row();
  host::parallel_for(p.m, 8, host::threads_for(p.m * d), [&](int64_t r, int) {
    row(a.x + r * d, a.add != nullptr ? a.add + r * d : nullptr, a.gamma, a.beta, a.out + r * d, d, p.eps);
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
