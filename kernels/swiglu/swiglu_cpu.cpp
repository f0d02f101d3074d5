// swiglu fast CPU path: the thread pool, fp32 (see rsvlm_edge/swiglu.h). out = silu(gate) * up with
// silu(g) = g * sigmoid(g); on x86 with the avx2 kernel set or better, 8 lanes at a time through
// cpu::exp_nonpositive_ps, else (and for the last < 8 elements of a chunk) the scalar formula.
#include <cmath>

#if defined(__x86_64__) || defined(_M_X64)
#define RSVLM_X86 1
#include <immintrin.h>

#include "common/cpu_exp_simd.h"
#endif

#include "common/host_arrays.h"
#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/linear.h"
#include "rsvlm_edge/swiglu.h"

namespace rsvlm_edge {
namespace {

// out[i] = silu(gate[i]) * up[i] for i in [begin, end): gate, up, out (n) fp32; out may alias gate or up.
using SwiGluRangeFn = void (*)(const float* gate, const float* up, float* out, int64_t begin, int64_t end);

inline float swiglu_scalar(float g, float u) { return g / (1.f + std::exp(-g)) * u; }

void swiglu_portable(const float* gate, const float* up, float* out, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) out[i] = swiglu_scalar(gate[i], up[i]);
}

#if RSVLM_X86
// 8 lanes at a time; sigmoid from e = exp(-|g|) (argument <= 0, never overflows): 1 / (1 + e) for
// g >= 0, e / (1 + e) below; the last < 8 elements through the scalar formula.
RSVLM_AVX2_FMA void swiglu_avx2(const float* gate, const float* up, float* out, int64_t begin, int64_t end) {
  const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = cpu::exp_nonpositive_ps(_mm256_or_ps(g, sign));  // exp(-|g|)
    const __m256 num = _mm256_blendv_ps(e, one, _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_GE_OQ));
    const __m256 sig = _mm256_div_ps(num, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
  }
  swiglu_portable(gate, up, out, i, end);
}
#endif

// The body for the active CPU kernel set: AVX2 from the avx2 set on, else the portable loop.
SwiGluRangeFn choose_swiglu() {
#if RSVLM_X86
  if (cpu_kernels() != CpuKernels::portable) return swiglu_avx2;
#endif
  return swiglu_portable;
}

}  // namespace

Status swiglu_cpu(const SwiGluParams& p) {
  RSVLM_RETURN_IF_ERROR(swiglu_validate(p, /*cuda=*/false));
  const host::SwiGluArrays a(p);
  const SwiGluRangeFn range = choose_swiglu();
  host::parallel_chunks(p.n, 4096, host::threads_for(p.n), [&](int64_t begin, int64_t end, int) {
    range(a.gate, a.up, a.out, begin, end);
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
