// Fused patch embedding: uint8 HWC RGB images -> ViT input tokens, in one pass.
//
// For every image b, patch (gy, gx) of the G_h x G_w grid (G_h = H/P, G_w = W/P, N = G_h*G_w):
//   x[c, py, px]   = (images[b, gy*P+py, gx*P+px, c] / 255 - mean[c]) / std[c]
//   tok[1 + n, d]  = sum_{c,py,px} weight[d, c, py, px] * x[c, py, px] + bias[d] + pos_emb[1 + n, d]
//   tok[0, d]      = class_emb[d] + pos_emb[0, d]
//   out[b]         = ln_gamma ? LayerNorm(tok) * ln_gamma + ln_beta : tok     (over D, every token)
// which is exactly open_clip's VisionTransformer front: conv1 -> cat class -> + positional_embedding
// -> ln_pre (ln_pre normalises ALL tokens, the class token included).
//
// Implementations (kernels/patch_embed/):
//   patch_embed_reference  patch_embed_ref.cpp  naive loops, fp64 accumulation and LayerNorm statistics
//   patch_embed_cpu        patch_embed_cpu.cpp  thread pool, transposed weight, blocks of 8 patch rows (fp32)
//   patch_embed_cuda       patch_embed.cu       tiled SIMT GEMM + class token + LayerNorm (fp32/fp16/bf16)
//   interpolate_pos_embed_cpu  pos_embed_interp_cpu.cpp  load-time bicubic resize (CPU only)
#pragma once

#include <cstdint>

#include "rsvlm_edge/dtype.h"
#include "rsvlm_edge/status.h"

namespace rsvlm_edge {

struct PatchEmbedParams {
  const uint8_t* images = nullptr;  // (B, H, W, 3) uint8 RGB, C-contiguous, already at model resolution
  const void* weight = nullptr;     // (D, 3, P, P) conv1 weight (open_clip visual.conv1.weight), `dtype`;
                                    // nullptr when packed_weight is given
  // CPU, float32 only, instead of `weight`: the conv weight as int8 per output channel (D, 3*P*P), packed
  // by qgemm_pack (rsvlm_edge/qgemm.h). The conv GEMM is then qgemm: each normalised patch row quantised to
  // int8 (one scale per row), exact int32 dots; the reference computes the same from the packed layout.
  const uint8_t* packed_weight = nullptr;  // (packed_bytes)
  int64_t packed_bytes = 0;
  const void* bias = nullptr;       // (D) conv1 bias, `dtype`; nullptr = no bias (CLIP has none)
  const void* class_emb = nullptr;  // (D) visual.class_embedding, `dtype`
  const void* pos_emb = nullptr;    // (N + 1, D) visual.positional_embedding, `dtype`
  const void* ln_gamma = nullptr;   // (D) ln_pre.weight, `dtype`; nullptr = no ln_pre
  const void* ln_beta = nullptr;    // (D) ln_pre.bias, `dtype`; required when ln_gamma is given
  void* out = nullptr;              // (B, N + 1, D) tokens, `dtype`
  float mean[3] = {0.f, 0.f, 0.f};  // (3) per-channel RGB mean in 0..1 units (CLIP: 0.4815, 0.4578, 0.4082)
  float std[3] = {1.f, 1.f, 1.f};   // (3) per-channel RGB std in 0..1 units (CLIP: 0.2686, 0.2613, 0.2758)
  float eps = 1e-5f;                // LayerNorm epsilon
  int64_t batch = 0;                // B, >= 0 (0: nothing to do)
  int64_t height = 0;               // H, a multiple of P
  int64_t width = 0;                // W, a multiple of P
  int64_t patch = 0;                // P
  int64_t dim = 0;                  // D
  DType dtype = DType::f32;         // dtype of weight, bias, class_emb, pos_emb, ln_*, out:
                                    // f32 on CPU; f32, f16 or bf16 on CUDA

  int64_t grid_h() const { return patch > 0 ? height / patch : 0; }
  int64_t grid_w() const { return patch > 0 ? width / patch : 0; }
  int64_t num_patches() const { return grid_h() * grid_w(); }  // N
  int64_t tokens() const { return num_patches() + 1; }         // N + 1
  int64_t k() const { return 3 * patch * patch; }              // GEMM depth 3*P*P
};

// Checks sizes, pointers and dtype (not devices); shared by the CPU and CUDA launchers.
Status patch_embed_validate(const PatchEmbedParams& p, bool cuda);

// Naive reference (single thread, fp64 accumulation). fp32 only. All pointers host.
Status patch_embed_reference(const PatchEmbedParams& p);

// Fast CPU path (thread pool over blocks of patch rows). fp32 only. All pointers host.
Status patch_embed_cpu(const PatchEmbedParams& p);

// CUDA path. All pointers on the current device; `stream` is a cudaStream_t (nullptr = legacy
// default). Returns kNotCompiled in a build without CUDA.
Status patch_embed_cuda(const PatchEmbedParams& p, void* stream);

// Position-embedding interpolation at load time (e.g. GeoChat's CLIP-L/14-336 -> 504 px, grid
// 24 -> 36): the G x G grid part is resized to G2 x G2 bicubically with align_corners=True, exactly
// like torch.nn.functional.interpolate(mode="bicubic", align_corners=True) (cubic convolution with
// A = -0.75, border samples clamped); the class token row 0 is copied unchanged.
struct PosEmbedInterpParams {
  const float* pos = nullptr;  // (1 + G*G, D) fp32, row 0 = class token, row 1 + y*G + x = grid (y, x)
  float* out = nullptr;        // (1 + G2*G2, D) fp32, same layout; must not overlap `pos`
  int64_t grid = 0;            // G  (>= 1)
  int64_t new_grid = 0;        // G2 (>= 1)
  int64_t dim = 0;             // D
};

// CPU only (it runs once when a model is loaded).
Status interpolate_pos_embed_cpu(const PosEmbedInterpParams& p);

}  // namespace rsvlm_edge
