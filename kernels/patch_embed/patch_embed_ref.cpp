// patch_embed naive reference (see rsvlm_edge/patch_embed.h for the math): one output token at a
// time, plain loops over (c, py, px) in conv order, fp64 accumulation and LayerNorm statistics; with a
// packed int8 weight, qgemm's definition (the row quantised once per patch, int64 dots, fp64 scaling).
#include <cmath>
#include <new>
#include <string>
#include <vector>

#include "rsvlm_edge/patch_embed.h"
#include "rsvlm_edge/qgemm.h"

namespace rsvlm_edge {

Status patch_embed_reference(const PatchEmbedParams& p) {
  if (Status s = patch_embed_validate(p, /*cuda=*/false); !s.ok()) return s;
  const int64_t P = p.patch, D = p.dim, H = p.height, W = p.width, Gw = p.grid_w(), T = p.tokens();
  const float* weight = static_cast<const float*>(p.weight);   // (D, 3, P, P), or nullptr: packed_weight
  const float* bias = static_cast<const float*>(p.bias);       // (D) or nullptr
  const float* cls = static_cast<const float*>(p.class_emb);   // (D)
  const float* pos = static_cast<const float*>(p.pos_emb);     // (N + 1, D)
  const float* gamma = static_cast<const float*>(p.ln_gamma);  // (D) or nullptr
  const float* beta = static_cast<const float*>(p.ln_beta);    // (D) or nullptr
  float* out = static_cast<float*>(p.out);                     // (B, N + 1, D)
  std::vector<double> tok;                                     // (D) one token before LayerNorm
  std::vector<float> xrow;                                     // packed: (K) one normalised patch
  std::vector<int8_t> xq;                                      // packed: (K) its int8 quantisation
  const int64_t K = p.k();
  const QGemmLayout l = qgemm_layout(int(D), int(K));          // packed: validate checked (D, K)
  const float* w_scale = p.packed_weight ? reinterpret_cast<const float*>(p.packed_weight + l.scale) : nullptr;
  try {
    tok.resize(static_cast<size_t>(D));
    if (p.packed_weight) {
      xrow.resize(static_cast<size_t>(K));
      xq.resize(static_cast<size_t>(K));
    }
  } catch (const std::bad_alloc&) {
    return Status::OutOfMemory("patch_embed_reference: cannot allocate " + std::to_string(D + 2 * K) + " values");
  }
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      float sx = 0.f;  // packed: the patch row's activation scale
      for (int64_t d = 0; d < D; ++d) {
        double acc;
        if (t == 0) {
          acc = cls[d];
        } else if (p.packed_weight) {  // qgemm's definition on the patch row (normalised in fp32, as the LUT)
          const int64_t n = t - 1, y0 = (n / Gw) * P, x0 = (n % Gw) * P;
          if (d == 0) {
            for (int64_t c = 0; c < 3; ++c)
              for (int64_t py = 0; py < P; ++py)
                for (int64_t px = 0; px < P; ++px) {
                  const uint8_t v = p.images[((b * H + y0 + py) * W + x0 + px) * 3 + c];
                  xrow[(c * P + py) * P + px] = (static_cast<float>(v) / 255.f - p.mean[c]) / p.std[c];
                }
            sx = qgemm_quantize_row(xrow.data(), int(K), xq.data());
          }
          int64_t dot = 0;
          for (int64_t k = 0; k < K; ++k) dot += int64_t(xq[k]) * qgemm_packed_weight(p.packed_weight, l, int(d), int(k));
          acc = double(sx) * double(w_scale[d]) * double(dot) + (bias ? double(bias[d]) : 0.0);
        } else {
          const int64_t n = t - 1, y0 = (n / Gw) * P, x0 = (n % Gw) * P;
          acc = bias ? bias[d] : 0.0;
          for (int64_t c = 0; c < 3; ++c)
            for (int64_t py = 0; py < P; ++py)
              for (int64_t px = 0; px < P; ++px) {
                const uint8_t v = p.images[((b * H + y0 + py) * W + x0 + px) * 3 + c];
                const double x = (double(v) / 255.0 - double(p.mean[c])) / double(p.std[c]);
                acc += double(weight[((d * 3 + c) * P + py) * P + px]) * x;
              }
        }
        tok[d] = acc + double(pos[t * D + d]);
      }
      float* o = out + (b * T + t) * D;
      if (gamma == nullptr) {
        for (int64_t d = 0; d < D; ++d) o[d] = float(tok[d]);
        continue;
      }
      double mean = 0.0, var = 0.0;
      for (int64_t d = 0; d < D; ++d) mean += tok[d];
      mean /= double(D);
      for (int64_t d = 0; d < D; ++d) var += (tok[d] - mean) * (tok[d] - mean);
      var /= double(D);
      const double rstd = 1.0 / std::sqrt(var + double(p.eps));
      for (int64_t d = 0; d < D; ++d) o[d] = float((tok[d] - mean) * rstd * double(gamma[d]) + double(beta[d]));
    }
  }
  return Status::Ok();
}

}  // namespace rsvlm_edge
