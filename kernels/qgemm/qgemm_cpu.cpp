// qgemm fast CPU path: fp32 activations quantised per row to int8, packed int8 weights, exact int32
// dots over the whole K, fp32 outer product (see rsvlm_edge/qgemm.h). Tested against qgemm_reference
// (qgemm_ref.cpp).
//
// 1. Quantise every row of x once (qgemm_quantize_row, or its vectorised twin), into scratch allocated
//    before any parallel loop, in the micro-kernel's layout: blocks of kMR rows; per block K4 / 4 k-steps
//    of kMR x 4 bytes (row r's inputs 4s .. 4s + 3 at bytes 4r .. 4r + 3 of k-step s), each the unsigned
//    u = xq + 128 that vpdpbusd takes (padding inputs 128, i.e. 0); sx (M) beside it.
// 2. The thread pool over work items = (group of weight panels, range of row blocks). A group is as many
//    panels of 16 output channels as fit kL2Budget bytes of packed weights (it stays in the core's L2
//    while the item walks its row blocks); groups and row ranges are cut finer until there are about
//    kItemsPerThread items per thread, so both cores work from M = 50 rows and N = 768 on.
//    Inside an item: for each block of kMR rows (its quantised rows stay in L1), for each tile of kNR
//    panels of the group: one micro-kernel call over the whole K.
// Micro-kernels (the active set follows cpu_kernels(), see rsvlm_edge/linear.h):
//    avx512vnni  kMR x kNR zmm int32 accumulators (8 x 3 = 24); per k-step one 64-byte load per panel
//                (4 inputs of its 16 channels) and one 4-byte broadcast per row, kMR * kNR vpdpbusd; the
//                whole K stays in the accumulators (no block reductions, no horizontal sums). Epilogue:
//                dot = acc - 128 * colsum[n] (exact int32: the wrapping sums of vpdpbusd are exact mod
//                2^32 and the dot fits int32), y = float(dot) * (sx[m] * sw[n]) + bias[n], masked
//                stores for the last partial panel
//    portable    plain C++ integer loops over the same packed buffer (aarch64, CPUs without AVX512-VNNI;
//                avx2 runs these too)
//    amx         (qgemm_amx below) the AMX-INT8 tile unit: signed rows (no +128 offset), row-major with
//                K padded to 64; blocks of 32 rows x 2 panels as 2 x 2 int32 tiles of 16 x 16, per 64
//                inputs two A tiles (16 rows x 64 bytes) and two B tiles read straight from the packed
//                panels (16 k-steps x 64 bytes: the panel layout is AMX's B layout), four tdpbssd
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define RSVLM_X86 1
#include <immintrin.h>
#endif

#include "common/amx_tiles.h"
#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/linear.h"
#include "rsvlm_edge/qgemm.h"

namespace rsvlm_edge {
namespace {

constexpr int kMR = 8;                                 // rows of x per micro-tile (and per quantised block)
constexpr int kNR = 3;                                 // panels of 16 output channels per micro-tile
constexpr int64_t kL2Budget = int64_t(512) << 10;      // packed weight bytes of one group (half the 1 MB L2)
constexpr int kItemsPerThread = 8;                     // work items per thread (load balance on a busy machine)
constexpr int kStepBytes = kQGemmPanel * kQGemmKStep;  // 64: one k-step of one panel
constexpr int kABytes = kMR * kQGemmKStep;             // 32: one k-step of one row block

// One micro-tile: R rows of a row block against NP consecutive panels, the whole K.
struct Tile {
  const uint8_t* a = nullptr;       // (K4 / 4, kMR, 4) the row block's quantised rows, k-step 0
  const int8_t* b = nullptr;        // (NP, K4 / 4, 16, 4) the first panel's k-step 0; panels panel_stride apart
  int64_t panel_stride = 0;         // bytes from one panel to the next: K4 * 16
  int ksteps = 0;                   // K4 / 4
  const int32_t* colsum = nullptr;  // (NP * 16) per-channel weight sums of the tile's panels
  const float* scale = nullptr;     // (NP * 16) sw of the tile's panels
  const float* sx = nullptr;        // (R) row scales
  const float* bias = nullptr;      // (n_valid) bias of the tile's first channel on, or nullptr
  float* out = nullptr;             // (R, ldo) output of the tile's first row and channel
  int64_t ldo = 0;                  // N
  int n_valid = 0;                  // channels of the tile inside N (<= NP * 16)
};

// tile(t, R, NP) with 1 <= R <= kMR, 1 <= NP <= kNR.
using TileFn = void (*)(const Tile& t, int rows, int np);
// One row x (K) into its place in a row block (dst = the block's k-step 0 + 4 r): u = xq + 128 for
// K4 / 4 k-steps kABytes apart; returns sx. tmp: (K4) int8 scratch of the calling worker.
using QuantizeFn = float (*)(const float* x, int k, int k4, uint8_t* dst, int8_t* tmp);

struct QGemmKernels {
  TileFn tile;
  QuantizeFn quantize;
};

// ---- portable ----

// The definition (qgemm_quantize_row), scattered into the block layout.
float quantize_portable(const float* x, int k, int k4, uint8_t* dst, int8_t* tmp) {
  const float sx = qgemm_quantize_row(x, k, tmp);
  for (int i = 0; i < k4; ++i)
    dst[(i / kQGemmKStep) * kABytes + i % kQGemmKStep] = static_cast<uint8_t>(i < k ? tmp[i] + 128 : 128);
  return sx;
}

void tile_portable(const Tile& t, int rows, int np) {
  int32_t acc[kMR][kNR * kQGemmPanel] = {};
  for (int s = 0; s < t.ksteps; ++s) {
    const uint8_t* a = t.a + int64_t(s) * kABytes;
    for (int j = 0; j < np; ++j) {
      const int8_t* b = t.b + j * t.panel_stride + int64_t(s) * kStepBytes;
      for (int r = 0; r < rows; ++r) {
        const int a0 = a[4 * r] - 128, a1 = a[4 * r + 1] - 128, a2 = a[4 * r + 2] - 128, a3 = a[4 * r + 3] - 128;
        int32_t* row = acc[r] + j * kQGemmPanel;
        for (int c = 0; c < kQGemmPanel; ++c)
          row[c] += a0 * b[4 * c] + a1 * b[4 * c + 1] + a2 * b[4 * c + 2] + a3 * b[4 * c + 3];
      }
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < t.n_valid; ++c) {
      const float y = float(acc[r][c]) * (t.sx[r] * t.scale[c]);
      t.out[r * t.ldo + c] = t.bias ? y + t.bias[c] : y;
    }
}

const QGemmKernels kQGemmPortable = {tile_portable, quantize_portable};

// ---- x86-64: avx512vnni ----

#if RSVLM_X86
// Complete unrolling of the register-tile loops before scalar replacement (GCC otherwise keeps the
// accumulator array in memory).
#define RSVLM_UNROLL _Pragma("GCC unroll 16")
#define RSVLM_QGVNNI __attribute__((target("avx2,fma,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")))

// qgemm_quantize_row vectorised: the same float operations (|x| max, x * (127 / amax), round half to even,
// clamp with the definition's NaN behaviour: max(-127, NaN) = -127) on 16 lanes, so xq is identical bit
// for bit. xq (kpad >= K) gets zeros past K. A row with a non-finite value goes through the definition.
RSVLM_QGVNNI float quantize_row_avx512(const float* x, int k, int kpad, int8_t* xq) {
  const __m512 inf = _mm512_set1_ps(INFINITY);
  __m512 amax = _mm512_setzero_ps();
  __mmask16 finite = 0xFFFF;
  int i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + i));
    finite &= _mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ);  // false for NaN and inf
    amax = _mm512_max_ps(amax, a);
  }
  if (i < k) {
    const __mmask16 tail = __mmask16((1u << (k - i)) - 1);
    const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(tail, x + i));  // 0 in the other lanes
    finite &= _mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ);
    amax = _mm512_max_ps(amax, a);
  }
  if (finite != 0xFFFF) {
    std::memset(xq + k, 0, size_t(kpad - k));
    return qgemm_quantize_row(x, k, xq);
  }
  const float am = _mm512_reduce_max_ps(amax);
  const __m512 inv = _mm512_set1_ps(am > 0.f ? 127.f / am : 0.f);
  const __m512 hi = _mm512_set1_ps(127.f), lo = _mm512_set1_ps(-127.f);
  for (int i0 = 0; i0 < kpad; i0 += 16) {
    const int left = kpad - i0;
    const __mmask16 store = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    const __mmask16 valid = k - i0 >= 16 ? __mmask16(0xFFFF) : k > i0 ? __mmask16((1u << (k - i0)) - 1) : 0;
    const __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(valid, x + i0), inv),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // max(v, lo) returns lo when v is NaN (0 * inf for a subnormal amax), as std::max(-127.f, NaN) does;
    // padding inputs (past K) are 0 whatever the definition would make of a 0
    const __m512i q = _mm512_maskz_cvtps_epi32(valid, _mm512_min_ps(_mm512_max_ps(v, lo), hi));
    _mm_mask_storeu_epi8(xq + i0, store, _mm512_cvtepi32_epi8(q));
  }
  return am / 127.f;
}

// The micro-kernel's block layout from the vectorised row (u = xq + 128, padding inputs 128).
RSVLM_QGVNNI float quantize_vnni(const float* x, int k, int k4, uint8_t* dst, int8_t* tmp) {
  const float sx = quantize_row_avx512(x, k, k4, tmp);
  for (int s = 0; s < k4 / kQGemmKStep; ++s) {
    uint32_t u4;
    std::memcpy(&u4, tmp + int64_t(s) * kQGemmKStep, 4);
    u4 ^= 0x80808080u;  // + 128 per byte: int8 -> uint8 (padding: 0 -> 128)
    std::memcpy(dst + int64_t(s) * kABytes, &u4, 4);
  }
  return sx;
}

// acc += vpdpbusd(u, w): as inline asm, because GCC 12 keeps a copy of every _mm512_dpbusd_epi32
// accumulator in memory inside the k loop (24 stores per k-step, a third of the speed).
RSVLM_QGVNNI inline void dpbusd(__m512i& acc, __m512i u, __m512i w) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(w));
}

template <int R, int NP>
RSVLM_QGVNNI void tile_vnni(const Tile& t) {
  __m512i acc[R][NP];
  RSVLM_UNROLL for (int r = 0; r < R; ++r) {
    RSVLM_UNROLL for (int j = 0; j < NP; ++j) acc[r][j] = _mm512_setzero_si512();
  }
  const uint8_t* a = t.a;
  const int8_t* b = t.b;
  const int64_t ps = t.panel_stride;
  for (int s = 0; s < t.ksteps; ++s, a += kABytes, b += kStepBytes) {
    __m512i bv[NP];
    RSVLM_UNROLL for (int j = 0; j < NP; ++j) bv[j] = _mm512_loadu_si512(b + j * ps);
    RSVLM_UNROLL for (int r = 0; r < R; ++r) {
      int32_t a4;
      std::memcpy(&a4, a + 4 * r, 4);
      const __m512i av = _mm512_set1_epi32(a4);
      RSVLM_UNROLL for (int j = 0; j < NP; ++j) dpbusd(acc[r][j], av, bv[j]);
    }
  }
  __m512i cs[NP];
  __m512 sw[NP], bb[NP];
  __mmask16 mask[NP];
  RSVLM_UNROLL for (int j = 0; j < NP; ++j) {
    const int valid = t.n_valid - j * kQGemmPanel;
    mask[j] = valid >= kQGemmPanel ? __mmask16(0xFFFF) : valid > 0 ? __mmask16((1u << valid) - 1) : __mmask16(0);
    cs[j] = _mm512_slli_epi32(_mm512_loadu_si512(t.colsum + j * kQGemmPanel), 7);
    sw[j] = _mm512_loadu_ps(t.scale + j * kQGemmPanel);
    bb[j] = t.bias ? _mm512_maskz_loadu_ps(mask[j], t.bias + j * kQGemmPanel) : _mm512_setzero_ps();
  }
  RSVLM_UNROLL for (int r = 0; r < R; ++r) {
    const __m512 s = _mm512_set1_ps(t.sx[r]);
    RSVLM_UNROLL for (int j = 0; j < NP; ++j) {
      const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][j], cs[j]));
      _mm512_mask_storeu_ps(t.out + r * t.ldo + j * kQGemmPanel, mask[j],
                            _mm512_fmadd_ps(dot, _mm512_mul_ps(sw[j], s), bb[j]));
    }
  }
}

// The R x NP tiles, [R - 1][NP - 1].
#define RSVLM_QG_TILES(R) {tile_vnni<R, 1>, tile_vnni<R, 2>, tile_vnni<R, 3>}
static_assert(kMR == 8 && kNR == 3, "kTileVnni lists 8 x 3 tiles");
void (*const kTileVnni[kMR][kNR])(const Tile&) = {RSVLM_QG_TILES(1), RSVLM_QG_TILES(2), RSVLM_QG_TILES(3),
                                                  RSVLM_QG_TILES(4), RSVLM_QG_TILES(5), RSVLM_QG_TILES(6),
                                                  RSVLM_QG_TILES(7), RSVLM_QG_TILES(8)};

void tile_vnni_any(const Tile& t, int rows, int np) { kTileVnni[rows - 1][np - 1](t); }

const QGemmKernels kQGemmVnni = {tile_vnni_any, quantize_vnni};
#endif

const QGemmKernels& active_kernels() {
#if RSVLM_X86
  if (cpu_kernels() >= CpuKernels::avx512vnni) return kQGemmVnni;  // amx: qgemm_amx, not these
#endif
  return kQGemmPortable;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The quantised activations' buffer of the calling thread's last call, kept for its next one: a fresh
// multi-MB buffer per call costs its page faults (zeroed by the kernel), 4-5% of a 4616 x 1024 x 4096
// GEMM. At most kKeepScratchBytes are kept per thread; larger calls use a buffer of their own.
constexpr int64_t kKeepScratchBytes = int64_t(64) << 20;
thread_local std::vector<uint8_t> t_activations;

// *a = `bytes` bytes (64-byte aligned) of t_activations or, above kKeepScratchBytes, of `local`. Never throws.
Status activation_scratch(int64_t bytes, std::vector<uint8_t>& local, uint8_t** a) {
  if (bytes < 0) return Status::OutOfMemory("qgemm: the quantised activations' size overflows");
  std::vector<uint8_t>* buf = &t_activations;
  if (bytes + 64 > kKeepScratchBytes) {
    buf = &local;
  } else if (int64_t(t_activations.size()) < bytes + 64) {
    std::vector<uint8_t>().swap(t_activations);  // release the smaller one before growing
  }
  if (int64_t(buf->size()) < bytes + 64) RSVLM_RETURN_IF_ERROR(host::alloc_scratch(*buf, bytes + 64, 1, "qgemm"));
  *a = buf->data() + (64 - reinterpret_cast<uintptr_t>(buf->data()) % 64) % 64;
  return Status::Ok();
}


// Work items (group of `group` panels, range of `span` row blocks), group-major, so that a thread's own
// lane of items (thread_pool.h) keeps one group in its L2 while it walks the row blocks. Groups hold
// at most kL2Budget bytes of weights and are cut finer, as evenly as the tile width allows, until there
// are about kItemsPerThread items per thread (a thread that the OS deschedules then holds back a small
// piece: the micro-kernels need few bytes of weights per cycle, which L3 also delivers).
struct Schedule {
  int group = 0;      // panels per group (a multiple of the tile's panels)
  int64_t groups = 0;
  int64_t span = 0;   // row blocks per item
  int64_t spans = 0;
};

Schedule schedule(int panels, int64_t blocks, int64_t panel_bytes, int tile_panels, int threads) {
  const int64_t tiles = ceil_div(panels, tile_panels);
  const int64_t target = threads > 1 ? int64_t(kItemsPerThread) * threads : 1;
  int64_t groups = ceil_div(tiles, std::max<int64_t>(1, kL2Budget / (panel_bytes * tile_panels)));
  const int64_t spans_wanted = std::min(blocks, std::max<int64_t>(1, ceil_div(target, groups)));
  if (groups * spans_wanted < target) groups = std::min(tiles, ceil_div(target, spans_wanted));
  Schedule sc;
  sc.group = int(ceil_div(tiles, groups) * tile_panels);
  sc.groups = ceil_div(panels, sc.group);
  sc.span = ceil_div(blocks, spans_wanted);
  sc.spans = ceil_div(blocks, sc.span);
  return sc;
}


#if RSVLM_X86
// ---- x86-64: amx (AMX-TILE + AMX-INT8, on top of avx512vnni) ----

#define RSVLM_QGAMX \
  __attribute__((target("avx2,fma,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,amx-tile,amx-int8")))

using cpu::kAmxTileBytes;                                           // bytes per tile row
using cpu::kAmxTileRows;                                            // rows of an A or C tile
constexpr int kAmxMR = 2 * kAmxTileRows;                            // rows per block: two A tiles
constexpr int kAmxNP = 2;                                           // panels per block: two B tiles
constexpr int kAmxChunkSteps = kAmxTileBytes / kQGemmKStep;         // 16 k-steps (64 inputs) per B tile
constexpr int kAmxBTileBytes = kAmxChunkSteps * kStepBytes;         // 1 KiB
constexpr int kAmxC = kAmxNP * kQGemmPanel;                         // 32 int32 per row of the C block

// Tiles (cpu::amx_configure_16x64, per work item, released after it): 0-3 the C block (16 rows x 16
// int32), 4-5 A (16 rows x 64 int8), 6-7 B (16 k-steps x 64 bytes).

// c (32, 32) int32 = a (32 rows, stride lda) . [panel b0 | panel b1] over `ksteps` k-steps (exact int32).
// a holds zeros from K to the next multiple of 64 inputs; a last partial chunk of B is copied into
// zero-padded 1 KiB tiles, so nothing is read past a panel.
RSVLM_QGAMX void amx_block(const int8_t* a, int64_t lda, const int8_t* b0, const int8_t* b1, int ksteps,
                           int32_t* c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int full = ksteps / kAmxChunkSteps, tail = ksteps % kAmxChunkSteps;
  for (int ch = 0; ch < full; ++ch) {
    // each load just before its first use: tiles are not renamed, so a load waits for the last reader
    // of its tile, and this order lets the next loads start while the last products run (+15 %
    // against four loads then four products, measured)
    const int8_t* ac = a + int64_t(ch) * kAmxTileBytes;
    _tile_loadd(4, ac, lda);
    _tile_loadd(6, b0 + int64_t(ch) * kAmxBTileBytes, kAmxTileBytes);
    _tile_dpbssd(0, 4, 6);
    _tile_loadd(7, b1 + int64_t(ch) * kAmxBTileBytes, kAmxTileBytes);
    _tile_dpbssd(1, 4, 7);
    _tile_loadd(5, ac + kAmxTileRows * lda, lda);
    _tile_dpbssd(2, 5, 6);
    _tile_dpbssd(3, 5, 7);
  }
  if (tail > 0) {
    alignas(64) int8_t t0[kAmxBTileBytes] = {}, t1[kAmxBTileBytes] = {};
    std::memcpy(t0, b0 + int64_t(full) * kAmxBTileBytes, size_t(tail) * kStepBytes);
    std::memcpy(t1, b1 + int64_t(full) * kAmxBTileBytes, size_t(tail) * kStepBytes);
    const int8_t* ac = a + int64_t(full) * kAmxTileBytes;
    _tile_loadd(4, ac, lda);
    _tile_loadd(5, ac + kAmxTileRows * lda, lda);
    _tile_loadd(6, t0, kAmxTileBytes);
    _tile_loadd(7, t1, kAmxTileBytes);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 4, 7);
    _tile_dpbssd(2, 5, 6);
    _tile_dpbssd(3, 5, 7);
  }
  constexpr int ldc = kAmxC * int(sizeof(int32_t));  // 128 bytes
  _tile_stored(0, c, ldc);
  _tile_stored(1, c + kQGemmPanel, ldc);
  _tile_stored(2, c + kAmxTileRows * kAmxC, ldc);
  _tile_stored(3, c + kAmxTileRows * kAmxC + kQGemmPanel, ldc);
}

// What the work items of one qgemm_amx call share.
struct AmxCall {
  const int8_t* a = nullptr;        // (blocks * 32, lda) signed quantised rows, zero rows past M
  int64_t lda = 0;                  // K rounded up to 64
  const float* sx = nullptr;        // (M)
  const int8_t* w = nullptr;        // the packed panels (panels, K4 / 4, 16, 4)
  int64_t panel_bytes = 0;          // K4 * 16
  const float* scale = nullptr;     // (panels * 16)
  const float* bias = nullptr;      // (N) or nullptr
  float* out = nullptr;             // (M, N)
  int64_t m = 0, n = 0;
  int ksteps = 0, panels = 0;
  Schedule sc;
};

// One work item: its row blocks against its group of panels, with the tiles configured for it.
// y = float(dot) * (sw * sx) + bias, the same float operations as the avx512vnni epilogue.
RSVLM_QGAMX void amx_item(const AmxCall& q, int64_t item) {
  cpu::amx_configure_16x64();
  alignas(64) int32_t c[kAmxMR * kAmxC];
  const int p0 = int(item / q.sc.spans) * q.sc.group, p1 = std::min(q.panels, p0 + q.sc.group);
  const int64_t b0 = (item % q.sc.spans) * q.sc.span, b1 = std::min(ceil_div(q.m, kAmxMR), b0 + q.sc.span);
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t r0 = blk * kAmxMR;
    const int rows = int(std::min<int64_t>(kAmxMR, q.m - r0));
    for (int pi = p0; pi < p1; pi += kAmxNP) {
      const int np = std::min(kAmxNP, p1 - pi);
      const int8_t* w0 = q.w + pi * q.panel_bytes;
      amx_block(q.a + r0 * q.lda, q.lda, w0, np > 1 ? w0 + q.panel_bytes : w0, q.ksteps, c);
      const int64_t n0 = int64_t(pi) * kQGemmPanel;
      __mmask16 mask[kAmxNP];
      __m512 sw[kAmxNP], bb[kAmxNP];
      for (int j = 0; j < kAmxNP; ++j) {
        const int64_t valid = j < np ? std::min<int64_t>(kQGemmPanel, q.n - n0 - j * kQGemmPanel) : 0;
        mask[j] = valid >= kQGemmPanel ? __mmask16(0xFFFF) : valid > 0 ? __mmask16((1u << valid) - 1) : __mmask16(0);
        sw[j] = _mm512_loadu_ps(q.scale + n0 + (j < np ? j : 0) * kQGemmPanel);
        bb[j] = q.bias ? _mm512_maskz_loadu_ps(mask[j], q.bias + n0 + j * kQGemmPanel) : _mm512_setzero_ps();
      }
      for (int r = 0; r < rows; ++r) {
        const __m512 s = _mm512_set1_ps(q.sx[r0 + r]);
        for (int j = 0; j < kAmxNP; ++j) {
          const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(c + r * kAmxC + j * kQGemmPanel));
          _mm512_mask_storeu_ps(q.out + (r0 + r) * q.n + n0 + j * kQGemmPanel, mask[j],
                                _mm512_fmadd_ps(dot, _mm512_mul_ps(sw[j], s), bb[j]));
        }
      }
    }
  }
  _tile_release();
}

// qgemm_cpu on the amx kernel set (p validated, M >= 1).
Status qgemm_amx(const QGemmParams& p, const QGemmLayout& l, int threads) {
  AmxCall q;
  q.m = p.m;
  q.n = p.n;
  q.ksteps = l.k4 / kQGemmKStep;
  q.panels = l.panels;
  q.lda = ceil_div(q.ksteps, kAmxChunkSteps) * kAmxTileBytes;
  const int64_t blocks = ceil_div(q.m, kAmxMR);
  std::vector<uint8_t> a_local;
  std::vector<float> sx;
  uint8_t* a = nullptr;
  RSVLM_RETURN_IF_ERROR(activation_scratch(host::checked_mul(blocks * kAmxMR, q.lda), a_local, &a));
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(sx, q.m, 1, "qgemm"));
  int8_t* const as = reinterpret_cast<int8_t*>(a);
  std::memset(as + q.m * q.lda, 0, size_t((blocks * kAmxMR - q.m) * q.lda));  // the last block's missing rows
  const int k = p.k, lda = int(q.lda);
  host::parallel_for(q.m, kAmxTileRows, threads, [&](int64_t r, int) {
    sx[r] = quantize_row_avx512(p.x + r * k, k, lda, as + r * q.lda);
  });
  q.a = as;
  q.sx = sx.data();
  q.w = reinterpret_cast<const int8_t*>(p.packed + l.weights);
  q.panel_bytes = int64_t(l.k4) * kQGemmPanel;
  q.scale = reinterpret_cast<const float*>(p.packed + l.scale);
  q.bias = p.bias;
  q.out = p.out;
  q.sc = schedule(q.panels, blocks, q.panel_bytes, kAmxNP, threads);
  host::parallel_for(q.sc.groups * q.sc.spans, 1, threads, [&](int64_t item, int) { amx_item(q, item); });
  return Status::Ok();
}
#endif

}  // namespace

Status qgemm_cpu(const QGemmParams& p) {
  RSVLM_RETURN_IF_ERROR(qgemm_validate(p, /*packed=*/true));
  if (p.m == 0) return Status::Ok();
  const QGemmLayout l = qgemm_layout(p.n, p.k);
  const int64_t macs = host::checked_mul(host::checked_mul(p.m, p.n), p.k);
  const int threads = host::threads_for(macs < 0 ? INT64_MAX : macs / 64);
#if RSVLM_X86
  if (cpu_kernels() == CpuKernels::amx) return qgemm_amx(p, l, threads);
#endif
  const QGemmKernels& ks = active_kernels();
  const int64_t m = p.m, n = p.n;
  const int k = p.k, k4 = l.k4, ksteps = k4 / kQGemmKStep, panels = l.panels;
  const int64_t blocks = ceil_div(m, kMR), block_bytes = int64_t(k4) * kMR;

  // Scratch, allocated before any parallel loop: the quantised row blocks (64-byte aligned), sx, and
  // per worker one row of int8 for the definition.
  std::vector<uint8_t> a_local;
  std::vector<float> sx;
  std::vector<int8_t> tmp;
  uint8_t* a = nullptr;
  RSVLM_RETURN_IF_ERROR(activation_scratch(host::checked_mul(blocks, block_bytes), a_local, &a));
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(sx, m, 1, "qgemm"));
  RSVLM_RETURN_IF_ERROR(host::alloc_scratch(tmp, k4, threads, "qgemm"));
  host::parallel_for(m, kMR, threads, [&](int64_t r, int worker) {
    sx[r] = ks.quantize(p.x + r * k, k, k4, a + (r / kMR) * block_bytes + (r % kMR) * kQGemmKStep,
                        tmp.data() + int64_t(worker) * k4);
  });

  const int64_t panel_bytes = int64_t(k4) * kQGemmPanel;
  const Schedule sc = schedule(panels, blocks, panel_bytes, kNR, threads);
  const int group = sc.group;
  const int64_t groups = sc.groups, span = sc.span, spans = sc.spans;

  const int8_t* const wp = reinterpret_cast<const int8_t*>(p.packed + l.weights);
  const int32_t* const colsum = reinterpret_cast<const int32_t*>(p.packed + l.colsum);
  const float* const scale = reinterpret_cast<const float*>(p.packed + l.scale);
  host::parallel_for(groups * spans, 1, threads, [&](int64_t item, int) {
    const int p0 = int(item / spans) * group, p1 = std::min(panels, p0 + group);
    const int64_t b0 = (item % spans) * span, b1 = std::min(blocks, b0 + span);
    Tile t;
    t.panel_stride = panel_bytes;
    t.ksteps = ksteps;
    t.ldo = n;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int rows = int(std::min<int64_t>(kMR, m - blk * kMR));
      t.a = a + blk * block_bytes;
      t.sx = sx.data() + blk * kMR;
      for (int pi = p0; pi < p1; pi += kNR) {
        const int np = std::min(kNR, p1 - pi);
        const int64_t n0 = int64_t(pi) * kQGemmPanel;
        t.b = wp + pi * panel_bytes;
        t.colsum = colsum + n0;
        t.scale = scale + n0;
        t.bias = p.bias ? p.bias + n0 : nullptr;
        t.out = p.out + blk * kMR * n + n0;
        t.n_valid = int(std::min<int64_t>(int64_t(np) * kQGemmPanel, n - n0));
        ks.tile(t, rows, np);
      }
    }
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
