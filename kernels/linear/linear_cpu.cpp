// linear fast CPU path y = x @ W^T (+ bias): fp32 activations; fp32, fp16 or int8 (per-output-channel
// scale) weights; fp32 accumulation. Tested against linear_reference (linear_ref.cpp). Also the
// load-time int8 weight quantisation and the CPU micro-kernel selection.
//
//   y[m, n] = (sum_k x[m, k] * float(W[n, k])) * scale[n] + bias[n]   (scale: int8 only)
//
// float(W) is exact for fp16 and int8. Two loop nests over one tile kernel:
//   GEMV (M < kGemmMinRows: decode, bandwidth-bound): the thread pool over weight rows; each thread streams its
//        contiguous range of rows front to back, one row at a time (one sequential stream reaches the
//        memory bandwidth, 4 interleaved short rows about half), in its stored dtype, converted in
//        registers and dotted with every row of x (row kernel: 4 accumulators per row of x).
//   GEMM (M >= kGemmMinRows: prefill): the thread pool over panels of kNc weight rows; per K block of kKc
//        inputs the panel is converted (copied, for fp32) into a contiguous fp32 buffer (kNc x kKc,
//        stays in L2) and kMr x kNr register tiles of y accumulate over it while the kMr rows of x
//        (kMr x kKc) stay in L1. fp16 and int8 weights reuse the fp32 tile kernel there.
//   avx512vnni set, M >= 2 (batched decode and prefill alike): x packed once per call in blocks of 8
//        rows; the thread pool over chunks of weight rows, each read in its stored dtype straight from W
//        (no conversion pass) by 3 x 8 dot-product register tiles (dot_tile_avx512), the chunk staying
//        in L2 for each further block of 8 rows of x.
// Tile kernel (the avx2 / portable GEMM above): R x kNr dot products over kc inputs (R <= kMr rows of x), one vector accumulator
// per output (two for R = 1 on avx2), lanes along k (no transposition anywhere), summed
// horizontally at the end.
// Kernel sets, chosen at run time (the library is never built with -march=native):
//   avx512vnni x86-64 with AVX-512 F/VL/BW/VNNI: the avx2 kernels, and the 512-bit tiles from M = 2.
//   amx        the avx512vnni kernels, and with LinearParams::bf16x3 fp16 weights from M = 32 on as three bf16
//              products on AMX-BF16 tiles (linear_bf16x3 below: 2.2x the 512-bit tiles at TinyLlama prefill shapes).
//   avx2      x86-64 with AVX2 + FMA + F16C: functions compiled with target attributes.
//   portable  plain C++ with GCC/Clang vector extensions (NEON on aarch64, SSE2 on x86-64).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define RSVLM_X86 1
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#include "common/amx_tiles.h"
#include "common/cpu_math.h"
#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/linear.h"

namespace rsvlm_edge {
namespace {

constexpr int kMr = 3;               // rows of x per register tile
constexpr int kNr = 4;               // output features (rows of W) per register tile
constexpr int kKc = 1024;            // GEMM: inputs per K block (x tile: 3 x 1024 fp32 = 12 KiB, L1)
constexpr int kNc = 32;              // GEMM: output features per panel (32 x 1024 fp32 = 128 KiB, L2)
constexpr int64_t kGemmMinRows = 4;  // M >= 4: GEMM, else GEMV
constexpr int64_t kBf16x3MinRows = 32;  // amx, fp16 weights, bf16x3 allowed: the AMX-BF16 GEMM from M = 32 on

// acc[r * kNr + c] = sum_{i < kc} x[r][i] * float(w[c][i])  for r < R (1..kMr), c < kNr; w[c]
// points to kc weights of one dtype (float, uint16_t fp16 bits or int8_t).
using TileFn = void (*)(const float* const* x, const void* const* w, int kc, float* acc);
// dst[r * kc + i] = float(src[r * ld + i]) for r < rows, i < kc.
using ConvertFn = void (*)(const void* src, int64_t ld, int rows, int kc, float* dst);

enum WeightKind { kF32, kF16, kI8 };

// acc[r] = sum_{i < k} x[r][i] * float(w[i]) for r < R: one weight row, read front to back (GEMV: one
// sequential stream per thread reaches the memory bandwidth; 4 interleaved short rows reach about half).
using RowFn = void (*)(const float* const* x, const void* w, int k, float* acc);

struct KernelSet {
  TileFn tile[3][kMr + 1];  // [WeightKind][R]; R = 0 unused: GEMM
  ConvertFn convert[3];     // [WeightKind]
  RowFn row[3][kMr + 1];    // [WeightKind][R]: GEMV
};

// ---- portable ----

typedef float v4f __attribute__((vector_size(16)));

inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline float to_float(float v) { return v; }
inline float to_float(uint16_t h) { return cpu::half_to_float(h); }
inline float to_float(int8_t v) { return static_cast<float>(v); }

inline v4f load4(const uint16_t* p) { return v4f{to_float(p[0]), to_float(p[1]), to_float(p[2]), to_float(p[3])}; }
inline v4f load4(const int8_t* p) { return v4f{to_float(p[0]), to_float(p[1]), to_float(p[2]), to_float(p[3])}; }

template <int R, typename W>
void tile_portable(const float* const* x, const void* const* wp, int kc, float* acc) {
  const W* w[kNr];
  for (int c = 0; c < kNr; ++c) w[c] = static_cast<const W*>(wp[c]);
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
      for (int j = i; j < kc; ++j) s += x[r][j] * to_float(w[c][j]);
      acc[r * kNr + c] = s;
    }
}

template <typename T>
void convert_portable(const void* src, int64_t ld, int rows, int kc, float* dst) {
  for (int r = 0; r < rows; ++r) {
    const T* s = static_cast<const T*>(src) + r * ld;
    float* d = dst + int64_t(r) * kc;
    for (int i = 0; i < kc; ++i) d[i] = to_float(s[i]);
  }
}

template <int R, typename W>
void row_portable(const float* const* x, const void* wp, int k, float* acc) {
  const W* w = static_cast<const W*>(wp);
  v4f a[R][2] = {};
  int i = 0;
  for (; i + 8 <= k; i += 8) {
    const v4f w0 = load4(w + i), w1 = load4(w + i + 4);
    for (int r = 0; r < R; ++r) {
      a[r][0] += load4(x[r] + i) * w0;
      a[r][1] += load4(x[r] + i + 4) * w1;
    }
  }
  for (int r = 0; r < R; ++r) {
    const v4f t = a[r][0] + a[r][1];
    float s = (t[0] + t[1]) + (t[2] + t[3]);
    for (int j = i; j < k; ++j) s += x[r][j] * to_float(w[j]);
    acc[r] = s;
  }
}

#define RSVLM_TILES(fn, W) {nullptr, fn<1, W>, fn<2, W>, fn<3, W>}
const KernelSet kPortable = {
    {RSVLM_TILES(tile_portable, float), RSVLM_TILES(tile_portable, uint16_t), RSVLM_TILES(tile_portable, int8_t)},
    {convert_portable<float>, convert_portable<uint16_t>, convert_portable<int8_t>},
    {RSVLM_TILES(row_portable, float), RSVLM_TILES(row_portable, uint16_t), RSVLM_TILES(row_portable, int8_t)}};

// ---- avx2 (x86-64) ----
// fp16 GEMV rows prefetch the weight stream this many bytes ahead into L2 (through the next row: the matrix is
// contiguous; a prefetch past its end does not fault). Measured, TinyLlama-shape fp16 linears of a batch-1
// step, 2 Zen 4 cores, 10 rounds alternated in one process (GB/s): none 28.5-31.4, 4096 31.1-33.1, 6144
// 31.1-34.1, 8192 28.9-31.5; T0 instead of T1 no better. fp32 / int8 weights are not measured: none.
constexpr uintptr_t kRowPrefetchAhead = 6144;

#if RSVLM_X86
#define RSVLM_AVX2 __attribute__((target("avx2,fma,f16c")))

// The lane sums of a[0..3], as one 4-vector.
RSVLM_AVX2 inline __m128 hsum4(const __m256* a) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

RSVLM_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
RSVLM_AVX2 inline __m256 load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
RSVLM_AVX2 inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
RSVLM_AVX2 inline float to_float_avx2(float v) { return v; }
RSVLM_AVX2 inline float to_float_avx2(uint16_t h) { return _cvtsh_ss(h); }
RSVLM_AVX2 inline float to_float_avx2(int8_t v) { return static_cast<float>(v); }

template <int R, typename W>
RSVLM_AVX2 void tile_avx2(const float* const* x, const void* const* wp, int kc, float* acc) {
  const W* w[kNr];
  for (int c = 0; c < kNr; ++c) w[c] = static_cast<const W*>(wp[c]);
  // U interleaved accumulators per output: R = 1 (decode) would otherwise be bound by the FMA
  // latency (4 dependent chains). R x kNr x U <= 12 accumulators + 4 weight vectors: 16 ymm.
  constexpr int U = R == 1 ? 2 : 1;
  __m256 a[U][R][kNr];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < kNr; ++c) a[u][r][c] = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 * U <= kc; i += 8 * U) {
    for (int u = 0; u < U; ++u) {
      __m256 wv[kNr];
      for (int c = 0; c < kNr; ++c) wv[c] = load8(w[c] + i + 8 * u);
      for (int r = 0; r < R; ++r) {
        const __m256 xv = _mm256_loadu_ps(x[r] + i + 8 * u);
        for (int c = 0; c < kNr; ++c) a[u][r][c] = _mm256_fmadd_ps(xv, wv[c], a[u][r][c]);
      }
    }
  }
  for (; i + 8 <= kc; i += 8) {  // U = 2: one 8-wide step left
    __m256 wv[kNr];
    for (int c = 0; c < kNr; ++c) wv[c] = load8(w[c] + i);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x[r] + i);
      for (int c = 0; c < kNr; ++c) a[0][r][c] = _mm256_fmadd_ps(xv, wv[c], a[0][r][c]);
    }
  }
  for (int u = 1; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < kNr; ++c) a[0][r][c] = _mm256_add_ps(a[0][r][c], a[u][r][c]);
  static_assert(kNr == 4, "hsum4 reduces 4 accumulators");
  for (int r = 0; r < R; ++r) {
    _mm_storeu_ps(acc + r * kNr, hsum4(a[0][r]));
    for (int j = i; j < kc; ++j)
      for (int c = 0; c < kNr; ++c) acc[r * kNr + c] += x[r][j] * to_float_avx2(w[c][j]);
  }
}

template <typename W>
RSVLM_AVX2 void convert_avx2(const void* src, int64_t ld, int rows, int kc, float* dst) {
  for (int r = 0; r < rows; ++r) {
    const W* s = static_cast<const W*>(src) + r * ld;
    float* d = dst + int64_t(r) * kc;
    int i = 0;
    for (; i + 8 <= kc; i += 8) _mm256_storeu_ps(d + i, load8(s + i));
    for (; i < kc; ++i) d[i] = to_float_avx2(s[i]);
  }
}

// Four independent accumulators per row of x (32 inputs per step) hide the FMA latency.
template <int R, typename W>
RSVLM_AVX2 void row_avx2(const float* const* x, const void* wp, int k, float* acc) {
  const W* w = static_cast<const W*>(wp);
  __m256 a[R][4];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < 4; ++u) a[r][u] = _mm256_setzero_ps();
  int i = 0;
  for (; i + 32 <= k; i += 32) {
    if constexpr (std::is_same_v<W, uint16_t>)  // 64 bytes per step: one line, kRowPrefetchAhead bytes ahead
      _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(w + i) + kRowPrefetchAhead), _MM_HINT_T1);
    const __m256 w0 = load8(w + i), w1 = load8(w + i + 8), w2 = load8(w + i + 16), w3 = load8(w + i + 24);
    for (int r = 0; r < R; ++r) {
      a[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + i), w0, a[r][0]);
      a[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + i + 8), w1, a[r][1]);
      a[r][2] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + i + 16), w2, a[r][2]);
      a[r][3] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + i + 24), w3, a[r][3]);
    }
  }
  for (; i + 8 <= k; i += 8) {
    const __m256 w0 = load8(w + i);
    for (int r = 0; r < R; ++r) a[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + i), w0, a[r][0]);
  }
  for (int r = 0; r < R; ++r) {
    const __m256 v = _mm256_add_ps(_mm256_add_ps(a[r][0], a[r][1]), _mm256_add_ps(a[r][2], a[r][3]));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_hadd_ps(h, h);
    float s = _mm_cvtss_f32(_mm_hadd_ps(h, h));
    for (int j = i; j < k; ++j) s += x[r][j] * to_float_avx2(w[j]);
    acc[r] = s;
  }
}

const KernelSet kAvx2 = {
    {RSVLM_TILES(tile_avx2, float), RSVLM_TILES(tile_avx2, uint16_t), RSVLM_TILES(tile_avx2, int8_t)},
    {convert_avx2<float>, convert_avx2<uint16_t>, convert_avx2<int8_t>},
    {RSVLM_TILES(row_avx2, float), RSVLM_TILES(row_avx2, uint16_t), RSVLM_TILES(row_avx2, int8_t)}};

// ---- avx512 (x86-64 with AVX-512 F/VL/BW: the avx512vnni kernel set), M >= 2 ----
// Dot-product register tile straight from the stored weight rows (no conversion pass, no packing of W):
// kDotW512 = 3 weight rows x R <= 8 rows of x, one zmm accumulator each (24 of the 32 zmm registers), lanes
// along k. Per 16 inputs: 3 weight loads (converted in registers), R loads of x (packed, see
// linear_avx512), 3 x R FMAs; lanes summed once per tile (hsum8: about 3 % of the FMAs at K 2048). Measured
// on 2 Zen 4 cores, K 2048 x N 5632 fp16: M 8 2.4 -> 1.1 ms against the avx2 tiles, M 512 60-61 ms (192
// GFLOP/s) against 63-65 ms for the packed outer-product GEMM this replaced.
#define RSVLM_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx2,fma,f16c")))
constexpr int kDotX512 = 8;  // rows of x per tile
constexpr int kDotW512 = 3;  // weight rows per tile
constexpr int64_t kDot512MinRows = 2;  // M = 1 stays on the GEMV row kernel: bandwidth-bound, no faster here

RSVLM_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
RSVLM_AVX512 inline __m512 load16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
RSVLM_AVX512 inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// The lanes of `mask` (the first j of 16), zeros after: a row's tail without reading past its end.
RSVLM_AVX512 inline __m512 load16(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
RSVLM_AVX512 inline __m512 load16(const uint16_t* p, __mmask16 mask) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p));
}
RSVLM_AVX512 inline __m512 load16(const int8_t* p, __mmask16 mask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, p)));
}

// Lane r of the result = the sum of the 16 lanes of v[r], r < 8.
RSVLM_AVX512 inline __m256 hsum8(const __m512* v) {
  __m256 h[8];
  for (int r = 0; r < 8; ++r)
    h[r] = _mm256_add_ps(_mm512_castps512_ps256(v[r]), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[r]), 1)));
  const __m256 ab = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));  // v0..v3 | v0..v3
  const __m256 cd = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));  // v4..v7 | v4..v7
  return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

// acc[c * 8 + r] = sum_{i < k} x[r][i] * float(w[c][i]) for r < R, c < kDotW512 (0 for R <= r < 8).
// xp: 8 rows of x packed as (ceil(k / 16), 8, 16), zeros past k and past row R; w[c]: k weights of one dtype
// (fp32, fp16 bits or int8); acc: (kDotW512, 8). next: pf_bytes bytes (the next tile's weight rows, or
// nullptr) prefetched into L2 in address order, spread over the steps: the tile reads 3 rows at once, and
// 3 interleaved streams from memory reach about half of one sequential stream on Zen 4 (measured: the
// prefetch takes batch-8 decode's weight stream from 15 to 21-22 GB/s).
template <int R, typename W>
RSVLM_AVX512 void dot_tile_avx512(const float* xp, const void* const* wp, int k, float* acc, const char* next,
                                  int64_t pf_bytes) {
  const int64_t steps = (int64_t(k) + 15) / 16;
  if (next == nullptr || pf_bytes <= 0) next = nullptr, pf_bytes = 0;
  const int64_t lines_per_step = (pf_bytes / 64 + steps - 1) / steps;
  const char* const next_end = next ? next + pf_bytes : nullptr;
  const W* w[kDotW512];
  for (int c = 0; c < kDotW512; ++c) w[c] = static_cast<const W*>(wp[c]);
  __m512 a[kDotW512][kDotX512];
  for (int c = 0; c < kDotW512; ++c)
    for (int r = 0; r < kDotX512; ++r) a[c][r] = _mm512_setzero_ps();
  auto step = [&](int i, auto... tail_mask) RSVLM_AVX512 {
    for (int64_t l = 0; l < lines_per_step && next < next_end; ++l, next += 64) _mm_prefetch(next, _MM_HINT_T1);
    __m512 wv[kDotW512];
    for (int c = 0; c < kDotW512; ++c) {
      wv[c] = load16(w[c] + i, tail_mask...);
      asm("" : "+v"(wv[c]));  // fp32 weights: one load, not one per row of x
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m512 xv = _mm512_loadu_ps(xp + int64_t(i) * kDotX512 + r * 16);
      asm("" : "+v"(xv));  // one load of x per row and step: GCC would fold it into each of the 3 FMAs,
                           // and 24 loads per 24 FMAs halve the speed on Zen 4
      for (int c = 0; c < kDotW512; ++c) a[c][r] = _mm512_fmadd_ps(xv, wv[c], a[c][r]);
    }
  };
  int i = 0;
  for (; i + 16 <= k; i += 16) step(i);
  if (i < k) step(i, static_cast<__mmask16>((1u << (k - i)) - 1));
  for (int c = 0; c < kDotW512; ++c) _mm256_storeu_ps(acc + c * kDotX512, hsum8(a[c]));
}

using DotTile512 = void (*)(const float* xp, const void* const* w, int k, float* acc, const char* next,
                           int64_t pf_bytes);
#define RSVLM_DOT_TILES(W)                                                                                    \
  {                                                                                                           \
    nullptr, dot_tile_avx512<1, W>, dot_tile_avx512<2, W>, dot_tile_avx512<3, W>, dot_tile_avx512<4, W>,      \
        dot_tile_avx512<5, W>, dot_tile_avx512<6, W>, dot_tile_avx512<7, W>, dot_tile_avx512<8, W>            \
  }
const DotTile512 kDotTiles512[3][kDotX512 + 1] = {RSVLM_DOT_TILES(float), RSVLM_DOT_TILES(uint16_t),
                                                  RSVLM_DOT_TILES(int8_t)};  // [WeightKind][R]

bool cpu_has_avx2_fma_f16c() {
  __builtin_cpu_init();
  unsigned a = 0, b = 0, c = 0, d = 0;
  const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
  return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool cpu_has_avx512vnni() {
  __builtin_cpu_init();
  return cpu_has_avx2_fma_f16c() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
}
// AMX-BF16, AMX-TILE and AMX-INT8 (CPUID.(7,0):EDX bits 22, 24, 25) with AVX512-BF16 (CPUID.(7,1):EAX
// bit 5), the OS saving tile state (XCR0 bits 17, 18), and Linux granting this process tile data
// (arch_prctl ARCH_REQ_XCOMP_PERM; asked once, the answer is kept).
bool cpu_has_amx() {
  static const bool has = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!cpu_has_avx512vnni() || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 22)) || !(d & (1u << 24)) || !(d & (1u << 25))) return false;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return false;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return false;
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return false;
#if defined(__linux__)
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return has;
}
#else
bool cpu_has_avx2_fma_f16c() { return false; }
bool cpu_has_avx512vnni() { return false; }
bool cpu_has_amx() { return false; }
#endif

std::atomic<int> g_kernels{-1};  // a CpuKernels value; -1 = not chosen yet (best supported)

const KernelSet& active_kernels() {
#if RSVLM_X86
  if (cpu_kernels() != CpuKernels::portable) return kAvx2;  // avx512vnni: the same float kernels
#endif
  return kPortable;
}

}  // namespace

bool cpu_kernels_supported(CpuKernels k) {
  switch (k) {
    case CpuKernels::portable:
      return true;
    case CpuKernels::avx2:
      return cpu_has_avx2_fma_f16c();
    case CpuKernels::avx512vnni:
      return cpu_has_avx512vnni();
    case CpuKernels::amx:
      return cpu_has_amx();
  }
  return false;
}

CpuKernels best_cpu_kernels() {
  for (CpuKernels k : {CpuKernels::amx, CpuKernels::avx512vnni, CpuKernels::avx2})
    if (cpu_kernels_supported(k)) return k;
  return CpuKernels::portable;
}

CpuKernels cpu_kernels() {
  int k = g_kernels.load(std::memory_order_relaxed);
  if (k < 0) {
    k = static_cast<int>(best_cpu_kernels());
    g_kernels.store(k, std::memory_order_relaxed);
  }
  return static_cast<CpuKernels>(k);
}

Status set_cpu_kernels(CpuKernels k) {
  if (!cpu_kernels_supported(k)) {
    const char* needs = k == CpuKernels::amx          ? "AVX512-VNNI, AVX512-BF16, AMX-INT8 and AMX-BF16 (and the kernel's permission to use AMX tiles)"
                        : k == CpuKernels::avx512vnni ? "AVX2, FMA, F16C and AVX512-VNNI/VL/BW"
                                                      : "AVX2, FMA and F16C";
    return Status::Invalid(std::string("CPU kernels '") + cpu_kernels_name(k) + "' need an x86-64 CPU with " + needs +
                           "; this one does not have them");
  }
  g_kernels.store(static_cast<int>(k), std::memory_order_relaxed);
  return Status::Ok();
}

const char* cpu_kernels_name(CpuKernels k) {
  switch (k) {
    case CpuKernels::avx2:
      return "avx2";
    case CpuKernels::avx512vnni:
      return "avx512vnni";
    case CpuKernels::amx:
      return "amx";
    default:
      return "portable";
  }
}

#if RSVLM_X86
// M >= kDot512MinRows on the avx512vnni set. x is packed once per call in blocks of 8 rows,
// (ceil(M / 8), ceil(K / 16), 8, 16): a step's 8 loads of x are one contiguous 512 bytes, and 8 rows one
// K stride apart would share one L1 set when K is a multiple of 1,024. The thread pool hands out chunks of
// weight rows (a multiple of kDotW512), each one sequential stream; a chunk is read from memory for the
// first block of 8 rows of x and from L2 for the others: 64 KiB chunks while M <= 8 (nothing to reuse,
// small chunks balance a busy machine), 256 KiB above (measured: K 5632 x N 2048, M 512: 63 vs 73 ms).
// x (M, K), out (M, N); w_at(row, col): &W[row, col] in its storage dtype; finish(y, col): the full sum
// over K -> the output.
template <typename WAt, typename Finish>
static Status linear_avx512(const float* x, float* out, int64_t m, int n, int k, WeightKind wk, int64_t wsize,
                            WAt w_at, Finish finish) {
  const int64_t k16 = (int64_t(k) + 15) / 16;
  const int64_t block = host::checked_mul(k16, 16 * kDotX512);  // floats per block of 8 rows
  const int64_t m_blocks = (m + kDotX512 - 1) / kDotX512;
  std::vector<float> xp;  // zeros past K and past row M
  Status st = host::alloc_scratch(xp, block, m_blocks, "linear");
  if (!st.ok()) return st;
  host::parallel_for(m, 1, host::threads_for(m * int64_t(k)), [&](int64_t r, int) {
    float* dst = xp.data() + (r / kDotX512) * block + (r % kDotX512) * 16;
    const float* src = x + r * k;
    for (int64_t i0 = 0; i0 < k; i0 += 16)
      std::memcpy(dst + i0 * kDotX512, src + i0, sizeof(float) * size_t(std::min<int64_t>(16, k - i0)));
  });
  const int64_t chunk_bytes = int64_t(m <= kDotX512 ? 64 : 256) << 10;
  const int64_t chunk_rows = std::max<int64_t>(16, chunk_bytes / (int64_t(k) * wsize));
  const int64_t chunk = (chunk_rows + kDotW512 - 1) / kDotW512 * kDotW512;
  const DotTile512* tiles = kDotTiles512[wk];
  host::parallel_chunks(n, chunk, host::threads_for(int64_t(n) * k), [&](int64_t j0, int64_t j1, int) {
    for (int64_t mb = 0; mb < m_blocks; ++mb) {
      const int64_t m0 = mb * kDotX512;
      const int r_count = static_cast<int>(std::min<int64_t>(kDotX512, m - m0));
      for (int64_t j = j0; j < j1; j += kDotW512) {
        const int nt = static_cast<int>(std::min<int64_t>(kDotW512, j1 - j));
        const void* wr[kDotW512];  // past the chunk's last row: its last row again, result unused
        for (int c = 0; c < kDotW512; ++c) wr[c] = w_at(int(j) + std::min(c, nt - 1), 0);
        float acc[kDotW512 * kDotX512];
        // the next tile's rows (past the chunk too: the lane's next chunk follows it), on the first pass only
        const int64_t jn = j + kDotW512, nn = mb == 0 ? std::clamp<int64_t>(n - jn, 0, kDotW512) : 0;
        tiles[r_count](xp.data() + mb * block, wr, k, acc, nn > 0 ? static_cast<const char*>(w_at(int(jn), 0)) : nullptr,
                       nn * k * wsize);
        for (int c = 0; c < nt; ++c)
          for (int r = 0; r < r_count; ++r) out[(m0 + r) * n + j + c] = finish(acc[c * kDotX512 + r], int(j) + c);
      }
    }
  });
  return Status::Ok();
}
#endif

#if RSVLM_X86
namespace {
// ---- amx: fp16 weights as bf16 hi + lo parts on AMX-BF16 tiles (LinearParams::bf16x3), M >= kBf16x3MinRows ----
//
// y[m, n] = sum_k x[m, k] * w[n, k] + bias[n] as three bf16 products with fp32 accumulation in the tiles:
//     w = w_hi + w_lo exactly (w_hi = bf16(w): 8 of fp16's 11 significant bits; w_lo = w - w_hi: the rest),
//     x = x_hi + x_lo + e with |e| <= 2^-16 |x| (x_hi = bf16(x), x_lo = bf16(x - x_hi), both round to nearest even),
//     x . w ~ x_hi . w_hi + x_lo . w_hi + x_hi . w_lo  (x_lo . w_lo <= 2^-16 |x w| is left out),
// so each product is within about 2^-15 of x * w relatively: well below the fp16 rounding of the weights themselves
// (2^-11), and the sum over K is accumulated in fp32 as the tile unit orders it (deterministic: the same for any M
// and any thread count). Weights are the A operand (16 rows x 32 inputs), staged per pair of panels as hi and lo
// rows; x is the B operand (16 input pairs x 16 rows of x), split once per call. The tile unit treats denormal
// bf16 inputs as zero: only parts below 2^-126 are affected.
#define RSVLM_BF16X3 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,amx-tile,amx-bf16")))

using cpu::kAmxPairRows;                                // 32 weight rows per work item
using cpu::kAmxTileRows;                                // 16 rows per tile
constexpr int kBfChunk = 32;                            // inputs per tile product (32 bf16 = 64 bytes per row)
constexpr int kBfBTileBytes = kAmxTileRows * 64;        // 1 KiB: one B tile
constexpr int64_t kBfSpanBytes = int64_t(2) << 20;       // B bytes of one span (kept in L2 across pairs; measured 0.5 / 1 / 2 / 4 MiB: 2 best)

struct Bf16x3Call {
  const uint16_t* w = nullptr;  // (N, K) fp16 bits
  const float* bias = nullptr;  // (N) or nullptr
  float* out = nullptr;         // (M, N)
  const uint16_t* xb = nullptr; // (row_blocks, chunks, 2 parts hi/lo, 16 input pairs, 16 rows, 2) bf16, zero past M, K
  uint16_t* stage = nullptr;    // (threads, 2 parts, 32 rows, chunks * 32) bf16 staged weights
  int64_t m = 0;
  int n = 0, k = 0, chunks = 0;  // chunks = ceil(K / 32)
  cpu::AmxGrid grid;
};

// Load masks of a chunk of 32 inputs with `left` of them before the row's end (left >= 1): inputs 0-15, 16-31.
inline void chunk_masks(int left, __mmask16* m0, __mmask16* m1) {
  *m0 = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
  *m1 = left >= 32 ? __mmask16(0xFFFF) : left > 16 ? __mmask16((1u << (left - 16)) - 1) : __mmask16(0);
}

// 32 fp32 (two vectors, inputs 0-15 and 16-31) -> hi, lo: 32 bf16 each, in input order.
RSVLM_BF16X3 inline void split_bf16(__m512 f0, __m512 f1, __m512i* hi, __m512i* lo) {
  const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(f1, f0);
  // hi back to fp32 (exact): bf16 bits << 16
  const __m512 h0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
  const __m512 h1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
  *hi = h;
  *lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(f1, h1), _mm512_sub_ps(f0, h0));
}

// Stage weight rows n0 .. n0 + 31 as bf16 hi rows then lo rows (2, 32, kb = chunks * 32), zero past K and N.
RSVLM_BF16X3 void bf16x3_stage(const Bf16x3Call& q, int n0, uint16_t* st) {
  const int64_t kb = int64_t(q.chunks) * kBfChunk;
  for (int r = 0; r < kAmxPairRows; ++r) {
    uint16_t* hi = st + r * kb;
    uint16_t* lo = st + (kAmxPairRows + r) * kb;
    const int n = n0 + r;
    if (n >= q.n) {
      std::memset(hi, 0, size_t(kb) * 2);
      std::memset(lo, 0, size_t(kb) * 2);
      continue;
    }
    const uint16_t* row = q.w + int64_t(n) * q.k;
    for (int i = 0; i < q.k; i += kBfChunk) {
      __mmask16 m0, m1;
      chunk_masks(q.k - i, &m0, &m1);
      const __m512 f0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, row + i));
      const __m512 f1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, row + i + 16));
      __m512i h, l;
      split_bf16(f0, f1, &h, &l);
      _mm512_storeu_si512(hi + i, h);
      _mm512_storeu_si512(lo + i, l);
    }
  }
}

// Tile use. RB = 2: C t = panel * 2 + row block (0-3), A 4, 5 (panel 0, 1: hi, then lo), B 6, 7 (row block 0, 1:
// hi, lo, hi again). RB = 1: C 0, 1 (panels), A 2, 3 (hi of panel 0, 1), 4, 5 (lo), B 6 (x hi), 7 (x lo).
template <int RB>
RSVLM_BF16X3 void bf16x3_step(const Bf16x3Call& q, const uint16_t* st, int64_t rb0, float (*c)[RB][kAmxTileRows][kAmxTileRows]) {
  const int64_t kb = int64_t(q.chunks) * kBfChunk;
  const int64_t lda = kb * 2;  // bytes per staged row
  const uint16_t* hi0 = st;
  const uint16_t* hi1 = st + kAmxTileRows * kb;
  const uint16_t* lo0 = st + kAmxPairRows * kb;
  const uint16_t* lo1 = lo0 + kAmxTileRows * kb;
  const int64_t rb_bytes = int64_t(q.chunks) * 2 * kBfBTileBytes;  // one row block's B tiles
  const char* xb0 = reinterpret_cast<const char*>(q.xb) + rb0 * rb_bytes;
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (RB > 1) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int ch = 0; ch < q.chunks; ++ch) {
    const int64_t a_off = int64_t(ch) * kBfChunk;
    const char* xhi = xb0 + int64_t(ch) * 2 * kBfBTileBytes;  // row block rb0; rb0 + 1 is rb_bytes further
    const char* xlo = xhi + kBfBTileBytes;
    if constexpr (RB > 1) {
      _tile_loadd(4, hi0 + a_off, lda);
      _tile_loadd(6, xhi, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_loadd(5, hi1 + a_off, lda);
      _tile_dpbf16ps(2, 5, 6);
      _tile_loadd(7, xhi + rb_bytes, 64);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
      _tile_loadd(6, xlo, 64);  // w_hi . x_lo
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(2, 5, 6);
      _tile_loadd(7, xlo + rb_bytes, 64);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
      _tile_loadd(4, lo0 + a_off, lda);  // w_lo . x_hi
      _tile_loadd(6, xhi, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_loadd(5, lo1 + a_off, lda);
      _tile_dpbf16ps(2, 5, 6);
      _tile_loadd(7, xhi + rb_bytes, 64);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    } else {
      _tile_loadd(2, hi0 + a_off, lda);
      _tile_loadd(6, xhi, 64);
      _tile_loadd(3, hi1 + a_off, lda);
      _tile_loadd(7, xlo, 64);
      _tile_loadd(4, lo0 + a_off, lda);
      _tile_loadd(5, lo1 + a_off, lda);
      _tile_dpbf16ps(0, 2, 6);
      _tile_dpbf16ps(1, 3, 6);
      _tile_dpbf16ps(0, 2, 7);
      _tile_dpbf16ps(1, 3, 7);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 5, 6);
    }
  }
  cpu::amx_store_c<RB>(c);
}

// Weight rows n0 .. n0 + 31 (staged at st) against row blocks rb0 .. rb0 + RB - 1 of x, written to out.
template <int RB>
RSVLM_BF16X3 void bf16x3_block(const Bf16x3Call& q, const uint16_t* st, int n0, int64_t rb0) {
  alignas(64) float c[2][RB][kAmxTileRows][kAmxTileRows];  // [panel][row block][weight row][row of x]
  bf16x3_step<RB>(q, st, rb0, c);
  const int rows = std::min(kAmxPairRows, q.n - n0);
  for (int j = 0; j < RB; ++j) {
    const int64_t m0 = (rb0 + j) * kAmxTileRows;
    const int cols = int(std::min<int64_t>(kAmxTileRows, q.m - m0));
    for (int r = 0; r < rows; ++r) {
      const float bias = q.bias ? q.bias[n0 + r] : 0.f;
      const float* cr = c[r / kAmxTileRows][j][r % kAmxTileRows];
      for (int col = 0; col < cols; ++col) q.out[(m0 + col) * q.n + n0 + r] = cr[col] + bias;
    }
  }
}

// Work item: weight rows pair * 32 .. + 31 against the row blocks of span `span_index` (see cpu::amx_for_items).
RSVLM_BF16X3 void bf16x3_item(const Bf16x3Call& q, int pair, int64_t span_index, int next_pair, int worker) {
  cpu::amx_configure_16x64();
  const int n0 = pair * kAmxPairRows;
  const int64_t kb = int64_t(q.chunks) * kBfChunk;
  uint16_t* st = q.stage + int64_t(worker) * 2 * kAmxPairRows * kb;
  bf16x3_stage(q, n0, st);
  if (next_pair >= 0 && next_pair != pair) {  // the next pair's fp16 rows into L2 (one sequential stream)
    const int next_n0 = next_pair * kAmxPairRows;
    const char* next = reinterpret_cast<const char*>(q.w + int64_t(next_n0) * q.k);
    const int64_t bytes = int64_t(std::min(kAmxPairRows, q.n - next_n0)) * q.k * 2;
    for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T1);
  }
  const int64_t rb_begin = span_index * q.grid.span, rb_end = std::min(q.grid.row_blocks, rb_begin + q.grid.span);
  for (int64_t rb = rb_begin; rb < rb_end; rb += cpu::kAmxStepBlocks) {
    if (rb + 1 < rb_end)
      bf16x3_block<2>(q, st, n0, rb);
    else
      bf16x3_block<1>(q, st, n0, rb);
  }
  _tile_release();
}

// Row m of x (K) split into hi / lo bf16 in the B layout of xb: input pair j of chunk c of row m -> the int32 at
// byte ((m / 16) * chunks + c) * 2 KiB + part * 1 KiB + j * 64 + (m % 16) * 4 (part 0 hi, 1 lo), zero past K.
RSVLM_BF16X3 void bf16x3_split_row(const Bf16x3Call& q, const float* row, int64_t m, uint16_t* xb) {
  const int64_t rb_bytes = int64_t(q.chunks) * 2 * kBfBTileBytes;
  char* base = reinterpret_cast<char*>(xb) + (m / kAmxTileRows) * rb_bytes + (m % kAmxTileRows) * 4;
  const __m512i pair_offsets = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(64));
  for (int ch = 0; ch < q.chunks; ++ch) {
    const int i = ch * kBfChunk;
    __mmask16 m0, m1;
    chunk_masks(q.k - i, &m0, &m1);
    __m512i h, l;
    split_bf16(_mm512_maskz_loadu_ps(m0, row + i), _mm512_maskz_loadu_ps(m1, row + i + 16), &h, &l);
    char* dst = base + int64_t(ch) * 2 * kBfBTileBytes;
    _mm512_i32scatter_epi32(dst, pair_offsets, h, 1);
    _mm512_i32scatter_epi32(dst + kBfBTileBytes, pair_offsets, l, 1);
  }
}

// linear_cpu for fp16 weights on the amx kernel set with the bf16x3 permission (p validated, M >= 1).
Status linear_bf16x3(const LinearParams& p) {
  Bf16x3Call q;
  q.w = static_cast<const uint16_t*>(p.w);
  q.bias = static_cast<const float*>(p.bias);
  q.out = static_cast<float*>(p.out);
  q.m = p.m;
  q.n = p.n;
  q.k = p.k;
  q.chunks = (p.k + kBfChunk - 1) / kBfChunk;
  const int64_t rb_bytes = int64_t(q.chunks) * 2 * kBfBTileBytes;
  q.grid = cpu::amx_grid(q.m, q.n, rb_bytes, kBfSpanBytes);
  const int threads = host::max_threads();
  std::vector<uint16_t> xb, stage;
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(xb, rb_bytes / 2, q.grid.row_blocks, "linear"));  // zero: the padding
  RSVLM_RETURN_IF_ERROR(
      host::alloc_scratch(stage, int64_t(2) * kAmxPairRows * q.chunks * kBfChunk, threads, "linear"));
  const float* x = static_cast<const float*>(p.x);
  uint16_t* const xbd = xb.data();
  host::parallel_for(q.m, kAmxTileRows, threads, [&](int64_t m, int) { bf16x3_split_row(q, x + m * q.k, m, xbd); });
  q.xb = xb.data();
  q.stage = stage.data();
  cpu::amx_for_items(q.grid, threads, [&](int pair, int64_t span_index, int next_pair, int worker) {
    bf16x3_item(q, pair, span_index, next_pair, worker);
  });
  return Status::Ok();
}
}  // namespace
#endif

Status linear_cpu(const LinearParams& p) {
  Status st = linear_validate(p, false);
  if (!st.ok()) return st;
  if (p.m == 0 || p.n == 0) return Status::Ok();
  const KernelSet& ks = active_kernels();
  const float* x = static_cast<const float*>(p.x);  // (M, K)
  const float* bias = static_cast<const float*>(p.bias);
  float* out = static_cast<float*>(p.out);  // (M, N)
  const int64_t m = p.m;
  const int n = p.n, k = p.k;
  const int64_t wsize = dtype_size(p.w_dtype);
  const WeightKind wk = p.w_dtype == DType::f16 ? kF16 : p.w_dtype == DType::i8 ? kI8 : kF32;
  auto w_at = [&](int row, int col) {  // &W[row, col] in its storage dtype
    return static_cast<const char*>(p.w) + (int64_t(row) * k + col) * wsize;
  };
  auto finish = [&](float y, int col) {  // the full sum over k -> y
    if (wk == kI8) y *= p.w_scale[col];
    return bias ? y + bias[col] : y;
  };

#if RSVLM_X86
  if (p.bf16x3 && wk == kF16 && m >= kBf16x3MinRows && cpu_kernels() == CpuKernels::amx) return linear_bf16x3(p);
  if (cpu_kernels() >= CpuKernels::avx512vnni && m >= kDot512MinRows)
    return linear_avx512(x, out, m, n, k, wk, wsize, w_at, finish);
#endif
  if (m < kGemmMinRows) {
    const int rows = static_cast<int>(m);
    const float* xr[kMr];
    for (int r = 0; r < rows; ++r) xr[r] = x + r * int64_t(k);
    const RowFn row_fn = ks.row[wk][rows];
    // Chunks of ~64 KiB of weight rows handed out dynamically: a thread that the OS deschedules on a busy
    // machine delays one chunk, not a static half of the matrix; each chunk is one sequential stream.
    const int64_t chunk_rows = host::gemv_chunk_rows(int64_t(k) * wsize);
    host::parallel_chunks(n, chunk_rows, host::threads_for(int64_t(n) * k), [&](int64_t j0, int64_t j1, int) {
      for (int j = int(j0); j < int(j1); ++j) {  // a chunk: one sequential stream of weight rows
        float acc[kMr];
        row_fn(xr, w_at(j, 0), k, acc);
        for (int r = 0; r < rows; ++r) out[r * int64_t(n) + j] = finish(acc[r], j);
      }
    });
    return Status::Ok();
  }

  const int panels = (n + kNc - 1) / kNc;
  // One (kNc, kKc) fp32 panel of W per thread, allocated before the parallel region.
  const int threads = host::max_threads();
  std::vector<float> panel_buf;
  st = host::alloc_scratch(panel_buf, int64_t(kNc) * kKc, threads, "linear");
  if (!st.ok()) return st;
  host::parallel_for(panels, 1, threads, [&](int64_t pi_, int worker) {
    const int pi = int(pi_);
    float* const buf = panel_buf.data() + int64_t(worker) * kNc * kKc;  // (kNc, kKc)
    const int n0 = pi * kNc, nc = std::min(kNc, n - n0);
    for (int k0 = 0; k0 < k; k0 += kKc) {
      const int kc = std::min(kKc, k - k0);
      const bool first = k0 == 0, last = k0 + kc == k;
      ks.convert[wk](w_at(n0, k0), k, nc, kc, buf);
      for (int64_t m0 = 0; m0 < m; m0 += kMr) {
        const int rows = static_cast<int>(std::min<int64_t>(kMr, m - m0));
        const float* xr[kMr];
        for (int r = 0; r < rows; ++r) xr[r] = x + (m0 + r) * k + k0;
        for (int j0 = 0; j0 < nc; j0 += kNr) {
          const int nt = std::min(kNr, nc - j0);
          const void* wr[kNr];
          for (int c = 0; c < kNr; ++c) wr[c] = buf + int64_t(j0 + std::min(c, nt - 1)) * kc;
          float acc[kMr * kNr];
          ks.tile[kF32][rows](xr, wr, kc, acc);
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
  });
  return Status::Ok();
}

Status quantize_weight_int8_cpu(const float* w, int n, int k, int8_t* q, float* scale) {
  if (w == nullptr || q == nullptr || scale == nullptr || n <= 0 || k <= 0)
    return Status::Invalid("quantize_weight_int8: needs a non-empty (N, K) weight");
  host::parallel_for(n, 16, host::max_threads(), [&](int64_t r, int) {
    const float* row = w + r * k;
    float amax = 0.f;
    for (int i = 0; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int i = 0; i < k; ++i)
      q[r * k + i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(row[i] * inv))));
    scale[r] = amax / 127.f;
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
