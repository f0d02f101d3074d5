// patch_embed fast CPU path (see rsvlm_edge/patch_embed.h for the math): im2col of the normalised
// patches, the conv as one linear_cpu GEMM (qgemm_cpu for a packed int8 weight), class token and positions
// added, ln_pre by layer_norm_cpu.
// Tested against patch_embed_reference (patch_embed_ref.cpp).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/host_checks.h"
#include "common/thread_pool.h"
#include "rsvlm_edge/layer_norm.h"
#include "rsvlm_edge/linear.h"
#include "rsvlm_edge/patch_embed.h"
#include "rsvlm_edge/qgemm.h"

namespace rsvlm_edge {

namespace {

// Normalised value of every uint8 level per channel: lut[c][v] = (v / 255 - mean[c]) / std[c].
void normalise_lut(const PatchEmbedParams& p, float lut[3][256]) {
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) / 255.f - p.mean[c]) / p.std[c];
}

}  // namespace

Status patch_embed_cpu(const PatchEmbedParams& p) {
  if (Status s = patch_embed_validate(p, /*cuda=*/false); !s.ok() || p.batch == 0) return s;
  const int64_t P = p.patch, D = p.dim, K = p.k(), H = p.height, W = p.width;
  const int64_t Gw = p.grid_w(), T = p.tokens(), N = T - 1, rows = p.batch * T, patches = p.batch * N;
  const auto* cls = static_cast<const float*>(p.class_emb);   // (D)
  const auto* pos = static_cast<const float*>(p.pos_emb);     // (T, D)
  auto* out = static_cast<float*>(p.out);                     // (B, T, D)
  if (patches > std::numeric_limits<int32_t>::max() || K > std::numeric_limits<int32_t>::max() ||
      D > std::numeric_limits<int32_t>::max())
    return Status::Invalid("patch_embed: more than 2^31 - 1 patches, inputs or channels");

  float lut[3][256];
  normalise_lut(p, lut);
  const int threads = host::max_threads();
  // 1. im2col: every patch normalised, in conv order (c, py, px): x (B*N, K).
  // 2. the conv as one GEMM over all patches: tok (B*N, D) = x @ weight^T + bias (linear_cpu: the
  //    blocked AVX2/AVX-512 GEMM).
  // 3. tokens: class row cls + pos[0], patch rows tok + pos[t]; then ln_pre over every row
  //    (layer_norm_cpu) when given. Scratch allocated before any parallel region.
  std::vector<float> x, tok, pre;
  if (Status s = host::alloc_scratch(x, patches, K, "patch_embed"); !s.ok()) return s;
  if (Status s = host::alloc_scratch(tok, patches, D, "patch_embed"); !s.ok()) return s;
  if (p.ln_gamma != nullptr)
    if (Status s = host::alloc_scratch(pre, rows, D, "patch_embed"); !s.ok()) return s;
  host::parallel_for(patches, 4, threads, [&](int64_t r, int) {
    const int64_t b = r / N, n = r % N, y0 = (n / Gw) * P, x0 = (n % Gw) * P;
    float* xr = x.data() + r * K;
    for (int64_t py = 0; py < P; ++py) {
      const uint8_t* src = p.images + ((b * H + y0 + py) * W + x0) * 3;  // row of P pixels
      for (int64_t px = 0; px < P; ++px)
        for (int64_t c = 0; c < 3; ++c) xr[(c * P + py) * P + px] = lut[c][src[px * 3 + c]];
    }
  });
  if (p.packed_weight != nullptr) {  // W8A8: qgemm (validate checked the packed shape (D, K))
    QGemmParams qp;
    qp.x = x.data();
    qp.packed = p.packed_weight;
    qp.packed_bytes = p.packed_bytes;
    qp.bias = static_cast<const float*>(p.bias);
    qp.out = tok.data();
    qp.m = patches;
    qp.n = int(D);
    qp.k = int(K);
    if (Status s = qgemm_cpu(qp); !s.ok()) return s;
  } else {
    LinearParams lp;
    lp.x = x.data();
    lp.w = p.weight;
    lp.bias = p.bias;
    lp.out = tok.data();
    lp.m = patches;
    lp.n = int(D);
    lp.k = int(K);
    if (Status s = linear_cpu(lp); !s.ok()) return s;
  }
  float* const dst = p.ln_gamma != nullptr ? pre.data() : out;  // (B, T, D) before ln_pre
  host::parallel_for(rows, 8, threads, [&](int64_t r, int) {
    const int64_t b = r / T, t = r % T;
    const float* src = t == 0 ? cls : tok.data() + (b * N + t - 1) * D;
    const float* pr = pos + t * D;
    float* o = dst + r * D;
    for (int64_t d = 0; d < D; ++d) o[d] = src[d] + pr[d];
  });
  if (p.ln_gamma == nullptr) return Status::Ok();
  LayerNormParams ln;
  ln.x = pre.data();
  ln.gamma = p.ln_gamma;
  ln.beta = p.ln_beta;
  ln.out = out;
  ln.m = rows;
  ln.d = int(D);
  ln.eps = p.eps;
  return layer_norm_cpu(ln);
}

}  // namespace rsvlm_edge
