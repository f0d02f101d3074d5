// linear CUDA path (fp16/bf16 activations, dense or int8 weights, fp32 accumulation):
//   M <= 8 or int8 weights: a warp per output feature and up to 4 rows of x per block (GEMV /
//     small-M GEMM; 8-wide vector loads when K % 8 == 0), decode-shaped;
//   M > 8 with dense weights, K % 8 == 0: tensor-core tiles (WMMA 16x16x16, fp32 accumulators), 64 x 64
//     outputs per block of 4 warps, K in steps of 32 through shared memory: prefill-shaped.
// Tested against linear_reference (see rsvlm_edge/linear.h).
#include <mma.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/cuda_check.cuh"
#include "common/cuda_launch.cuh"
#include "common/cuda_math.cuh"
#include "rsvlm_edge/linear.h"

namespace rsvlm_edge {
namespace {

constexpr int kLinearWarps = 4;  // output features per block (one per warp)
constexpr int kLinearRows = 4;   // rows of x per block (kept in registers per warp)

using cuda::from_float;
using cuda::load8;
using cuda::to_float;
using cuda::warp_sum;

// grid (ceil(N / 4), ceil(M / 4)), block 128: warp w computes out[m0 .. m0+3, n0 + w].
// Lanes stride K; each weight element is loaded once per block and used for up to 4 rows of x.
// kVec8 (K % 8 == 0 and 16-byte aligned x, w): each lane loads 8 consecutive elements at a time.
// Launched programmatically (cuda_launch.cuh): the warp's weight row starts into L2 while the kernel
// ahead (the norm, attention or SwiGLU that writes x) still runs; x is read after the wait.
template <typename TA, typename TW, bool kVec8>
__global__ void __launch_bounds__(kLinearWarps * 32) linear_kernel(LinearParams p) {
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kLinearWarps + threadIdx.x / 32;
  const int64_t m0 = int64_t(blockIdx.y) * kLinearRows;
  if (n >= p.n) return;
  const TA* x = static_cast<const TA*>(p.x);
  const TW* w = static_cast<const TW*>(p.w) + int64_t(n) * p.k;
  if (blockIdx.y == 0) cuda::prefetch_l2(w, int64_t(p.k) * sizeof(TW), lane);  // weights: written by no kernel
  cuda::wait_for_prior_grids();
  const int rows = int(min(int64_t(kLinearRows), p.m - m0));
  float acc[kLinearRows] = {0.f, 0.f, 0.f, 0.f};
  if constexpr (kVec8) {
    // kUnroll weight loads of 16 bytes in flight per lane before any is used: decode GEMV is bound by
    // memory latency x bytes in flight.
    constexpr int kUnroll = 4, kStep = 32 * 8;
    for (int k0 = lane * 8; k0 < p.k; k0 += kStep * kUnroll) {
      float wv[kUnroll][8];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (k0 + u * kStep < p.k) load8(w + k0 + u * kStep, wv[u]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int k = k0 + u * kStep;
        if (k >= p.k) break;
#pragma unroll
        for (int r = 0; r < kLinearRows; ++r) {
          if (r >= rows) break;
          float xv[8];
          load8(x + (m0 + r) * p.k + k, xv);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[r] += xv[i] * wv[u][i];
        }
      }
    }
  } else {
    for (int k = lane; k < p.k; k += 32) {
      const float wk = to_float(w[k]);
#pragma unroll
      for (int r = 0; r < kLinearRows; ++r)
        if (r < rows) acc[r] += to_float(x[(m0 + r) * p.k + k]) * wk;
    }
  }
  const float scale = std::is_same<TW, int8_t>::value ? p.w_scale[n] : 1.f;
  const float b = p.bias ? to_float(static_cast<const TA*>(p.bias)[n]) : 0.f;
#pragma unroll
  for (int r = 0; r < kLinearRows; ++r) {
    const float y = warp_sum(acc[r]);
    if (lane == 0 && r < rows) static_cast<TA*>(p.out)[(m0 + r) * p.n + n] = from_float<TA>(y * scale + b);
  }
}

constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kTilePad = 8;  // WMMA GEMM block tile
constexpr int kMinGemmRows = 9;                                       // M from which the GEMM runs

// grid (ceil(N / 64), ceil(M / 64)), block 128 = 4 warps; warp w computes the 32 x 32 outputs
// (w / 2, w % 2) of the block's 64 x 64 tile as 2 x 2 WMMA fragments.
// x (M, K) and w (N, K) of the activation dtype TA (fp16 / bf16), K % 8 == 0, 16-byte aligned.
// out[m, n] = sum_k x[m, k] w[n, k] + bias[n], fp32 accumulation.
template <typename TA>
__global__ void __launch_bounds__(128) linear_wmma_kernel(LinearParams p) {
  using namespace nvcuda;
  struct Tiles {
    TA a[kTileM][kTileK + kTilePad];  // x rows
    TA b[kTileN][kTileK + kTilePad];  // w rows (= B^T: read as a column-major B)
  };
  __shared__ __align__(128) unsigned char raw[sizeof(Tiles) > kTileM * kTileN * sizeof(float) ? sizeof(Tiles)
                                                                                              : kTileM * kTileN * sizeof(float)];
  Tiles& t = *reinterpret_cast<Tiles*>(raw);
  float* c_tile = reinterpret_cast<float*>(raw);  // (64, 64), reused after the K loop
  const TA* x = static_cast<const TA*>(p.x);
  const TA* w = static_cast<const TA*>(p.w);
  const int64_t m0 = int64_t(blockIdx.y) * kTileM;
  const int n0 = blockIdx.x * kTileN;
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
  for (int k0 = 0; k0 < p.k; k0 += kTileK) {
    // 64 rows x 32 columns = 256 vectors of 8 per operand: two per thread each.
#pragma unroll
    for (int v = 0; v < 2; ++v) {
      const int idx = threadIdx.x + v * 128, row = idx / 4, col = (idx % 4) * 8;
      uint4 av = make_uint4(0, 0, 0, 0), bv = make_uint4(0, 0, 0, 0);
      if (m0 + row < p.m && k0 + col < p.k) av = *reinterpret_cast<const uint4*>(x + (m0 + row) * p.k + k0 + col);
      if (n0 + row < p.n && k0 + col < p.k) bv = *reinterpret_cast<const uint4*>(w + int64_t(n0 + row) * p.k + k0 + col);
      *reinterpret_cast<uint4*>(&t.a[row][col]) = av;
      *reinterpret_cast<uint4*>(&t.b[row][col]) = bv;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, TA, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, TA, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &t.a[wm * 32 + i * 16][kk], kTileK + kTilePad);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &t.b[wn * 32 + j * 16][kk], kTileK + kTilePad);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(c_tile + (wm * 32 + i * 16) * kTileN + wn * 32 + j * 16, acc[i][j], kTileN,
                              wmma::mem_row_major);
  __syncthreads();
  const TA* bias = static_cast<const TA*>(p.bias);
  TA* out = static_cast<TA*>(p.out);
  for (int idx = threadIdx.x; idx < kTileM * kTileN; idx += 128) {
    const int r = idx / kTileN, c = idx % kTileN;
    const int64_t m = m0 + r;
    const int n = n0 + c;
    if (m < p.m && n < p.n) out[m * p.n + n] = from_float<TA>(c_tile[idx] + (bias ? to_float(bias[n]) : 0.f));
  }
}

template <typename TA, typename TW>
Status launch_linear(const LinearParams& p, cudaStream_t stream) {
  constexpr bool kDense = std::is_same<TA, TW>::value;
  if (kDense && p.m >= kMinGemmRows && p.k % 8 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(p.w) % 16 == 0) {
    const int64_t row_tiles = (p.m + kTileM - 1) / kTileM;
    if (row_tiles > 65535) return Status::Invalid("linear: M too large for one launch (max 4194240 rows)");
    const dim3 grid((p.n + kTileN - 1) / kTileN, static_cast<unsigned>(row_tiles));
    linear_wmma_kernel<TA><<<grid, 128, 0, stream>>>(p);
    RSVLM_CUDA_CHECK(cudaGetLastError());
    return Status::Ok();
  }
  const int64_t row_blocks = (p.m + kLinearRows - 1) / kLinearRows;
  if (row_blocks > 65535) return Status::Invalid("linear: M too large for one launch (max 262140 rows)");
  const dim3 grid((p.n + kLinearWarps - 1) / kLinearWarps, static_cast<unsigned>(row_blocks));
  const bool vec8 =
      p.k % 8 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(p.w) % 16 == 0;
  if (vec8)
    RSVLM_CUDA_CHECK(cuda::launch_programmatic(linear_kernel<TA, TW, true>, grid, dim3(kLinearWarps * 32), 0, stream, p));
  else
    RSVLM_CUDA_CHECK(cuda::launch_programmatic(linear_kernel<TA, TW, false>, grid, dim3(kLinearWarps * 32), 0, stream, p));
  return Status::Ok();
}

}  // namespace

Status linear_cuda(const LinearParams& p, void* stream_ptr) {
  Status st = linear_validate(p, true);
  if (!st.ok() || p.m == 0 || p.n == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const bool i8 = p.w_dtype == DType::i8;
  if (p.act_dtype == DType::f16)
    return i8 ? launch_linear<__half, int8_t>(p, stream) : launch_linear<__half, __half>(p, stream);
  return i8 ? launch_linear<__nv_bfloat16, int8_t>(p, stream) : launch_linear<__nv_bfloat16, __nv_bfloat16>(p, stream);
}

}  // namespace rsvlm_edge
