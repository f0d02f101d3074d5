// patch_embed fast CPU path (see rsvlm_edge/patch_embed.h for the math): the thread pool over blocks of 8
// output rows, the weight transposed once per call so the inner loop runs over contiguous D. Tested
// against patch_embed_reference (patch_embed_ref.cpp).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/patch_embed.h"

namespace rsvlm_edge {

namespace {

// Normalised value of every uint8 level per channel: lut[c][v] = (v / 255 - mean[c]) / std[c].
void normalise_lut(const PatchEmbedParams& p, float lut[3][256]) {
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) / 255.f - p.mean[c]) / p.std[c];
}

// In-place LayerNorm of one row x (D) with double-precision statistics.
void layer_norm_row(float* x, const float* gamma, const float* beta, int64_t D, float eps) {
  double sum = 0.0;
  for (int64_t d = 0; d < D; ++d) sum += x[d];
  const double mean = sum / static_cast<double>(D);
  double sq = 0.0;
  for (int64_t d = 0; d < D; ++d) sq += (x[d] - mean) * (x[d] - mean);
  const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(D) + static_cast<double>(eps));
  for (int64_t d = 0; d < D; ++d) x[d] = static_cast<float>((x[d] - mean) * rstd) * gamma[d] + beta[d];
}

}  // namespace

Status patch_embed_cpu(const PatchEmbedParams& p) {
  if (Status s = patch_embed_validate(p, /*cuda=*/false); !s.ok() || p.batch == 0) return s;
  const int64_t P = p.patch, D = p.dim, K = p.k(), H = p.height, W = p.width;
  const int64_t Gw = p.grid_w(), T = p.tokens(), rows = p.batch * T;
  const auto* weight = static_cast<const float*>(p.weight);   // (D, K)
  const auto* bias = static_cast<const float*>(p.bias);       // (D) or null
  const auto* cls = static_cast<const float*>(p.class_emb);   // (D)
  const auto* pos = static_cast<const float*>(p.pos_emb);     // (T, D)
  const auto* gamma = static_cast<const float*>(p.ln_gamma);  // (D) or null
  const auto* beta = static_cast<const float*>(p.ln_beta);    // (D) or null
  auto* out = static_cast<float*>(p.out);                     // (B, T, D)

  float lut[3][256];
  normalise_lut(p, lut);
  // wt (K, D): weight transposed once per call so the inner loop runs over contiguous D; and per
  // thread the block's patches x (kRowBlock, K). Both allocated before any parallel region.
  constexpr int64_t kRowBlock = 8;
  const int threads = host::max_threads();
  std::vector<float> wt, xbuf;
  if (Status s = host::alloc_scratch(wt, K, D, "patch_embed"); !s.ok()) return s;
  if (Status s = host::alloc_scratch(xbuf, kRowBlock * K, threads, "patch_embed"); !s.ok()) return s;
  host::parallel_for(K, 16, threads, [&](int64_t k, int) {
    for (int64_t d = 0; d < D; ++d) wt[k * D + d] = weight[d * K + k];
  });

  // Rows (b, t) of the output in blocks of kRowBlock: each weight row wt[k] is loaded once per
  // block and used for every patch row in it (the block's outputs stay in cache).
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  host::parallel_chunks(blocks, 1, threads, [&](int64_t blk_begin, int64_t blk_end, int worker) {
    float* const x = xbuf.data() + worker * kRowBlock * K;  // patches, normalised, conv order (c, py, px)
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      const int64_t r0 = blk * kRowBlock, r1 = std::min(rows, r0 + kRowBlock);
      int64_t patch_rows[kRowBlock];  // output rows of this block that are patch tokens
      int64_t np = 0;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / T, t = r % T;
        float* o = out + r * D;
        if (t == 0) {  // class token
          for (int64_t d = 0; d < D; ++d) o[d] = cls[d];
          continue;
        }
        float* xr = x + np * K;
        const int64_t n = t - 1, y0 = (n / Gw) * P, x0 = (n % Gw) * P;
        for (int64_t py = 0; py < P; ++py) {
          const uint8_t* src = p.images + ((b * H + y0 + py) * W + x0) * 3;  // row of P pixels
          for (int64_t px = 0; px < P; ++px)
            for (int64_t c = 0; c < 3; ++c) xr[(c * P + py) * P + px] = lut[c][src[px * 3 + c]];
        }
        for (int64_t d = 0; d < D; ++d) o[d] = bias ? bias[d] : 0.f;
        patch_rows[np++] = r;
      }
      for (int64_t k = 0; k < K; ++k) {
        const float* wr = wt.data() + k * D;
        for (int64_t i = 0; i < np; ++i) {
          const float xv = x[i * K + k];
          float* o = out + patch_rows[i] * D;
          for (int64_t d = 0; d < D; ++d) o[d] += xv * wr[d];
        }
      }
      for (int64_t r = r0; r < r1; ++r) {
        float* o = out + r * D;
        const float* pr = pos + (r % T) * D;
        for (int64_t d = 0; d < D; ++d) o[d] += pr[d];
        if (gamma) layer_norm_row(o, gamma, beta, D, p.eps);
      }
    }
  });
  return Status::Ok();
}

}  // namespace rsvlm_edge
