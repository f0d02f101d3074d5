// qlinear fast CPU path: int8 / int4 weights x int8 activations quantised per block of 128 inputs,
// exact int32 block dots, fp32 outer sum (see rsvlm_edge/qlinear.h). Tested against
// qlinear_reference (qlinear_ref.cpp).
//
// 1. Quantise every row of x once (quantize_activations), into scratch allocated before any parallel
//    loop: xq (M, K) int8 in the micro-kernel's layout, |xq| (i8 weights: the unsigned operand of
//    the dot instructions), sx (M, blocks) and, for i4, the per-block sums of xq (the -8 offset of
//    the stored nibbles is applied once per block: sum (v - 8) x = sum v x - 8 sum x).
//    i4 layout: in every full 128-input chunk (= activation block), the 64 even inputs first, then the
//    64 odd ones, so that the low / high nibbles of the chunk's 64 weight bytes meet their inputs
//    without any shuffle (one 512-bit register each, or two 256-bit halves).
// 2. Two loop nests:
//    GEMV (M < 4: decode, bandwidth-bound): the thread pool over weight rows, one row kernel per row (R <= 3 rows
//         of x); each thread reads its contiguous range of rows front to back as one stream, each
//         weight byte once for every row of x.
//    GEMM (M >= 4: prefill, batched decode): the thread pool over chunks of panels of 32 weight rows (32 x K
//         bytes stay in L2; the first pass over a panel fetches the next one into L2) and, inside, tiles of 3 rows
//         of x times 4 weight rows; on the amx kernel set instead AMX-INT8
//         tile products (qlinear_amx below: weights as the A operand straight from their rows, x in AMX's B
//         layout, one C tile per 16 x 16 outputs and 64 inputs, scaled per block; bit-identical to avx512vnni).
// Micro-kernels (the active set follows cpu_kernels(), see rsvlm_edge/linear.h):
//    avx2        vpmaddubsw + vpmaddwd (u8 x s8 -> s16 pairs -> s32; no saturation: |pair| <= 2*127*127)
//    avx512vnni  vpdpbusd on 512-bit registers (GEMM tile, GEMV rows); i8 weights meet xq + 128 (unsigned) and
//                the 128 * sum(w) this adds is taken off per block (vpdpbusd against ones), instead of the sign
//                trick's extra instruction per product. The i8 GEMV row on 512 bits instead of 256 (half the
//                instructions per weight byte) streamed 5-15 % more (TinyLlama w8 decode, AMX Xeon, 2 threads,
//                whole C++ step, alternated in one process: bs1 27.7 -> 29.4 tok/s median, bs2 40.8 -> 46.8)
//    amx         the GEMM on the AMX tile unit (tdpbssd: signed x signed, no offset); GEMV as avx512vnni
//    portable    plain C++ integer loops (the compiler vectorises them; aarch64 and older x86-64)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define RSVLM_X86 1
#include <immintrin.h>
#endif

#include "common/amx_tiles.h"
#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/linear.h"
#include "rsvlm_edge/qlinear.h"

namespace rsvlm_edge {
namespace {

constexpr int kQR = 3;               // rows of x per tile
constexpr int kQC = 4;               // weight rows per tile
constexpr int kChunk4 = 128;         // i4: inputs per permuted chunk (64 weight bytes; one activation block)
constexpr int kPanel = 32;           // GEMM: weight rows per pool task
constexpr int64_t kGemmMinRows = 4;  // M >= 4: GEMM loop nest, else GEMV
constexpr int64_t kPrefetchAheadBytes = 8192;  // i4 GEMV: how far ahead in the weight stream a row prefetches
// i8 GEMV (x86 rows): each full block prefetches its two lines this many bytes ahead into L2 (through the next
// rows: the matrix is contiguous; a prefetch past its end does not fault). Measured on the AMX Xeon, 2 threads,
// 1.2 GB of TinyLlama down_proj-shaped weights (GB/s): none 19.2-20.0, 2048 24.8-25.3, 6144 24.9-25.9,
// 12288 24.3-25.3 (fp16 rows on the same machine: 30.5-32.6). A whole row fetched one row ahead was slower on Zen 4.
// Again with the weights on huge pages (backends/host_memory.py): 27-30 GB/s for 6144 and within noise of it for
// 2-24 KiB ahead, T0 instead of T1, and a 512-bit row (fp16 rows 32-34, the read benchmark 33).
constexpr int kI8RowPrefetchAhead = 6144;

// Up to kQR rows of quantised activations, in the kernel layout.
struct QRows {
  const int8_t* q[kQR];     // (K) xq
  const uint8_t* a[kQR];    // (K) i8 weights only: |xq|, or xq + 128 for kernels with offset_a
  const float* s[kQR];      // (blocks) sx
  const int32_t* sum[kQR];  // (blocks) sum of xq per block (i4 only)
};

// kQC weight rows.
struct QCols {
  const void* w[kQC];         // i8: (K) int8; i4: (K / 2) packed bytes
  const float* sw[kQC];       // (G) scales
};

// acc[r * kQC + c] = sum_b sx[r][b] * sw[c][g(b)] * dot_b(xq[r], q[c])  for r < R, c < kQC.
using QTileFn = void (*)(const QRows& x, const QCols& w, int k, int group, float* acc);

// acc[r] = sum_b sx[r][b] * sw[g(b)] * dot_b(xq[r], q)  for r < R: one weight row w (K or K/2 bytes),
// read once front to back (decode: a single sequential stream per thread is what reaches the memory
// bandwidth; tiles of 4 interleaved short rows reach about half of it).
using QRowFn = void (*)(const QRows& x, const void* w, const float* sw, int k, int group, float* acc);

// quantize_activations for one row, bit for bit (see qlinear.h).
using QuantizeFn = void (*)(const float* x, int k, int8_t* xq, float* sx);

struct QKernelSet {
  QTileFn tile[2][kQR + 1];  // [QWeight][R]; R = 0 unused: GEMM
  QRowFn row[2][kQR + 1];    // [QWeight][R]: GEMV
  bool offset_a;             // i8: QRows::a holds xq + 128 (true) or |xq| (false)
  QuantizeFn quantize;       // quantize_activations or a vectorised equivalent
};

// Prefetch [p, p + bytes) into L2 (x86 prefetcht1, aarch64 prfm pldl2keep).
inline void prefetch_l2(const char* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 2);
}

// The unsigned stored value v = q + 8 of input kk (natural order) of an i4 row.
inline int nibble(const void* w, int kk) {
  const uint8_t byte = static_cast<const uint8_t*>(w)[kk / 2];
  return kk % 2 == 0 ? byte & 0x0F : byte >> 4;
}

// Position of input kk inside an i4 row's activation layout (natural outside full 128-chunks).
inline int i4_slot(int kk, int k) {
  const int c0 = kk - kk % kChunk4;
  if (c0 + kChunk4 > k) return kk;
  const int j = kk - c0;
  return c0 + (j % 2 == 0 ? j / 2 : kChunk4 / 2 + j / 2);
}

// Integer dot over [k0, k1) of one row of x and one weight row, with the i4 nibbles unsigned (v).
template <QWeight F>
inline int32_t dot_scalar(const int8_t* xq, const void* w, int k0, int k1, int k) {
  int32_t s = 0;
  for (int kk = k0; kk < k1; ++kk) {
    if (F == QWeight::i8)
      s += int32_t(xq[kk]) * static_cast<const int8_t*>(w)[kk];
    else
      s += int32_t(xq[i4_slot(kk, k)]) * nibble(w, kk);
  }
  return s;
}

// ---- portable ----

template <int R, QWeight F, int C>
void qtile_portable_c(const QRows& x, const QCols& w, int k, int group, float* acc) {
  float f[R][C] = {};
  for (int k0 = 0, b = 0; k0 < k; k0 += kQActBlock, ++b) {
    const int k1 = std::min(k, k0 + kQActBlock);
    for (int c = 0; c < C; ++c) {
      const float sw = w.sw[c][k0 / group];
      for (int r = 0; r < R; ++r) {
        int32_t d = 0;
        if (F == QWeight::i8) {
          const int8_t* wr = static_cast<const int8_t*>(w.w[c]);
          for (int kk = k0; kk < k1; ++kk) d += int32_t(x.q[r][kk]) * int32_t(wr[kk]);
        } else {
          const uint8_t* wr = static_cast<const uint8_t*>(w.w[c]);
          int kk = k0;
          for (; kk + kChunk4 <= k1; kk += kChunk4)  // permuted chunk: byte j <-> slots j and 64 + j
            for (int j = 0; j < kChunk4 / 2; ++j) {
              const int byte = wr[kk / 2 + j];
              d += int32_t(x.q[r][kk + j]) * (byte & 0x0F) + int32_t(x.q[r][kk + kChunk4 / 2 + j]) * (byte >> 4);
            }
          d += dot_scalar<F>(x.q[r], w.w[c], kk, k1, k);
          d -= 8 * x.sum[r][b];
        }
        f[r][c] += float(d) * (x.s[r][b] * sw);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r * C + c] = f[r][c];
}

template <int R, QWeight F>
void qtile_portable(const QRows& x, const QCols& w, int k, int group, float* acc) {
  qtile_portable_c<R, F, kQC>(x, w, k, group, acc);
}

template <int R, QWeight F>
void qrow_portable(const QRows& x, const void* w, const float* sw, int k, int group, float* acc) {
  QCols one{};
  one.w[0] = w;
  one.sw[0] = sw;
  qtile_portable_c<R, F, 1>(x, one, k, group, acc);
}

#define RSVLM_QTILES(fn, F) {nullptr, fn<1, F>, fn<2, F>, fn<3, F>}
const QKernelSet kQPortable = {
    {RSVLM_QTILES(qtile_portable, QWeight::i8), RSVLM_QTILES(qtile_portable, QWeight::i4)},
    {RSVLM_QTILES(qrow_portable, QWeight::i8), RSVLM_QTILES(qrow_portable, QWeight::i4)},
    false, quantize_activations};

// ---- x86-64: avx2 and avx512vnni ----

#if RSVLM_X86
#define RSVLM_QAVX2 __attribute__((target("avx2,fma")))
#define RSVLM_QVNNI __attribute__((target("avx2,fma,avx512f,avx512vl,avx512bw,avx512vnni")))

// acc + the int32 dot of 32 unsigned (u) and 32 signed (s) bytes, in 8 int32 lanes.
RSVLM_QAVX2 inline __m256i dot_u8s8_avx2(__m256i acc, __m256i u, __m256i s) {
  const __m256i pairs = _mm256_maddubs_epi16(u, s);  // 16 x (u0 s0 + u1 s1) in int16: callers keep it in range
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// The lane sums of a[0..3] as one vector of 4 int32.
RSVLM_QAVX2 inline __m128i hsum4_epi32(const __m256i* a) {
  const __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
  return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

// The avx2 GEMM tile (R rows of x x 4 weight rows). Per block: int32 lane accumulators per (r, c), reduced to
// 4 sums per row of x, scaled by sw[c][g] * sx[r][b] and added to 4 fp32 sums per row (the avx512vnni and amx
// tiles do the same float operations). Operand ranges (maddubs never saturates): i8: |xq| <= 127 times
// sign-adjusted w in [-128, 127]; i4: nibbles 0..15 times xq in [-127, 127], two products per pair, 2 pairs
// added in int16 (<= 7620).
template <int R, QWeight F>
RSVLM_QAVX2 void qtile_avx2(const QRows& x, const QCols& w, int k, int group, float* acc) {
  __m128 f[R];
  for (int r = 0; r < R; ++r) f[r] = _mm_setzero_ps();
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int k0 = 0, b = 0; k0 < k; k0 += kQActBlock, ++b) {
    const int k1 = std::min(k, k0 + kQActBlock);
    __m256i ai[R][kQC];
    for (int c = 0; c < kQC; ++c)
      for (int r = 0; r < R; ++r) ai[r][c] = _mm256_setzero_si256();
    int kk = k0;
    if (F == QWeight::i8) {
      for (; kk + 32 <= k1; kk += 32)
        for (int c = 0; c < kQC; ++c) {
          const int8_t* wp = static_cast<const int8_t*>(w.w[c]) + kk;
          const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
          for (int r = 0; r < R; ++r) {
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q[r] + kk));
            const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.a[r] + kk));
            ai[r][c] = dot_u8s8_avx2(ai[r][c], xa, _mm256_sign_epi8(wv, xv));
          }
        }
    } else {
      for (; kk + kChunk4 <= k1; kk += kChunk4)  // half h: bytes 32h.. <-> evens 32h.., odds 64 + 32h..
        for (int h = 0; h < 2; ++h)
          for (int c = 0; c < kQC; ++c) {
            const uint8_t* wp = static_cast<const uint8_t*>(w.w[c]) + kk / 2 + 32 * h;
            const __m256i wb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
            const __m256i lo = _mm256_and_si256(wb, low4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(wb, 4), low4);
            for (int r = 0; r < R; ++r) {
              const __m256i xe = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q[r] + kk + 32 * h));
              const __m256i xo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q[r] + kk + 64 + 32 * h));
              ai[r][c] = dot_u8s8_avx2(dot_u8s8_avx2(ai[r][c], lo, xe), hi, xo);
            }
          }
    }
    const int g = k0 / group;
    const __m128 sw = _mm_setr_ps(w.sw[0][g], w.sw[1][g], w.sw[2][g], w.sw[3][g]);
    for (int r = 0; r < R; ++r) {
      __m128i s = hsum4_epi32(ai[r]);
      if (F == QWeight::i4) s = _mm_sub_epi32(s, _mm_set1_epi32(8 * x.sum[r][b]));
      if (kk < k1) {  // a short last block: the inputs the vector steps did not cover
        alignas(16) int32_t tail[kQC];
        for (int c = 0; c < kQC; ++c) tail[c] = dot_scalar<F>(x.q[r], w.w[c], kk, k1, k);
        s = _mm_add_epi32(s, _mm_load_si128(reinterpret_cast<__m128i*>(tail)));
      }
      f[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(s), _mm_mul_ps(sw, _mm_set1_ps(x.s[r][b])), f[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm_storeu_ps(acc + r * kQC, f[r]);
}

// quantize_activations, vectorised: the same float operations (|x| max, x * (127 / amax), round half to
// even, clamp) on 8 lanes, so the result is identical bit for bit. Full blocks of 128 finite inputs take
// the vector path; a row with a non-finite value and a short last block go through the definition.
RSVLM_QAVX2 void quantize_activations_avx2(const float* x, int k, int8_t* xq, float* sx) {
  const __m256 sign = _mm256_set1_ps(-0.f), inf = _mm256_set1_ps(INFINITY);
  for (int k0 = 0, b = 0; k0 < k; k0 += kQActBlock, ++b) {
    if (k - k0 < kQActBlock) {
      quantize_activations(x + k0, k - k0, xq + k0, sx + b);
      break;
    }
    __m256 amax = _mm256_setzero_ps();
    __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for (int i = 0; i < kQActBlock; i += 8) {
      const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k0 + i));
      finite = _mm256_and_ps(finite, _mm256_cmp_ps(a, inf, _CMP_LT_OQ));  // false for NaN and inf
      amax = _mm256_max_ps(amax, a);
    }
    if (_mm256_movemask_ps(finite) != 0xFF) {
      quantize_activations(x + k0, kQActBlock, xq + k0, sx + b);
      continue;
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float am = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
    const __m256 inv = _mm256_set1_ps(am > 0.f ? 127.f / am : 0.f);
    const __m256 hi = _mm256_set1_ps(127.f), lo = _mm256_set1_ps(-127.f);
    for (int i = 0; i < kQActBlock; i += 32) {
      __m256i q[4];
      for (int j = 0; j < 4; ++j) {
        const __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k0 + i + 8 * j), inv),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q[j] = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, v)));
      }
      // packs interleave 128-bit lanes: 32-bit lanes (0..7)(8..15)(16..23)(24..31) -> restore the order
      const __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
      const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
      const __m256i ordered = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + k0 + i), ordered);
    }
    sx[b] = am / 127.f;
  }
}

// The sum of 8 int32 lanes.
RSVLM_QAVX2 inline int32_t hsum8_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_hadd_epi32(s, s);
  return _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
}

// The sum of 8 fp32 lanes.
RSVLM_QAVX2 inline float hsum8_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

// One weight row against R rows of x (GEMV). Four independent accumulators per row of x (the four
// 32-byte chunks of a full block) hide the latency of the dot instructions.
// i8: a[r][u] += dot(xq[r][kc .. kc + 31], w[kc .. kc + 31]);  i4: a[r][u], a[r][u + 1] += the even / odd
// inputs of the permuted 64-chunk at kc (32 weight bytes at kc / 2).
#define RSVLM_DEFINE_QROW_X86(NAME, TARGET, DOT)                                                           \
  template <int R>                                                                                         \
  TARGET __attribute__((always_inline)) inline void NAME##_step_i8(const QRows& x, const int8_t* w, int kc,  \
                                                                    __m256i (*a)[4], int u) {              \
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + kc));                      \
    for (int r = 0; r < R; ++r) {                                                                          \
      const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.a[r] + kc));                \
      a[r][u] = DOT(a[r][u], xa, _mm256_sign_epi8(wv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q[r] + kc)))); \
    }                                                                                                      \
  }                                                                                                        \
  template <int R>                                                                                         \
  TARGET __attribute__((always_inline)) inline void NAME##_step_i4(const QRows& x, const uint8_t* w, int kc, \
                                                                    int h, __m256i (*a)[4], int u) {       \
    /* half h of the 128-chunk at kc: weight bytes kc/2 + 32h .. <-> evens kc + 32h .., odds kc + 64 + 32h .. */ \
    const __m256i low4 = _mm256_set1_epi8(0x0F);                                                           \
    const __m256i wb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + kc / 2 + 32 * h));         \
    const __m256i lo = _mm256_and_si256(wb, low4);                                                         \
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(wb, 4), low4);                                   \
    for (int r = 0; r < R; ++r) {                                                                          \
      a[r][u] = DOT(a[r][u], lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q[r] + kc + 32 * h))); \
      a[r][u + 1] = DOT(a[r][u + 1], hi,                                                                   \
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q[r] + kc + 64 + 32 * h)));  \
    }                                                                                                      \
  }                                                                                                        \
  template <int R, QWeight F>                                                                              \
  TARGET void NAME(const QRows& x, const void* wrow, const float* sw, int k, int group, float* acc) {     \
    /* Per block: the int32 lanes (exact) are converted and multiplied by sx * sw into 8 fp32 lanes per   \
       row of x; the lanes are summed once per row at the end (a horizontal sum per block cost as much as \
       the block's dot products). Scalar parts: the tail of a short block and the i4 offset 8 * sum(xq). */ \
    __m256 fl[R];                                                                                          \
    float f[R] = {};                                                                                       \
    for (int r = 0; r < R; ++r) fl[r] = _mm256_setzero_ps();                                               \
    for (int k0 = 0, b = 0; k0 < k; k0 += kQActBlock, ++b) {                                               \
      const int k1 = std::min(k, k0 + kQActBlock);                                                         \
      __m256i a[R][4];                                                                                     \
      for (int u = 0; u < 4; ++u)                                                                          \
        for (int r = 0; r < R; ++r) a[r][u] = _mm256_setzero_si256();                                      \
      int kk = k0;                                                                                         \
      if (F == QWeight::i8) {                                                                              \
        const int8_t* w = static_cast<const int8_t*>(wrow);                                                \
        if (kk + 128 <= k1) { /* a full block: four independent accumulators */                            \
          _mm_prefetch(reinterpret_cast<const char*>(w + kk + kI8RowPrefetchAhead), _MM_HINT_T1);          \
          _mm_prefetch(reinterpret_cast<const char*>(w + kk + kI8RowPrefetchAhead + 64), _MM_HINT_T1);     \
          NAME##_step_i8<R>(x, w, kk, a, 0);                                                               \
          NAME##_step_i8<R>(x, w, kk + 32, a, 1);                                                          \
          NAME##_step_i8<R>(x, w, kk + 64, a, 2);                                                          \
          NAME##_step_i8<R>(x, w, kk + 96, a, 3);                                                          \
          kk += 128;                                                                                       \
        }                                                                                                  \
        for (; kk + 32 <= k1; kk += 32) NAME##_step_i8<R>(x, w, kk, a, 0);                                 \
      } else {                                                                                             \
        const uint8_t* w = static_cast<const uint8_t*>(wrow);                                              \
        if (kk + kChunk4 <= k1) { /* a full block is one permuted chunk */                                 \
          NAME##_step_i4<R>(x, w, kk, 0, a, 0);                                                            \
          NAME##_step_i4<R>(x, w, kk, 1, a, 2);                                                            \
          kk += kChunk4;                                                                                   \
        }                                                                                                  \
      }                                                                                                    \
      const float s_w = sw[group == k ? 0 : group == kQActBlock ? b : k0 / group];                         \
      for (int r = 0; r < R; ++r) {                                                                        \
        const float scale = x.s[r][b] * s_w;                                                               \
        const __m256i v =                                                                                  \
            _mm256_add_epi32(_mm256_add_epi32(a[r][0], a[r][1]), _mm256_add_epi32(a[r][2], a[r][3]));      \
        fl[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(scale), fl[r]);                      \
        const int32_t scalar = (kk < k1 ? dot_scalar<F>(x.q[r], wrow, kk, k1, k) : 0) -                    \
                               (F == QWeight::i4 ? 8 * x.sum[r][b] : 0);                                   \
        if (scalar != 0) f[r] += float(scalar) * scale;                                                    \
      }                                                                                                    \
    }                                                                                                      \
    for (int r = 0; r < R; ++r) acc[r] = hsum8_ps(fl[r]) + f[r];                                           \
  }

RSVLM_DEFINE_QROW_X86(qrow_avx2, RSVLM_QAVX2, dot_u8s8_avx2)

const QKernelSet kQAvx2 = {{RSVLM_QTILES(qtile_avx2, QWeight::i8), RSVLM_QTILES(qtile_avx2, QWeight::i4)},
                           {RSVLM_QTILES(qrow_avx2, QWeight::i8), RSVLM_QTILES(qrow_avx2, QWeight::i4)},
                           false, quantize_activations_avx2};
// avx512vnni GEMV row for i4 weights: a full block is one permuted chunk, 64 weight bytes in one
// 512-bit register, low nibbles against the block's 64 even inputs and high nibbles against the 64
// odd ones (two vpdpbusd); per block one fp32 multiply-add of the 16 int32 lanes, the -8 offset of
// the stored nibbles as one scalar per block. Half the instructions of the 256-bit row: the i4 row
// is compute-bound, not bandwidth-bound, on 2 Zen 4 cores.
template <int R>
RSVLM_QVNNI void qrow_vnni512_i4(const QRows& x, const void* wrow, const float* sw, int k, int group, float* acc) {
  const uint8_t* w = static_cast<const uint8_t*>(wrow);  // (K / 2) packed bytes
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 fl[R];
  float f[R] = {};
  for (int r = 0; r < R; ++r) fl[r] = _mm512_setzero_ps();
  for (int k0 = 0, b = 0; k0 < k; k0 += kQActBlock, ++b) {
    const int k1 = std::min(k, k0 + kQActBlock);
    const float s_w = sw[group == k ? 0 : group == kQActBlock ? b : k0 / group];
    if (k1 - k0 == kChunk4) {
      const __m512i wb = _mm512_loadu_si512(w + k0 / 2);
      const __m512i lo = _mm512_and_si512(wb, low4);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(wb, 4), low4);
      for (int r = 0; r < R; ++r) {
        __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(x.q[r] + k0));
        a = _mm512_dpbusd_epi32(a, hi, _mm512_loadu_si512(x.q[r] + k0 + 64));
        const float scale = x.s[r][b] * s_w;
        fl[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(scale), fl[r]);
        f[r] -= float(8 * x.sum[r][b]) * scale;
      }
    } else {  // a short last block: the definition
      for (int r = 0; r < R; ++r)
        f[r] += float(dot_scalar<QWeight::i4>(x.q[r], w, k0, k1, k) - 8 * x.sum[r][b]) * (x.s[r][b] * s_w);
    }
  }
  for (int r = 0; r < R; ++r) acc[r] = _mm512_reduce_add_ps(fl[r]) + f[r];
}

// avx512vnni GEMV row for i8 weights: a full block is two 64-byte halves in 512-bit registers, each against
// x.a = xq + 128 (vpdpbusd) and against ones for the 128 * sum(w) to take off; per block one int32 subtract,
// one conversion and one fp32 multiply-add of the 16 lanes per row of x.
template <int R>
RSVLM_QVNNI void qrow_vnni512_i8(const QRows& x, const void* wrow, const float* sw, int k, int group, float* acc) {
  const int8_t* w = static_cast<const int8_t*>(wrow);  // (K)
  const __m512i ones = _mm512_set1_epi8(1);
  __m512 fl[R];
  float f[R] = {};
  for (int r = 0; r < R; ++r) fl[r] = _mm512_setzero_ps();
  for (int k0 = 0, b = 0; k0 < k; k0 += kQActBlock, ++b) {
    const int k1 = std::min(k, k0 + kQActBlock);
    const float s_w = sw[group == k ? 0 : group == kQActBlock ? b : k0 / group];
    if (k1 - k0 == kQActBlock) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k0 + kI8RowPrefetchAhead), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(w + k0 + kI8RowPrefetchAhead + 64), _MM_HINT_T1);
      const __m512i w0 = _mm512_loadu_si512(w + k0), w1 = _mm512_loadu_si512(w + k0 + 64);
      const __m512i off = _mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, w0), ones, w1), 7);
      for (int r = 0; r < R; ++r) {
        __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(x.a[r] + k0), w0);
        a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512(x.a[r] + k0 + 64), w1);
        fl[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a, off)), _mm512_set1_ps(x.s[r][b] * s_w), fl[r]);
      }
    } else {  // a short last block: the definition
      for (int r = 0; r < R; ++r) f[r] += float(dot_scalar<QWeight::i8>(x.q[r], w, k0, k1, k)) * (x.s[r][b] * s_w);
    }
  }
  for (int r = 0; r < R; ++r) acc[r] = _mm512_reduce_add_ps(fl[r]) + f[r];
}

// The sums of the 16 int32 lanes of s[0..3], as one vector of 4 (exact: integer adds in any order).
RSVLM_QVNNI inline __m128i hsum4_epi32_512(const __m512i* s) {
  const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(s[0], s[1]), _mm512_unpackhi_epi32(s[0], s[1]));
  const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(s[2], s[3]), _mm512_unpackhi_epi32(s[2], s[3]));
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));  // per 128-bit lane
  const __m256i v = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

// avx512vnni GEMM tile (R rows of x x 4 weight rows): a full block's products on 512-bit registers (i8: two
// 64-byte halves, x.a = xq + 128 against w, and w against ones for the 128 * sum(w) to take off; i4: the
// block's 64 packed bytes, low / high nibbles against its first / last 64 slots), the 16 lanes of each
// (row, weight row) summed exactly to one int32 per block, then the same float operations as every tile:
// f = fma(float(dot_b), sw[c][g] * sx[r][b], f). A short last block runs the definition.
template <int R, QWeight F>
RSVLM_QVNNI void qtile_vnni512(const QRows& x, const QCols& w, int k, int group, float* acc) {
  const __m512i ones = _mm512_set1_epi8(1), low4 = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
  __m128 f[R];
  for (int r = 0; r < R; ++r) f[r] = _mm_setzero_ps();
  for (int k0 = 0, b = 0; k0 < k; k0 += kQActBlock, ++b) {
    const int k1 = std::min(k, k0 + kQActBlock), g = k0 / group;
    const __m128 sw = _mm_setr_ps(w.sw[0][g], w.sw[1][g], w.sw[2][g], w.sw[3][g]);
    __m128i dot[R];
    if (k1 - k0 == kQActBlock) {
      __m512i a[R][kQC];
      if constexpr (F == QWeight::i8) {
        __m512i ws[kQC];
        for (int h = 0; h < 2; ++h) {
          __m512i xa[R];
          for (int r = 0; r < R; ++r) xa[r] = _mm512_loadu_si512(x.a[r] + k0 + 64 * h);
          for (int c = 0; c < kQC; ++c) {
            const __m512i wv = _mm512_loadu_si512(static_cast<const int8_t*>(w.w[c]) + k0 + 64 * h);
            ws[c] = _mm512_dpbusd_epi32(h ? ws[c] : zero, ones, wv);
            for (int r = 0; r < R; ++r) a[r][c] = _mm512_dpbusd_epi32(h ? a[r][c] : zero, xa[r], wv);
          }
        }
        const __m128i off = _mm_slli_epi32(hsum4_epi32_512(ws), 7);  // 128 * sum(w) per weight row
        for (int r = 0; r < R; ++r) dot[r] = _mm_sub_epi32(hsum4_epi32_512(a[r]), off);
      } else {
        __m512i xe[R], xo[R];
        for (int r = 0; r < R; ++r) {
          xe[r] = _mm512_loadu_si512(x.q[r] + k0);
          xo[r] = _mm512_loadu_si512(x.q[r] + k0 + 64);
        }
        for (int c = 0; c < kQC; ++c) {
          const __m512i wb = _mm512_loadu_si512(static_cast<const uint8_t*>(w.w[c]) + k0 / 2);
          const __m512i lo = _mm512_and_si512(wb, low4), hi = _mm512_and_si512(_mm512_srli_epi16(wb, 4), low4);
          for (int r = 0; r < R; ++r) a[r][c] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, xe[r]), hi, xo[r]);
        }
        for (int r = 0; r < R; ++r)
          dot[r] = _mm_sub_epi32(hsum4_epi32_512(a[r]), _mm_set1_epi32(8 * x.sum[r][b]));
      }
    } else {  // a short last block: the definition (exact)
      for (int r = 0; r < R; ++r) {
        alignas(16) int32_t d[kQC];
        for (int c = 0; c < kQC; ++c)
          d[c] = dot_scalar<F>(x.q[r], w.w[c], k0, k1, k) - (F == QWeight::i4 ? 8 * x.sum[r][b] : 0);
        dot[r] = _mm_load_si128(reinterpret_cast<const __m128i*>(d));
      }
    }
    for (int r = 0; r < R; ++r)
      f[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(dot[r]), _mm_mul_ps(sw, _mm_set1_ps(x.s[r][b])), f[r]);
  }
  for (int r = 0; r < R; ++r) _mm_storeu_ps(acc + r * kQC, f[r]);
}

const QKernelSet kQVnni = {{RSVLM_QTILES(qtile_vnni512, QWeight::i8), RSVLM_QTILES(qtile_vnni512, QWeight::i4)},
                           {{nullptr, qrow_vnni512_i8<1>, qrow_vnni512_i8<2>, qrow_vnni512_i8<3>}, {nullptr, qrow_vnni512_i4<1>, qrow_vnni512_i4<2>,
                                                                   qrow_vnni512_i4<3>}},
                           true, quantize_activations_avx2};
#endif

const QKernelSet& active_qkernels() {
#if RSVLM_X86
  switch (cpu_kernels()) {
    case CpuKernels::avx512vnni:
    case CpuKernels::amx:
      return kQVnni;
    case CpuKernels::avx2:
      return kQAvx2;
    default:
      break;
  }
#endif
  return kQPortable;
}

// Row m of x quantised into the kernel layout (see the file comment); xa (i8) and xsum (i4) are skipped when
// nullptr (the amx GEMM does not read them). No allocation (safe inside a parallel loop).
void quantize_row(const QKernelSet& ks, const float* x, int k, QWeight format, int8_t* xq, uint8_t* xa, float* sx,
                  int32_t* xsum) {
  const bool offset_a = ks.offset_a;
  ks.quantize(x, k, xq, sx);
  if (format == QWeight::i8) {
    if (xa != nullptr)
      for (int i = 0; i < k; ++i)
        xa[i] = static_cast<uint8_t>(offset_a ? xq[i] + 128 : (xq[i] < 0 ? -xq[i] : xq[i]));
    return;
  }
  for (int k0 = 0, b = 0; xsum != nullptr && k0 < k; k0 += kQActBlock, ++b) {
    int32_t s = 0;
    for (int i = k0; i < std::min(k, k0 + kQActBlock); ++i) s += xq[i];
    xsum[b] = s;
  }
  int8_t chunk[kChunk4];
  for (int c0 = 0; c0 + kChunk4 <= k; c0 += kChunk4) {
    std::memcpy(chunk, xq + c0, kChunk4);
    for (int j = 0; j < kChunk4; ++j) xq[c0 + (j % 2 == 0 ? j / 2 : kChunk4 / 2 + j / 2)] = chunk[j];
  }
}

#if RSVLM_X86
// ---- x86-64: amx (AMX-TILE + AMX-INT8) for the GEMM loop nest (M >= kGemmMinRows) ----
//
// C = W . X^T on the tile unit: an A tile is 16 weight rows x 64 inputs, read straight from the row-major
// (N, K) int8 weights (stride K); a B tile is 16 rows of x x 64 inputs in AMX's B layout (4 consecutive
// inputs of one row per int32), built once per call; a C tile holds 16 x 16 exact int32 dots of one
// activation block's 64-input half. After each block of 128 inputs the C tiles are stored and
//     f[n][m] = fma(float(dot_b), sw[n][g] * sx[m][b], f[n][m])
// the same float operations, in the same order, as the avx512vnni tile (so the result is bit-identical
// to it); y[m][n] = f[n][m] + bias[n]. Both operands are signed (tdpbssd): no +128 offset, no weight sums.
// i4 weights, a partial last block and a partial last pair of rows go through a per-thread stage (stage_block:
// unpacked / copied to signed int8, nibble v -> v - 8, zero past K and past N): one block at a time, just in time,
// for an item of one step of row blocks (decode), else the whole pair once, reused by the item's steps.

#define RSVLM_QLAMX \
  __attribute__((target("avx2,fma,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,amx-tile,amx-int8")))

using cpu::kAmxTileBytes;                                     // 64 inputs per tile product
using cpu::kAmxTileRows;                                      // 16 weight rows (A) / rows of x (B) per tile
constexpr int kAmxHalves = kQActBlock / kAmxTileBytes;         // 2 tile products per activation block
constexpr int kAmxPanels = 2;                                 // weight panels (16 rows) per pair
constexpr int kAmxRowBlocks = cpu::kAmxStepBlocks;            // blocks of 16 rows of x per step
constexpr int kAmxStepRows = cpu::kAmxPairRows;               // 32 weight rows per work item
constexpr int kAmxStepCols = kAmxRowBlocks * kAmxTileRows;    // 32 rows of x per step
constexpr int kAmxBBlockBytes = kAmxTileRows * kQActBlock;    // 2 KiB: one row block's B tiles for one block
constexpr int64_t kAmxSpanBBytes = int64_t(768) << 10;        // B bytes of one span (kept in L2 across panels)

// What the work items of one AMX qlinear call share.
struct QAmxCall {
  const int8_t* w = nullptr;   // (N, K) int8 weights (i8 only; i4 always goes through the stage)
  const uint8_t* w4 = nullptr; // (N, K / 2) packed nibbles (i4) or nullptr
  const float* w_scale = nullptr;  // (N, G)
  const float* bias = nullptr;     // (N) or nullptr
  const int8_t* xb = nullptr;  // (row_blocks, blocks, 2 halves, 16 quads, 16 rows, 4) B tiles, zero past M and K
  const float* sxt = nullptr;  // (row_blocks, blocks, 16) activation scales, 0 past M
  int8_t* stage = nullptr;     // (threads, stage_per_thread) per-thread staged weights
  int64_t stage_per_thread = 0;  // 32 * blocks * 128 (a whole pair) or 2 * 32 * 128 (two blocks, just in time)
  float* out = nullptr;        // (M, N)
  int64_t m = 0;
  int n = 0, k = 0, blocks = 0, group = 0, groups = 1;
  cpu::AmxGrid grid;
  bool direct = false;                           // A tiles straight from w (i8, K % 128 == 0): full pairs
};

// Stage block b (inputs b * 128 ..) of weight rows n0 .. n0 + 31 as signed int8 at dst (32 rows x 128, row
// stride ld): copied (i8) or unpacked (i4: a full block is a permuted chunk, low nibbles -> its first 64
// slots, high -> the last 64; a short last block is in natural order), zero past K and past N.
RSVLM_QLAMX void stage_block(const QAmxCall& q, int n0, int b, int8_t* dst, int64_t ld) {
  const int k0 = b * kQActBlock, len = std::min(kQActBlock, q.k - k0);
  const __m512i low4 = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
  for (int r = 0; r < kAmxStepRows; ++r, dst += ld) {
    const int n = n0 + r;
    if (n >= q.n) {
      std::memset(dst, 0, kQActBlock);
    } else if (q.w4 == nullptr) {
      std::memcpy(dst, q.w + int64_t(n) * q.k + k0, size_t(len));
      std::memset(dst + len, 0, size_t(kQActBlock - len));
    } else if (len == kQActBlock) {
      const __m512i wb = _mm512_loadu_si512(q.w4 + int64_t(n) * (q.k / 2) + k0 / 2);
      _mm512_storeu_si512(dst, _mm512_sub_epi8(_mm512_and_si512(wb, low4), eight));
      _mm512_storeu_si512(dst + 64, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(wb, 4), low4), eight));
    } else {
      const uint8_t* row = q.w4 + int64_t(n) * (q.k / 2);
      for (int i = 0; i < len; ++i) dst[i] = static_cast<int8_t>(nibble(row, k0 + i) - 8);
      std::memset(dst + len, 0, size_t(kQActBlock - len));
    }
  }
}

// Tile use. RB = 2 (two row blocks of x): C t = panel * 2 + row block (0-3), A 4, 5 (panels), B 6, 7 (row
// blocks). RB = 1: C 0, 1 (panels), A 2 + 2h + panel for half h, B 6 + h: every tile of a block is loaded
// once, so no load waits for a product of the same block to release its tile. (The tile intrinsics take
// literal tile numbers: hence the templates.)

// Issue activation block b's tile products for 32 weight rows and row blocks rb0 .. rb0 + RB - 1 of x.
// ab: the block's first input of weight row n0 (32 rows, stride lda).
template <int RB>
RSVLM_QLAMX inline void amx_issue(const QAmxCall& q, const int8_t* ab, int64_t lda, int64_t rb0, int b) {
  const int8_t* xb0 = q.xb + (rb0 * q.blocks + b) * kAmxBBlockBytes;
  constexpr int kHalfBytes = kAmxBBlockBytes / kAmxHalves;  // one B tile
  const int8_t* a1 = ab + kAmxTileRows * lda;  // panel 1
  if constexpr (RB > 1) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int h = 0; h < kAmxHalves; ++h) {
      const int8_t* bh = xb0 + h * kHalfBytes;
      _tile_loadd(4, ab + h * kAmxTileBytes, lda);
      _tile_loadd(6, bh, kAmxTileBytes);
      _tile_dpbssd(0, 4, 6);
      _tile_loadd(5, a1 + h * kAmxTileBytes, lda);
      _tile_dpbssd(2, 5, 6);
      _tile_loadd(7, bh + int64_t(q.blocks) * kAmxBBlockBytes, kAmxTileBytes);
      _tile_dpbssd(1, 4, 7);
      _tile_dpbssd(3, 5, 7);
    }
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_loadd(2, ab, lda);
    _tile_loadd(6, xb0, kAmxTileBytes);
    _tile_loadd(3, a1, lda);
    _tile_loadd(4, ab + kAmxTileBytes, lda);
    _tile_loadd(7, xb0 + kHalfBytes, kAmxTileBytes);
    _tile_loadd(5, a1 + kAmxTileBytes, lda);
    _tile_dpbssd(0, 2, 6);
    _tile_dpbssd(1, 3, 6);
    _tile_dpbssd(0, 4, 7);
    _tile_dpbssd(1, 5, 7);
  }
}

// Add block b's stored dots c into f: f[n][m] = fma(float(dot), sw[n][g] * sx[m][b], f[n][m]).
// f (32, 32) fp32, row = weight row n0 + row, column = row of x.
template <int RB>
RSVLM_QLAMX inline void amx_scale_add(const QAmxCall& q, const int32_t (*c)[RB][kAmxTileRows][kAmxTileRows], int n0,
                                      int64_t rb0, int b, float* f) {
  const int g = int(int64_t(b) * kQActBlock / q.group);
  __m512 sx[RB];
  for (int j = 0; j < RB; ++j) sx[j] = _mm512_loadu_ps(q.sxt + ((rb0 + j) * q.blocks + b) * kAmxTileRows);
  for (int i = 0; i < kAmxPanels; ++i)
    for (int r = 0; r < kAmxTileRows; ++r) {
      const int n = n0 + i * kAmxTileRows + r;
      const __m512 sw = _mm512_set1_ps(n < q.n ? q.w_scale[int64_t(n) * q.groups + g] : 0.f);
      float* fr = f + (i * kAmxTileRows + r) * kAmxStepCols;
      for (int j = 0; j < RB; ++j) {
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(c[i][j][r]));
        _mm512_storeu_ps(fr + j * kAmxTileRows,
                         _mm512_fmadd_ps(dot, _mm512_mul_ps(sw, sx[j]), _mm512_loadu_ps(fr + j * kAmxTileRows)));
      }
    }
}

// The 32 x (16 * RB) block of f for weight rows n0 .. n0 + 31 and row blocks rb0 .. rb0 + RB - 1 of x, over
// every activation block, in block order. The weights: a (stride lda), or with a == nullptr each block
// staged just in time into jit (2 x 32 x 128 int8, alternating: small enough for L1). Block b + 1's
// products are issued before block b's dots are scaled, so the tile unit and the vector units overlap.
// next: the weight bytes of the thread's next pair (nullptr: none), fetched into L2 as one sequential
// stream over the blocks (the tile loads walk 32 rows at once, which the hardware prefetchers follow poorly).
template <int RB>
RSVLM_QLAMX void amx_pair(const QAmxCall& q, const int8_t* a, int64_t lda, int8_t* jit, int n0, int64_t rb0,
                          float* f, const char* next, int64_t next_bytes) {
  alignas(64) int32_t c[kAmxPanels][RB][kAmxTileRows][kAmxTileRows];
  for (int i = 0; i < kAmxStepRows * kAmxStepCols; ++i) f[i] = 0.f;
  const int64_t per_block = next ? (next_bytes + q.blocks - 1) / q.blocks : 0;
  auto issue = [&](int b) {
    if (a != nullptr) {
      amx_issue<RB>(q, a + int64_t(b) * kQActBlock, lda, rb0, b);
    } else {
      int8_t* buf = jit + (b % 2) * kAmxStepRows * kQActBlock;
      stage_block(q, n0, b, buf, kQActBlock);
      amx_issue<RB>(q, buf, kQActBlock, rb0, b);
    }
  };
  issue(0);
  for (int b = 0; b < q.blocks; ++b) {
    for (int64_t o = b * per_block; o < std::min(next_bytes, (b + 1) * per_block); o += 64)
      _mm_prefetch(next + o, _MM_HINT_T1);
    cpu::amx_store_c<RB>(c);  // block b's C tiles
    if (b + 1 < q.blocks) issue(b + 1);
    amx_scale_add<RB>(q, c, n0, rb0, b, f);
  }
}

// Work item: weight rows pair * 32 .. + 31 against the row blocks of span `span_index`; next_pair: the
// pair of the thread's next item (its weights are fetched into L2 meanwhile), or -1.
RSVLM_QLAMX void amx_item(const QAmxCall& q, int pair, int64_t span_index, int next_pair, int worker) {
  cpu::amx_configure_16x64();
  const int n0 = pair * kAmxStepRows;
  const int64_t row_bytes = q.w4 ? q.k / 2 : q.k;
  const char* next = nullptr;
  int64_t next_bytes = 0;
  if (next_pair >= 0 && next_pair != pair) {
    const int next_n0 = next_pair * kAmxStepRows;
    next = reinterpret_cast<const char*>(q.w4 ? static_cast<const void*>(q.w4) : static_cast<const void*>(q.w)) +
           int64_t(next_n0) * row_bytes;
    next_bytes = int64_t(std::min(kAmxStepRows, q.n - next_n0)) * row_bytes;
  }
  const int kpad = q.blocks * kQActBlock;
  const int64_t rb_begin = span_index * q.grid.span, rb_end = std::min(q.grid.row_blocks, rb_begin + q.grid.span);
  // The weights: straight from w (i8, K % 128 == 0, a full pair); else staged, just in time per block when
  // the item has one step of row blocks (decode), else the whole pair once (its steps reuse it)
  const int8_t* a = nullptr;
  int64_t lda = 0;
  int8_t* jit = q.stage + int64_t(worker) * q.stage_per_thread;
  if (q.direct && n0 + kAmxStepRows <= q.n) {
    a = q.w + int64_t(n0) * q.k;
    lda = q.k;
  } else if (rb_end - rb_begin > kAmxRowBlocks) {
    for (int b = 0; b < q.blocks; ++b) stage_block(q, n0, b, jit + int64_t(b) * kQActBlock, kpad);
    a = jit;
    lda = kpad;
  }
  alignas(64) float f[kAmxStepRows * kAmxStepCols];
  for (int64_t rb = rb_begin; rb < rb_end; rb += kAmxRowBlocks) {
    const bool two = rb + 1 < rb_end;
    const char* fetch = rb == rb_begin ? next : nullptr;
    if (two)
      amx_pair<2>(q, a, lda, jit, n0, rb, f, fetch, next_bytes);
    else
      amx_pair<1>(q, a, lda, jit, n0, rb, f, fetch, next_bytes);
    const int64_t m0 = rb * kAmxTileRows;
    const int cols = int(std::min<int64_t>(two ? kAmxStepCols : kAmxTileRows, q.m - m0));
    const int rows = std::min(kAmxStepRows, q.n - n0);
    for (int r = 0; r < rows; ++r) {
      const float bias = q.bias ? q.bias[n0 + r] : 0.f;
      for (int col = 0; col < cols; ++col) q.out[(m0 + col) * q.n + n0 + r] = f[r * kAmxStepCols + col] + bias;
    }
  }
  _tile_release();
}

// qlinear_cpu's GEMM loop nest on the amx kernel set (p validated, M >= kGemmMinRows). xq: (M, K) rows
// quantised in the kernel layout (i4: permuted chunks), sx (M, blocks).
Status qlinear_amx(const QLinearParams& p, const int8_t* xq, const float* sx, int threads) {
  QAmxCall q;
  q.m = p.m;
  q.n = p.n;
  q.k = p.k;
  q.blocks = qact_blocks(p.k);
  q.groups = p.groups;
  q.group = p.k / p.groups;
  const bool i8 = p.format == QWeight::i8;
  q.w = i8 ? static_cast<const int8_t*>(p.w) : nullptr;
  q.w4 = i8 ? nullptr : static_cast<const uint8_t*>(p.w);
  q.direct = i8 && p.k % kQActBlock == 0;
  q.w_scale = p.w_scale;
  q.bias = static_cast<const float*>(p.bias);
  q.out = static_cast<float*>(p.out);
  const int kpad = q.blocks * kQActBlock;
  const int64_t block_bytes = int64_t(q.blocks) * kAmxBBlockBytes;  // one row block's B tiles
  q.grid = cpu::amx_grid(q.m, q.n, block_bytes, kAmxSpanBBytes);

  std::vector<int8_t> xb, stage;
  std::vector<float> sxt;
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(xb, block_bytes, q.grid.row_blocks, "qlinear"));  // zero: the padding
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(sxt, int64_t(q.blocks) * kAmxTileRows, q.grid.row_blocks, "qlinear"));
  // per thread: a whole staged pair (32 x kpad) or, for one step of row blocks, two staged blocks
  const bool need_stage = !q.direct || q.n % kAmxStepRows != 0;
  const bool whole_pairs = cpu::amx_items_have_steps(q.grid);
  q.stage_per_thread =
      need_stage ? int64_t(kAmxStepRows) * std::max(whole_pairs ? kpad : 0, 2 * kQActBlock) : 0;
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(stage, q.stage_per_thread, threads, "qlinear"));
  // B layout: input s of row m -> block s / 128, half (s % 128) / 64, quad (s % 64) / 4, row m % 16, byte s % 4:
  // within a row block, quad j = s / 4 of row m lies at byte j * 64 + (m % 16) * 4.
  const int k = p.k;
  host::parallel_for(q.m, kAmxTileRows, threads, [&](int64_t m, int) {
    const int8_t* row = xq + m * k;
    int8_t* base = xb.data() + (m / kAmxTileRows) * block_bytes + (m % kAmxTileRows) * 4;
    const int quads = k / 4;
    for (int j = 0; j < quads; ++j) {
      int32_t quad;
      std::memcpy(&quad, row + 4 * j, 4);
      std::memcpy(base + int64_t(j) * kAmxTileBytes, &quad, 4);
    }
    for (int s = 4 * quads; s < k; ++s) base[int64_t(quads) * kAmxTileBytes + s % 4] = row[s];  // the rest: zero
    for (int b = 0; b < q.blocks; ++b)
      sxt[((m / kAmxTileRows) * q.blocks + b) * kAmxTileRows + m % kAmxTileRows] = sx[m * q.blocks + b];
  });
  q.xb = xb.data();
  q.sxt = sxt.data();
  q.stage = need_stage ? stage.data() : nullptr;
  // span-major: the threads work on one span's B tiles (in their L2) while they walk the weight panels
  cpu::amx_for_items(q.grid, threads, [&](int pair, int64_t span_index, int next_pair, int worker) {
    amx_item(q, pair, span_index, next_pair, worker);
  });
  return Status::Ok();
}
#endif

}  // namespace

Status qlinear_cpu(const QLinearParams& p) {
  RSVLM_RETURN_IF_ERROR(qlinear_validate(p, false));
  if (p.m == 0 || p.n == 0) return Status::Ok();
  const QKernelSet& ks = active_qkernels();
  const int64_t m = p.m;
  const int n = p.n, k = p.k, blocks = qact_blocks(k), group = k / p.groups;
  const bool i8 = p.format == QWeight::i8;
  const int fmt = i8 ? 0 : 1;
#if RSVLM_X86
  const bool amx = m >= kGemmMinRows && cpu_kernels() == CpuKernels::amx;
#else
  const bool amx = false;
#endif
  // The amx GEMM reads only xq and sx (signed operands, no per-block sums).
  const bool with_xa = i8 && !amx, with_xsum = !i8 && !amx;

  // Quantised activations, allocated before any parallel loop.
  std::vector<int8_t> xq;
  std::vector<uint8_t> xa;
  std::vector<float> sx;
  std::vector<int32_t> xsum;
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(xq, k, m, "qlinear"));
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(xa, with_xa ? k : 0, m, "qlinear"));
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(sx, blocks, m, "qlinear"));
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(xsum, with_xsum ? blocks : 0, m, "qlinear"));
  const float* x = static_cast<const float*>(p.x);  // (M, K)
  host::parallel_for(m, 4, m >= 8 ? host::max_threads() : 1, [&](int64_t r, int) {
    quantize_row(ks, x + r * k, k, p.format, xq.data() + r * k, with_xa ? xa.data() + r * k : nullptr,
                 sx.data() + r * blocks, with_xsum ? xsum.data() + r * blocks : nullptr);
  });
#if RSVLM_X86
  if (amx) return qlinear_amx(p, xq.data(), sx.data(), host::max_threads());
#endif

  const float* bias = static_cast<const float*>(p.bias);  // (N) or nullptr
  float* out = static_cast<float*>(p.out);                // (M, N)
  const int64_t w_row_bytes = i8 ? k : k / 2;
  auto rows_at = [&](int64_t m0, int rows) {
    QRows xr{};
    for (int r = 0; r < rows; ++r) {
      xr.q[r] = xq.data() + (m0 + r) * k;
      xr.a[r] = i8 ? xa.data() + (m0 + r) * k : nullptr;
      xr.s[r] = sx.data() + (m0 + r) * blocks;
      xr.sum[r] = i8 ? nullptr : xsum.data() + (m0 + r) * blocks;
    }
    return xr;
  };
  // Tile of weight rows n0 .. n0 + nt - 1 (nt <= 4; missing rows repeat the last, their sums dropped)
  // against rows m0 .. m0 + rows - 1 of x, written to out.
  auto run_tile = [&](const QRows& xr, int64_t m0, int rows, int n0) {
    const int nt = std::min(kQC, n - n0);
    QCols wc{};
    for (int c = 0; c < kQC; ++c) {
      const int row = n0 + std::min(c, nt - 1);
      wc.w[c] = static_cast<const uint8_t*>(p.w) + int64_t(row) * w_row_bytes;
      wc.sw[c] = p.w_scale + int64_t(row) * p.groups;
    }
    float acc[kQR * kQC];
    ks.tile[fmt][rows](xr, wc, k, group, acc);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < nt; ++c)
        out[(m0 + r) * int64_t(n) + n0 + c] = acc[r * kQC + c] + (bias ? bias[n0 + c] : 0.f);
  };

  if (m < kGemmMinRows) {  // each thread streams a contiguous range of weight rows, one row at a time
    const int rows = static_cast<int>(m);
    const QRows xr = rows_at(0, rows);
    const QRowFn row_fn = ks.row[fmt][rows];
    // Chunks of ~64 KiB of weight rows handed out dynamically: a thread that the OS deschedules on a busy
    // machine delays one chunk, not a static half of the matrix; each chunk is one sequential stream.
    const int64_t chunk_rows = host::gemv_chunk_rows(w_row_bytes);
    // i4 rows prefetch the row about 8 KiB ahead into L2 (the hardware prefetchers alone fall behind while
    // the core unpacks nibbles). Measured on the TinyLlama-shape w4 step at batch 1, 2 Zen 4 cores,
    // alternated in one process: 23.8-25.3 -> 20.9-21.4 ms; 4 or 16 KiB ahead a little less; for i8 rows
    // it was slower (32 -> 35 ms): they prefetch line by line inside the row kernel (kI8RowPrefetchAhead).
    const int64_t pfd = i8 ? 0 : std::max<int64_t>(1, kPrefetchAheadBytes / w_row_bytes);  // rows ahead
    host::parallel_chunks(n, chunk_rows, host::threads_for(int64_t(n) * k), [&](int64_t j0, int64_t j1, int) {
      for (int64_t j = j0; j < j1; ++j) {  // a chunk: one sequential stream of weight rows
        if (pfd > 0 && j + pfd < n) prefetch_l2(static_cast<const char*>(p.w) + (j + pfd) * w_row_bytes, w_row_bytes);
        float acc[kQR];
        row_fn(xr, static_cast<const uint8_t*>(p.w) + j * w_row_bytes, p.w_scale + j * p.groups, k, group, acc);
        for (int r = 0; r < rows; ++r) out[r * int64_t(n) + j] = acc[r] + (bias ? bias[j] : 0.f);
      }
    });
    return Status::Ok();
  }
  const int panels = (n + kPanel - 1) / kPanel;
  // Chunks of consecutive panels (about 4 per thread): while a thread's first pass over rows of x reads a panel
  // (the tiles walk 4 weight rows at once, which the hardware prefetchers follow poorly), it fetches its next
  // panel into L2 in address order, a tile's share at a time.
  const int threads = host::max_threads();
  const int64_t chunk = std::max<int64_t>(1, panels / (int64_t(threads) * 4));
  host::parallel_chunks(panels, chunk, threads, [&](int64_t p0, int64_t p1, int) {
    for (int64_t pi = p0; pi < p1; ++pi) {
      const int n_begin = int(pi) * kPanel, n_end = std::min(n, n_begin + kPanel);
      const int next_rows = pi + 1 < p1 ? std::min(kPanel, n - n_end) : 0;
      const char* next = static_cast<const char*>(p.w) + int64_t(n_end) * w_row_bytes;
      for (int64_t m0 = 0; m0 < m; m0 += kQR) {
        const int rows = static_cast<int>(std::min<int64_t>(kQR, m - m0));
        const QRows xr = rows_at(m0, rows);
        for (int n0 = n_begin; n0 < n_end; n0 += kQC) {
          if (m0 == 0 && n0 - n_begin < next_rows)
            prefetch_l2(next + int64_t(n0 - n_begin) * w_row_bytes, int64_t(std::min(kQC, next_rows - (n0 - n_begin))) * w_row_bytes);
          run_tile(xr, m0, rows, n0);
        }
      }
    }
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
