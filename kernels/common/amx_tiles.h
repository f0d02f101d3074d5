// AMX tile configuration and work grid shared by the AMX bodies (kernels/qgemm/qgemm_cpu.cpp and
// kernels/qlinear/qlinear_cpu.cpp: AMX-INT8; kernels/kv_attention/kv_attention_cpu.cpp and
// kernels/linear/linear_cpu.cpp: AMX-BF16). x86-64 only; the kernel set `amx`
// (rsvlm_edge/linear.h) guarantees the CPU has the tiles and Linux granted this process tile data.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "common/thread_pool.h"

namespace rsvlm_edge {
namespace cpu {

constexpr int kAmxTileRows = 16;   // rows of every tile the bodies use
constexpr int kAmxTileBytes = 64;  // bytes per tile row: 64 int8, 32 bf16 or 16 int32 / fp32

// The 64-byte tile configuration of palette 1.
struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(AmxTileConfig) == 64, "the tile configuration is 64 bytes");

// Configures tiles 0-7 as 16 rows x 64 bytes for the calling thread (ldtilecfg zeroes every tile); pair
// with _tile_release() when the thread's AMX work ends.
__attribute__((target("amx-tile"))) inline void amx_configure_16x64() {
  AmxTileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = kAmxTileBytes;
    cfg.rows[t] = kAmxTileRows;
  }
  _tile_loadconfig(&cfg);
}

// Store the C tiles of a weight-stationary step (see below): tiles t = panel * RB + row block into
// c[panel][row block] (16 x 16 int32 or fp32 each, rows = weight rows). RB = 1: tiles 0, 1; RB = 2: tiles 0-3.
template <int RB, typename T>
__attribute__((target("amx-tile"))) inline void amx_store_c(T (*c)[RB][kAmxTileRows][kAmxTileRows]) {
  static_assert(sizeof(T) == 4, "C tiles hold 32-bit elements");
  constexpr int ldc = kAmxTileRows * int(sizeof(T));  // 64 bytes
  if constexpr (RB > 1) {
    _tile_stored(0, c[0][0], ldc);
    _tile_stored(1, c[0][1], ldc);
    _tile_stored(2, c[1][0], ldc);
    _tile_stored(3, c[1][1], ldc);
  } else {
    _tile_stored(0, c[0][0], ldc);
    _tile_stored(1, c[1][0], ldc);
  }
}

// Work items of the weight-stationary AMX GEMMs (kernels/qlinear: qlinear_amx; kernels/linear: the fp16 bf16x3
// GEMM): y (M, N) = x (M, K) . W (N, K)^T with weight rows as the A operand, in pairs of two 16-row panels
// (32 weight rows), and rows of x as the B operand, in blocks of 16. An item is one pair against one span of
// row blocks: the span's B tiles (b_bytes_per_row_block each) fit span_budget bytes, so they stay in L2 while
// the threads walk the pairs (span-major).
constexpr int kAmxPairRows = 2 * kAmxTileRows;  // weight rows per pair
constexpr int kAmxStepBlocks = 2;               // row blocks of x per step (C tiles: 2 panels x 2 row blocks)

struct AmxGrid {
  int64_t row_blocks = 0;  // ceil(M / 16)
  int64_t span = 0;        // row blocks per item: a multiple of kAmxStepBlocks
  int64_t spans = 0;
  int pairs = 0;           // ceil(N / 32)
};

inline AmxGrid amx_grid(int64_t m, int n, int64_t b_bytes_per_row_block, int64_t span_budget) {
  AmxGrid g;
  g.row_blocks = (m + kAmxTileRows - 1) / kAmxTileRows;
  const int64_t fit = b_bytes_per_row_block > 0 ? span_budget / b_bytes_per_row_block : 0;
  g.span = std::max<int64_t>(kAmxStepBlocks, fit / kAmxStepBlocks * kAmxStepBlocks);
  g.spans = (g.row_blocks + g.span - 1) / g.span;
  g.pairs = (n + kAmxPairRows - 1) / kAmxPairRows;
  return g;
}

// Whether some item covers more than one step of row blocks (its pair's staged weights are then reused).
inline bool amx_items_have_steps(const AmxGrid& g) {
  return g.span > kAmxStepBlocks && g.row_blocks > kAmxStepBlocks;
}

// body(pair, span_index, next_pair, worker) for every item, span-major, in chunks of consecutive items (about
// 4 per thread): next_pair is the pair of the thread's next item (-1 at the end of its chunk), whose weights
// the body can fetch into L2 while it computes.
template <typename Body>
void amx_for_items(const AmxGrid& g, int threads, Body&& body) noexcept {
  const int64_t items = g.spans * g.pairs;
  const int64_t chunk = std::max<int64_t>(1, items / (int64_t(std::max(threads, 1)) * 4));
  host::parallel_chunks(items, chunk, threads, [&](int64_t i0, int64_t i1, int worker) {
    for (int64_t item = i0; item < i1; ++item)
      body(int(item % g.pairs), item / g.pairs, item + 1 < i1 ? int((item + 1) % g.pairs) : -1, worker);
  });
}

}  // namespace cpu
}  // namespace rsvlm_edge
#endif
