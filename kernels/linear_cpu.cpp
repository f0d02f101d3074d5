// CPU linear layer y = x @ W^T (+ bias): fp32 activations; fp32, fp16 or int8 (per-output-channel
// scale) weights; fp32 accumulation. The runtime's CPU path and the reference for linear_cuda.
//
//   y[m, n] = (sum_k x[m, k] * float(W[n, k])) * scale[n] + bias[n]   (scale: int8 only)
//
// float(W) is exact for fp16 and int8, so every weight dtype runs the same fp32 tile kernel on
// rows of W converted to fp32 (fp32 weights are read in place). Two loop nests:
//   GEMV (M < kGemmMinRows: decode, bandwidth-bound): OpenMP over tiles of kNr weight rows; each
//        weight row is read from memory once (converted into a per-thread buffer of kNr x K) and
//        dotted with every row of x.
//   GEMM (M >= kGemmMinRows: prefill): OpenMP over panels of kNc weight rows; per K block of kKc
//        inputs the panel is converted to fp32 (kNc x kKc, stays in L2) and kMr x kNr register
//        tiles of y accumulate over it while the kMr rows of x (kMr x kKc) stay in L1.
// Tile kernel: kMr x kNr dot products over kc inputs, one vector accumulator per output, lanes
// along k (no transposition anywhere), summed horizontally at the end of the block.
// Kernel sets, chosen at run time (the library is never built with -march=native):
//   avx2      x86-64 with AVX2 + FMA + F16C: functions compiled with target attributes.
//   portable  plain C++ with GCC/Clang vector extensions (NEON on aarch64, SSE2 on x86-64).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define RSVLM_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "cpu_math.h"
#include "decoder_ops.h"

namespace rsvlm_edge {
namespace {

constexpr int kMr = 3;               // rows of x per register tile
constexpr int kNr = 4;               // output features (rows of W) per register tile
constexpr int kKc = 512;             // GEMM: inputs per K block (x tile: 3 x 512 fp32 = 6 KiB, L1)
constexpr int kNc = 64;              // GEMM: output features per panel (64 x 512 fp32 = 128 KiB, L2)
constexpr int64_t kGemmMinRows = 4;  // M >= 4: GEMM, else GEMV

// acc[r * kNr + c] = sum_{i < kc} x[r][i] * w[c][i]  for r < R (1..kMr), c < kNr.
using TileFn = void (*)(const float* const* x, const float* const* w, int kc, float* acc);
// dst[r * kc + i] = float(src[r * ld + i]) for r < rows, i < kc (src: fp16 bits or int8).
using ConvertFn = void (*)(const void* src, int64_t ld, int rows, int kc, float* dst);

struct KernelSet {
  TileFn tile[kMr + 1];  // indexed by R; [0] unused
  ConvertFn from_f16;
  ConvertFn from_i8;
};

// ---- portable ----

typedef float v4f __attribute__((vector_size(16)));

inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int R>
void tile_portable(const float* const* x, const float* const* w, int kc, float* acc) {
  v4f a[R][kNr] = {};
  int i = 0;
  for (; i + 4 <= kc; i += 4) {
    v4f wv[kNr];
    for (int c = 0; c < kNr; ++c) wv[c] = load4(w[c] + i);
    for (int r = 0; r < R; ++r) {
      const v4f xv = load4(x[r] + i);
      for (int c = 0; c < kNr; ++c) a[r][c] += xv * wv[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kNr; ++c) {
      float s = (a[r][c][0] + a[r][c][1]) + (a[r][c][2] + a[r][c][3]);
      for (int j = i; j < kc; ++j) s += x[r][j] * w[c][j];
      acc[r * kNr + c] = s;
    }
}

inline float to_float(uint16_t h) { return cpu::half_to_float(h); }
inline float to_float(int8_t v) { return static_cast<float>(v); }

template <typename T>
void convert_portable(const void* src, int64_t ld, int rows, int kc, float* dst) {
  for (int r = 0; r < rows; ++r) {
    const T* s = static_cast<const T*>(src) + r * ld;
    float* d = dst + int64_t(r) * kc;
    for (int i = 0; i < kc; ++i) d[i] = to_float(s[i]);
  }
}

const KernelSet kPortable = {{nullptr, tile_portable<1>, tile_portable<2>, tile_portable<3>},
                             convert_portable<uint16_t>, convert_portable<int8_t>};

// ---- avx2 (x86-64) ----

#if RSVLM_X86
#define RSVLM_AVX2 __attribute__((target("avx2,fma,f16c")))

// The lane sums of a[0..3], as one 4-vector.
RSVLM_AVX2 inline __m128 hsum4(const __m256* a) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

template <int R>
RSVLM_AVX2 void tile_avx2(const float* const* x, const float* const* w, int kc, float* acc) {
  __m256 a[R][kNr];  // R x 4 accumulators (12 for R = 3) + 4 weight vectors: 16 ymm registers
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kNr; ++c) a[r][c] = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= kc; i += 8) {
    __m256 wv[kNr];
    for (int c = 0; c < kNr; ++c) wv[c] = _mm256_loadu_ps(w[c] + i);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x[r] + i);
      for (int c = 0; c < kNr; ++c) a[r][c] = _mm256_fmadd_ps(xv, wv[c], a[r][c]);
    }
  }
  static_assert(kNr == 4, "hsum4 reduces 4 accumulators");
  for (int r = 0; r < R; ++r) {
    _mm_storeu_ps(acc + r * kNr, hsum4(a[r]));
    for (int j = i; j < kc; ++j)
      for (int c = 0; c < kNr; ++c) acc[r * kNr + c] += x[r][j] * w[c][j];
  }
}

RSVLM_AVX2 void convert_f16_avx2(const void* src, int64_t ld, int rows, int kc, float* dst) {
  for (int r = 0; r < rows; ++r) {
    const uint16_t* s = static_cast<const uint16_t*>(src) + r * ld;
    float* d = dst + int64_t(r) * kc;
    int i = 0;
    for (; i + 8 <= kc; i += 8)
      _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
    for (; i < kc; ++i) d[i] = _cvtsh_ss(s[i]);
  }
}

RSVLM_AVX2 void convert_i8_avx2(const void* src, int64_t ld, int rows, int kc, float* dst) {
  for (int r = 0; r < rows; ++r) {
    const int8_t* s = static_cast<const int8_t*>(src) + r * ld;
    float* d = dst + int64_t(r) * kc;
    int i = 0;
    for (; i + 8 <= kc; i += 8)
      _mm256_storeu_ps(d + i, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                  _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + i)))));
    for (; i < kc; ++i) d[i] = static_cast<float>(s[i]);
  }
}

const KernelSet kAvx2 = {{nullptr, tile_avx2<1>, tile_avx2<2>, tile_avx2<3>}, convert_f16_avx2, convert_i8_avx2};

bool cpu_has_avx2_fma_f16c() {
  __builtin_cpu_init();
  unsigned a = 0, b = 0, c = 0, d = 0;
  const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
  return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
bool cpu_has_avx2_fma_f16c() { return false; }
#endif

std::atomic<int> g_kernels{-1};  // a CpuKernels value; -1 = not chosen yet (best supported)

const KernelSet& active_kernels() {
#if RSVLM_X86
  if (cpu_kernels() == CpuKernels::avx2) return kAvx2;
#endif
  return kPortable;
}

}  // namespace

bool cpu_kernels_supported(CpuKernels k) { return k == CpuKernels::portable || cpu_has_avx2_fma_f16c(); }

CpuKernels cpu_kernels() {
  int k = g_kernels.load(std::memory_order_relaxed);
  if (k < 0) {
    k = static_cast<int>(cpu_kernels_supported(CpuKernels::avx2) ? CpuKernels::avx2 : CpuKernels::portable);
    g_kernels.store(k, std::memory_order_relaxed);
  }
  return static_cast<CpuKernels>(k);
}

Status set_cpu_kernels(CpuKernels k) {
  if (!cpu_kernels_supported(k))
    return Status::Invalid(std::string("CPU kernels '") + cpu_kernels_name(k) +
                           "' need an x86-64 CPU with AVX2, FMA and F16C; this one has 'portable' only");
  g_kernels.store(static_cast<int>(k), std::memory_order_relaxed);
  return Status::Ok();
}

const char* cpu_kernels_name(CpuKernels k) { return k == CpuKernels::avx2 ? "avx2" : "portable"; }

Status linear_cpu(const LinearParams& p) {
  Status st = linear_validate(p, false);
  if (!st.ok()) return st;
  if (p.m == 0) return Status::Ok();
  const KernelSet& ks = active_kernels();
  const float* x = static_cast<const float*>(p.x);  // (M, K)
  const float* bias = static_cast<const float*>(p.bias);
  float* out = static_cast<float*>(p.out);  // (M, N)
  const int64_t m = p.m;
  const int n = p.n, k = p.k;
  const int64_t wsize = dtype_size(p.w_dtype);
  const ConvertFn convert = p.w_dtype == DType::f16 ? ks.from_f16 : p.w_dtype == DType::i8 ? ks.from_i8 : nullptr;
  auto w_at = [&](int row, int col) {  // &W[row, col] in its storage dtype
    return static_cast<const char*>(p.w) + (int64_t(row) * k + col) * wsize;
  };
  auto finish = [&](float y, int col) {  // the full sum over k -> y
    if (p.w_dtype == DType::i8) y *= p.w_scale[col];
    return bias ? y + bias[col] : y;
  };

  if (m < kGemmMinRows) {
    const int rows = static_cast<int>(m);
#pragma omp parallel
    {
      std::vector<float> buf(convert ? size_t(kNr) * k : 0);  // (kNr, K) converted weight rows
#pragma omp for schedule(static)
      for (int n0 = 0; n0 < n; n0 += kNr) {
        const int nt = std::min(kNr, n - n0);
        if (convert) convert(w_at(n0, 0), k, nt, k, buf.data());
        const float* wr[kNr];
        for (int c = 0; c < kNr; ++c) {
          const int j = std::min(c, nt - 1);  // clamp: duplicate the last row, results dropped
          wr[c] = convert ? buf.data() + int64_t(j) * k : reinterpret_cast<const float*>(w_at(n0 + j, 0));
        }
        const float* xr[kMr];
        for (int r = 0; r < rows; ++r) xr[r] = x + r * int64_t(k);
        float acc[kMr * kNr];
        ks.tile[rows](xr, wr, k, acc);
        for (int r = 0; r < rows; ++r)
          for (int c = 0; c < nt; ++c) out[r * int64_t(n) + n0 + c] = finish(acc[r * kNr + c], n0 + c);
      }
    }
    return Status::Ok();
  }

  const int panels = (n + kNc - 1) / kNc;
#pragma omp parallel
  {
    std::vector<float> buf(convert ? size_t(kNc) * kKc : 0);  // (kNc, kKc) converted panel
#pragma omp for schedule(dynamic)
    for (int pi = 0; pi < panels; ++pi) {
      const int n0 = pi * kNc, nc = std::min(kNc, n - n0);
      for (int k0 = 0; k0 < k; k0 += kKc) {
        const int kc = std::min(kKc, k - k0);
        const bool first = k0 == 0, last = k0 + kc == k;
        const float* panel = reinterpret_cast<const float*>(w_at(n0, k0));  // (nc, kc), row stride ld
        int64_t ld = k;
        if (convert) {
          convert(w_at(n0, k0), k, nc, kc, buf.data());
          panel = buf.data();
          ld = kc;
        }
        for (int64_t m0 = 0; m0 < m; m0 += kMr) {
          const int rows = static_cast<int>(std::min<int64_t>(kMr, m - m0));
          const float* xr[kMr];
          for (int r = 0; r < rows; ++r) xr[r] = x + (m0 + r) * k + k0;
          for (int j0 = 0; j0 < nc; j0 += kNr) {
            const int nt = std::min(kNr, nc - j0);
            const float* wr[kNr];
            for (int c = 0; c < kNr; ++c) wr[c] = panel + int64_t(j0 + std::min(c, nt - 1)) * ld;
            float acc[kMr * kNr];
            ks.tile[rows](xr, wr, kc, acc);
            for (int r = 0; r < rows; ++r)
              for (int c = 0; c < nt; ++c) {
                const int col = n0 + j0 + c;
                float* o = out + (m0 + r) * n + col;
                const float y = first ? acc[r * kNr + c] : *o + acc[r * kNr + c];
                *o = last ? finish(y, col) : y;
              }
          }
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
