// AMX tile configuration shared by the AMX bodies (kernels/qgemm/qgemm_cpu.cpp: AMX-INT8;
// kernels/kv_attention/kv_attention_cpu.cpp: AMX-BF16). x86-64 only; the kernel set `amx`
// (rsvlm_edge/linear.h) guarantees the CPU has the tiles and Linux granted this process tile data.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>

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

}  // namespace cpu
}  // namespace rsvlm_edge
#endif
