// Load-time position-embedding interpolation (CPU only; see rsvlm_edge/patch_embed.h):
// bicubic, align_corners=True, exactly torch.nn.functional.interpolate's; the class row passes through.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/patch_embed.h"

namespace rsvlm_edge {

// ---- position-embedding interpolation (bicubic, align_corners=True, as PyTorch) ----

namespace {

constexpr float kCubicA = -0.75f;  // PyTorch's cubic convolution coefficient

// PyTorch's cubic_convolution1 (|x| <= 1) and cubic_convolution2 (1 < |x| < 2).
inline float cubic1(float x) { return ((kCubicA + 2.f) * x - (kCubicA + 3.f)) * x * x + 1.f; }
inline float cubic2(float x) { return ((kCubicA * x - 5.f * kCubicA) * x + 8.f * kCubicA) * x - 4.f * kCubicA; }

struct CubicTaps {
  int64_t idx[4];  // source indices, clamped to [0, in - 1]
  float w[4];      // weights
};

// Taps for output index `o` of a 1-D resize in -> out with align_corners=True.
CubicTaps cubic_taps(int64_t o, int64_t in, int64_t out) {
  const float scale = out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.f;
  const float real = scale * static_cast<float>(o);
  const int64_t i0 = std::min(static_cast<int64_t>(std::floor(real)), in - 1);
  const float t = std::min(std::max(real - static_cast<float>(i0), 0.f), 1.f);
  CubicTaps c;
  c.w[0] = cubic2(t + 1.f);
  c.w[1] = cubic1(t);
  c.w[2] = cubic1(1.f - t);
  c.w[3] = cubic2(2.f - t);
  for (int j = 0; j < 4; ++j) c.idx[j] = std::min(std::max(i0 - 1 + j, int64_t{0}), in - 1);
  return c;
}

}  // namespace

Status interpolate_pos_embed_cpu(const PosEmbedInterpParams& p) {
  const std::string op = "interpolate_pos_embed: ";
  if (p.grid < 1 || p.new_grid < 1 || p.dim < 1)
    return Status::Invalid(op + "grid, new_grid and dim must be >= 1, got " + std::to_string(p.grid) + ", " +
                           std::to_string(p.new_grid) + ", " + std::to_string(p.dim));
  if (!p.pos || !p.out) return Status::Invalid(op + "pos and out must be non-null");
  if (p.grid > (int64_t(1) << 20) || p.new_grid > (int64_t(1) << 20) ||
      host::checked_mul(host::checked_mul(p.new_grid, p.new_grid) + 1, p.dim) < 0 ||
      host::checked_mul(host::checked_mul(p.grid, p.grid) + 1, p.dim) < 0)
    return Status::Invalid(op + "grid or new_grid is too large");
  const int64_t G = p.grid, G2 = p.new_grid, D = p.dim;
  const float* in_end = p.pos + (1 + G * G) * D;
  const float* out_end = p.out + (1 + G2 * G2) * D;
  if (p.pos < out_end && p.out < in_end) return Status::Invalid(op + "out must not overlap pos");

  std::vector<CubicTaps> taps;
  try {
    taps.resize(static_cast<size_t>(G2));
  } catch (const std::exception&) {
    return Status::OutOfMemory(op + "cannot allocate " + std::to_string(G2) + " interpolation taps");
  }
  std::copy(p.pos, p.pos + D, p.out);  // class token
  for (int64_t o = 0; o < G2; ++o) taps[o] = cubic_taps(o, G, G2);
  const float* grid = p.pos + D;  // (G, G, D)
  float* res = p.out + D;         // (G2, G2, D)

  host::parallel_for(G2, 1, host::max_threads(), [&](int64_t oy, int) {
    const CubicTaps& ty = taps[oy];
    for (int64_t ox = 0; ox < G2; ++ox) {
      const CubicTaps& tx = taps[ox];
      float* o = res + (oy * G2 + ox) * D;
      for (int64_t d = 0; d < D; ++d) {
        float acc = 0.f;
        for (int i = 0; i < 4; ++i) {
          const float* row = grid + ty.idx[i] * G * D;
          float r = 0.f;
          for (int j = 0; j < 4; ++j) r += tx.w[j] * row[tx.idx[j] * D + d];
          acc += ty.w[i] * r;
        }
        o[d] = acc;
      }
    }
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
