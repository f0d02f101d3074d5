// CPU reference + runtime CPU path for patch_embed (see patch_embed.h for the math), and the
// load-time position-embedding interpolation.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "patch_embed.h"

namespace rsvlm_edge {

Status patch_embed_validate(const PatchEmbedParams& p, bool cuda) {
  const std::string op = "patch_embed: ";
  if (p.batch < 1) return Status::Invalid(op + "batch must be >= 1, got " + std::to_string(p.batch));
  if (p.patch < 1) return Status::Invalid(op + "patch size must be >= 1, got " + std::to_string(p.patch));
  if (p.dim < 1) return Status::Invalid(op + "embedding dim must be >= 1, got " + std::to_string(p.dim));
  if (p.height < p.patch || p.width < p.patch || p.height % p.patch != 0 || p.width % p.patch != 0)
    return Status::Invalid(op + "image size " + std::to_string(p.height) + "x" + std::to_string(p.width) +
                           " is not a positive multiple of the patch size " + std::to_string(p.patch) +
                           "; resize the images to the model resolution first");
  if (!p.images || !p.weight || !p.class_emb || !p.pos_emb || !p.out)
    return Status::Invalid(op + "images, weight, class_emb, pos_emb and out must all be non-null");
  if ((p.ln_gamma == nullptr) != (p.ln_beta == nullptr))
    return Status::Invalid(op + "ln_gamma and ln_beta must be given together (or neither)");
  for (int c = 0; c < 3; ++c)
    if (!(p.std[c] != 0.f) || !std::isfinite(p.std[c]) || !std::isfinite(p.mean[c]))
      return Status::Invalid(op + "mean/std must be finite and std non-zero (channel " + std::to_string(c) + ")");
  if (!(p.eps > 0.f)) return Status::Invalid(op + "eps must be > 0");
  const bool dtype_ok = cuda ? (p.dtype == DType::f32 || p.dtype == DType::f16 || p.dtype == DType::bf16)
                             : p.dtype == DType::f32;
  if (!dtype_ok)
    return Status::Invalid(op + "dtype " + dtype_name(p.dtype) + " is not supported on " +
                           (cuda ? "CUDA (use float32, float16 or bfloat16)" : "CPU (use float32)"));
  return Status::Ok();
}

namespace {

// Normalised value of every uint8 level per channel: lut[c][v] = (v / 255 - mean[c]) / std[c].
void normalise_lut(const PatchEmbedParams& p, float lut[3][256]) {
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) / 255.f - p.mean[c]) / p.std[c];
}

// In-place LayerNorm of one row x (D) with double-precision statistics (this is the reference).
void layer_norm_row(float* x, const float* gamma, const float* beta, int64_t D, float eps) {
  double sum = 0.0;
  for (int64_t d = 0; d < D; ++d) sum += x[d];
  const double mean = sum / static_cast<double>(D);
  double sq = 0.0;
  for (int64_t d = 0; d < D; ++d) sq += (x[d] - mean) * (x[d] - mean);
  const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(D) + static_cast<double>(eps));
  for (int64_t d = 0; d < D; ++d)
    x[d] = static_cast<float>((x[d] - mean) * rstd) * gamma[d] + beta[d];
}

}  // namespace

Status patch_embed_cpu(const PatchEmbedParams& p) {
  if (Status s = patch_embed_validate(p, /*cuda=*/false); !s.ok()) return s;
  const int64_t P = p.patch, D = p.dim, K = p.k(), H = p.height, W = p.width;
  const int64_t Gw = p.grid_w(), T = p.tokens(), rows = p.batch * T;
  const auto* weight = static_cast<const float*>(p.weight);        // (D, K)
  const auto* bias = static_cast<const float*>(p.bias);            // (D) or null
  const auto* cls = static_cast<const float*>(p.class_emb);        // (D)
  const auto* pos = static_cast<const float*>(p.pos_emb);          // (T, D)
  const auto* gamma = static_cast<const float*>(p.ln_gamma);       // (D) or null
  const auto* beta = static_cast<const float*>(p.ln_beta);         // (D) or null
  auto* out = static_cast<float*>(p.out);                          // (B, T, D)

  float lut[3][256];
  normalise_lut(p, lut);
  // wt (K, D): weight transposed once per call so the inner loop runs over contiguous D.
  std::vector<float> wt(static_cast<size_t>(K * D));
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < K; ++k)
    for (int64_t d = 0; d < D; ++d) wt[k * D + d] = weight[d * K + k];

  // Rows (b, t) of the output in blocks of kRowBlock: each weight row wt[k] is loaded once per
  // block and used for every patch row in it (the block's outputs stay in cache).
  constexpr int64_t kRowBlock = 8;
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
#pragma omp parallel
  {
    std::vector<float> x(static_cast<size_t>(kRowBlock * K));  // patches, normalised, conv order (c, py, px)
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
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
        float* xr = x.data() + np * K;
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
  }
  return Status::Ok();
}

#ifndef RSVLM_WITH_CUDA
Status patch_embed_cuda(const PatchEmbedParams&, void*) {
  return Status::NotCompiled(
      "patch_embed: this build of rsvlm_edge has no CUDA kernels (built without CUDA); rebuild with nvcc "
      "available (RSVLM_CUDA=ON) or pass CPU arrays");
}
#endif

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
  const int64_t G = p.grid, G2 = p.new_grid, D = p.dim;
  const float* in_end = p.pos + (1 + G * G) * D;
  const float* out_end = p.out + (1 + G2 * G2) * D;
  if (p.pos < out_end && p.out < in_end) return Status::Invalid(op + "out must not overlap pos");

  std::copy(p.pos, p.pos + D, p.out);  // class token
  std::vector<CubicTaps> taps(static_cast<size_t>(G2));
  for (int64_t o = 0; o < G2; ++o) taps[o] = cubic_taps(o, G, G2);
  const float* grid = p.pos + D;  // (G, G, D)
  float* res = p.out + D;         // (G2, G2, D)

#pragma omp parallel for schedule(static)
  for (int64_t oy = 0; oy < G2; ++oy) {
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
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
