// patch_embed CUDA path (see rsvlm_edge/patch_embed.h for the math); tested against
// patch_embed_reference (patch_embed_ref.cpp). Conversions and warp reductions: common/cuda_math.cuh.
//
// Three kernels on one stream:
//   1. patch_gemm_kernel: a tiled SIMT GEMM tokens[B*N, D] = pixels[B*N, K] x weight^T[K, D] with
//      K = 3*P*P. Each block owns a 64-patch x 64-dim output tile; per K-step of 16 it gathers the
//      tile's uint8 pixels straight from the HWC images, normalises them through a 3x256 lookup
//      table into shared memory (fp32), stages the matching weight tile (converted to fp32), and
//      every thread accumulates a 4x4 micro-tile in fp32. The epilogue adds bias and pos_emb[1 + n]
//      and writes token 1 + n of its image in the output dtype.
//   2. class_token_kernel: out[b, 0, :] = class_emb + pos_emb[0].
//   3. layer_norm_rows_kernel (only with ln_pre): in-place LayerNorm of every (b, t) row, one block
//      per row, fp32 statistics (two passes over the row: mean, then variance).
// No tensor cores: this is the simple, obviously-correct version.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/cuda_math.cuh"
#include "rsvlm_edge/patch_embed.h"

namespace rsvlm_edge {
namespace {

using cuda::from_float;
using cuda::to_float;
using cuda::block_sum;

constexpr int kTileM = 64;     // patches per block
constexpr int kTileN = 64;     // embedding dims per block
constexpr int kTileK = 16;     // GEMM depth per shared-memory stage
constexpr int kThreads = 256;  // 16 x 16 threads, each a 4 x 4 micro-tile (rows ty + 16 i, cols tx + 16 j)

template <typename T>
struct GemmArgs {
  const uint8_t* images;  // (B, H, W, 3)
  const T* weight;        // (D, K), K = 3*P*P in conv order (c, py, px)
  const T* bias;          // (D) or nullptr
  const T* pos_emb;       // (N + 1, D)
  T* out;                 // (B, N + 1, D)
  float mean[3];          // (3)
  float std[3];           // (3)
  int64_t rows;           // B * N patch rows
  int64_t num_patches;    // N
  int64_t height, width;  // H, W
  int32_t patch;          // P
  int32_t grid_w;         // W / P
  int32_t dim;            // D
  int32_t k;              // K
};

template <typename T>
__global__ void __launch_bounds__(kThreads) patch_gemm_kernel(const GemmArgs<T> a) {
  __shared__ float lut[3][256];             // normalised value of every uint8 level per channel
  __shared__ float as[kTileK][kTileM + 1];  // pixels, k-major
  __shared__ float bs[kTileK][kTileN + 1];  // weight^T tile (+1: conflict-free k-fastest stores)
  __shared__ int64_t row_base[kTileM];      // offset of the patch's top-left pixel, -1 = past the end

  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int n0 = blockIdx.y * kTileN;

  for (int i = tid; i < 3 * 256; i += kThreads) {
    const int c = i / 256, v = i % 256;
    // Select by value: dynamic indexing into the by-value kernel argument would spill it to local memory.
    const float mean = c == 0 ? a.mean[0] : (c == 1 ? a.mean[1] : a.mean[2]);
    const float sdev = c == 0 ? a.std[0] : (c == 1 ? a.std[1] : a.std[2]);
    lut[c][v] = (static_cast<float>(v) / 255.f - mean) / sdev;
  }
  for (int m = tid; m < kTileM; m += kThreads) {
    const int64_t r = m0 + m;
    if (r < a.rows) {
      const int64_t b = r / a.num_patches, n = r % a.num_patches;
      const int64_t y0 = (n / a.grid_w) * a.patch, x0 = (n % a.grid_w) * a.patch;
      row_base[m] = ((b * a.height + y0) * a.width + x0) * 3;
    } else {
      row_base[m] = -1;
    }
  }
  __syncthreads();

  const int pp = a.patch * a.patch;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < a.k; k0 += kTileK) {
    for (int i = tid; i < kTileK * kTileM; i += kThreads) {
      const int kk = i / kTileM, m = i % kTileM, k = k0 + kk;
      float v = 0.f;
      if (k < a.k && row_base[m] >= 0) {
        const int c = k / pp, rem = k % pp, py = rem / a.patch, px = rem % a.patch;
        v = lut[c][a.images[row_base[m] + (static_cast<int64_t>(py) * a.width + px) * 3 + c]];
      }
      as[kk][m] = v;
    }
    for (int i = tid; i < kTileK * kTileN; i += kThreads) {
      const int n = i / kTileK, kk = i % kTileK, k = k0 + kk;  // kk fastest: coalesced along a weight row
      bs[kk][n] = (n0 + n < a.dim && k < a.k) ? to_float(a.weight[static_cast<int64_t>(n0 + n) * a.k + k]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = m0 + ty + 16 * i;
    if (r >= a.rows) continue;
    const int64_t b = r / a.num_patches, n = r % a.num_patches;
    T* out_row = a.out + (b * (a.num_patches + 1) + 1 + n) * a.dim;
    const T* pos_row = a.pos_emb + (1 + n) * a.dim;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int d = n0 + tx + 16 * j;
      if (d >= a.dim) continue;
      float v = acc[i][j];
      if (a.bias != nullptr) v += to_float(a.bias[d]);
      v += to_float(pos_row[d]);
      out_row[d] = from_float<T>(v);
    }
  }
}

template <typename T>
__global__ void class_token_kernel(const T* __restrict__ class_emb,  // (D)
                                   const T* __restrict__ pos_emb,    // (N + 1, D): row 0 used
                                   T* __restrict__ out,              // (B, N + 1, D): rows (b, 0) written
                                   int64_t batch, int64_t tokens, int64_t dim) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= batch * dim) return;
  const int64_t b = i / dim, d = i % dim;
  out[b * tokens * dim + d] = from_float<T>(to_float(class_emb[d]) + to_float(pos_emb[d]));
}

constexpr int kNormThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kNormThreads) layer_norm_rows_kernel(T* __restrict__ x,  // (rows, D) in place
                                                                       const T* __restrict__ gamma,  // (D)
                                                                       const T* __restrict__ beta,   // (D)
                                                                       int64_t dim, float eps) {
  __shared__ float sh[32];
  T* row = x + static_cast<int64_t>(blockIdx.x) * dim;
  float s = 0.f;
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) s += to_float(row[d]);
  const float mean = block_sum(s, sh) / static_cast<float>(dim);
  float sq = 0.f;
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
    const float diff = to_float(row[d]) - mean;
    sq += diff * diff;
  }
  const float rstd = rsqrtf(block_sum(sq, sh) / static_cast<float>(dim) + eps);
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
    row[d] = from_float<T>((to_float(row[d]) - mean) * rstd * to_float(gamma[d]) + to_float(beta[d]));
}

template <typename T>
Status launch(const PatchEmbedParams& p, cudaStream_t stream) {
  GemmArgs<T> a;
  a.images = p.images;
  a.weight = static_cast<const T*>(p.weight);
  a.bias = static_cast<const T*>(p.bias);
  a.pos_emb = static_cast<const T*>(p.pos_emb);
  a.out = static_cast<T*>(p.out);
  for (int c = 0; c < 3; ++c) {
    a.mean[c] = p.mean[c];
    a.std[c] = p.std[c];
  }
  a.num_patches = p.num_patches();
  a.rows = p.batch * a.num_patches;
  a.height = p.height;
  a.width = p.width;
  a.patch = static_cast<int32_t>(p.patch);
  a.grid_w = static_cast<int32_t>(p.grid_w());
  a.dim = static_cast<int32_t>(p.dim);
  a.k = static_cast<int32_t>(p.k());

  const int64_t row_tiles = (a.rows + kTileM - 1) / kTileM, dim_tiles = (p.dim + kTileN - 1) / kTileN;
  if (row_tiles > 0x7fffffff || dim_tiles > 65535 || p.batch * p.tokens() > 0x7fffffff)
    return Status::Invalid("patch_embed: batch x tokens too large for one launch; split the batch");
  patch_gemm_kernel<T>
      <<<dim3(static_cast<unsigned>(row_tiles), static_cast<unsigned>(dim_tiles)), kThreads, 0, stream>>>(a);
  RSVLM_CUDA_CHECK(cudaGetLastError());

  const int64_t cls_n = p.batch * p.dim;
  class_token_kernel<T><<<static_cast<unsigned>((cls_n + 255) / 256), 256, 0, stream>>>(
      static_cast<const T*>(p.class_emb), a.pos_emb, a.out, p.batch, p.tokens(), p.dim);
  RSVLM_CUDA_CHECK(cudaGetLastError());

  if (p.ln_gamma != nullptr) {
    layer_norm_rows_kernel<T><<<static_cast<unsigned>(p.batch * p.tokens()), kNormThreads, 0, stream>>>(
        a.out, static_cast<const T*>(p.ln_gamma), static_cast<const T*>(p.ln_beta), p.dim, p.eps);
    RSVLM_CUDA_CHECK(cudaGetLastError());
  }
  return Status::Ok();
}

}  // namespace

Status patch_embed_cuda(const PatchEmbedParams& p, void* stream) {
  if (Status s = patch_embed_validate(p, /*cuda=*/true); !s.ok() || p.batch == 0) return s;
  if (p.patch > 4096 || p.dim > 0x7fffffff / 2 || p.k() > 0x7fffffff / 2)
    return Status::Invalid("patch_embed: patch size or embedding dim too large for the CUDA kernel");
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {  // patch_embed_validate allowed exactly these three
    case DType::f32:
      return launch<float>(p, s);
    case DType::f16:
      return launch<__half>(p, s);
    case DType::bf16:
      return launch<__nv_bfloat16>(p, s);
    default:
      return Status::Invalid("patch_embed: unsupported dtype on CUDA");
  }
}

}  // namespace rsvlm_edge
