// CUDA decoder ops (fp16/bf16 activations, fp32 accumulation). Mirrors decoder_ops_cpu.cpp; see
// decoder_ops.h for shapes and conventions. Simple, one-pass kernels: a block per RMSNorm row, a
// thread per rotated pair / element, and a warp per output feature for the linear layer (8-wide
// vector loads when K % 8 == 0).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_check.cuh"
#include "cuda_math.cuh"
#include "decoder_ops.h"

namespace rsvlm_edge {
namespace {

constexpr int kThreads = 256;       // elementwise / norm kernels
constexpr int kLinearWarps = 4;     // output features per linear block (one per warp)
constexpr int kLinearRows = 4;      // rows of x per linear block (kept in registers per warp)

using cuda::from_float;
using cuda::load8;
using cuda::to_float;
using cuda::warp_sum;

unsigned grid_for(int64_t n, int threads) {
  return static_cast<unsigned>(std::min<int64_t>((n + threads - 1) / threads, 1 << 20));
}

// grid (T), block 256: one row per block.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const T* x,       // (T, D)
                    const T* weight,  // (D)
                    T* out,           // (T, D), may alias x
                    int dim, float eps) {
  __shared__ float warp_sums[kThreads / 32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    const float v = to_float(xr[i]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  const float inv = rsqrtf(total / float(dim) + eps);
  for (int i = threadIdx.x; i < dim; i += kThreads)
    out[row * dim + i] = from_float<T>(to_float(xr[i]) * inv * to_float(weight[i]));
}

// One thread per rotated pair (token t, head h over q then k, i < D/2); grid-stride.
template <typename T>
__global__ void __launch_bounds__(kThreads) rope_kernel(RopeParams p) {
  const int half = p.head_dim / 2;
  const int heads = p.num_heads + (p.k ? p.num_kv_heads : 0);
  const int64_t total = p.tokens * heads * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int i = int(idx % half);
    const int h = int((idx / half) % heads);
    const int64_t t = idx / (int64_t(half) * heads);
    T* x = h < p.num_heads ? static_cast<T*>(p.q) + (t * p.num_heads + h) * p.head_dim
                           : static_cast<T*>(p.k) + (t * p.num_kv_heads + (h - p.num_heads)) * p.head_dim;
    const float inv_freq = 1.f / powf(p.theta, float(2 * i) / float(p.head_dim));
    const float a = float(p.positions[t]) * inv_freq;
    const float c = cosf(a), s = sinf(a);
    const float x1 = to_float(x[i]), x2 = to_float(x[i + half]);
    x[i] = from_float<T>(x1 * c - x2 * s);
    x[i + half] = from_float<T>(x2 * c + x1 * s);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) swiglu_kernel(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]);
    out[i] = from_float<T>(g / (1.f + expf(-g)) * to_float(up[i]));
  }
}

// grid (ceil(N / 4), ceil(M / 4)), block 128: warp w computes out[m0 .. m0+3, n0 + w].
// Lanes stride K; each weight element is loaded once per block and used for up to 4 rows of x.
// kVec8 (K % 8 == 0 and 16-byte aligned x, w): each lane loads 8 consecutive elements at a time.
template <typename TA, typename TW, bool kVec8>
__global__ void __launch_bounds__(kLinearWarps * 32) linear_kernel(LinearParams p) {
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kLinearWarps + threadIdx.x / 32;
  const int64_t m0 = int64_t(blockIdx.y) * kLinearRows;
  if (n >= p.n) return;
  const TA* x = static_cast<const TA*>(p.x);
  const TW* w = static_cast<const TW*>(p.w) + int64_t(n) * p.k;
  const int rows = int(min(int64_t(kLinearRows), p.m - m0));
  float acc[kLinearRows] = {0.f, 0.f, 0.f, 0.f};
  if constexpr (kVec8) {
    for (int k = lane * 8; k < p.k; k += 32 * 8) {
      float wv[8], xv[8];
      load8(w + k, wv);
#pragma unroll
      for (int r = 0; r < kLinearRows; ++r) {
        if (r >= rows) break;
        load8(x + (m0 + r) * p.k + k, xv);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r] += xv[i] * wv[i];
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

template <typename T>
Status launch_rms_norm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows > 0x7fffffff) return Status::Invalid("rms_norm: too many rows for one launch");
  rms_norm_kernel<T><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(
      static_cast<const T*>(p.x), static_cast<const T*>(p.weight), static_cast<T*>(p.out), p.dim, p.eps);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

template <typename TA, typename TW>
Status launch_linear(const LinearParams& p, cudaStream_t stream) {
  const int64_t row_blocks = (p.m + kLinearRows - 1) / kLinearRows;
  if (row_blocks > 65535) return Status::Invalid("linear: M too large for one launch (max 262140 rows)");
  const dim3 grid((p.n + kLinearWarps - 1) / kLinearWarps, static_cast<unsigned>(row_blocks));
  const bool vec8 = p.k % 8 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(p.w) % 16 == 0;
  if (vec8) linear_kernel<TA, TW, true><<<grid, kLinearWarps * 32, 0, stream>>>(p);
  else linear_kernel<TA, TW, false><<<grid, kLinearWarps * 32, 0, stream>>>(p);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

}  // namespace

Status rms_norm_cuda(const RmsNormParams& p, void* stream_ptr) {
  Status st = rms_norm_validate(p, true);
  if (!st.ok() || p.rows == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  return p.dtype == DType::f16 ? launch_rms_norm<__half>(p, stream) : launch_rms_norm<__nv_bfloat16>(p, stream);
}

Status rope_cuda(const RopeParams& p, void* stream_ptr) {
  Status st = rope_validate(p, true);
  if (!st.ok() || p.tokens == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t total = p.tokens * (p.num_heads + (p.k ? p.num_kv_heads : 0)) * (p.head_dim / 2);
  if (p.dtype == DType::f16)
    rope_kernel<__half><<<grid_for(total, kThreads), kThreads, 0, stream>>>(p);
  else
    rope_kernel<__nv_bfloat16><<<grid_for(total, kThreads), kThreads, 0, stream>>>(p);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

Status swiglu_cuda(const SwiGluParams& p, void* stream_ptr) {
  Status st = swiglu_validate(p, true);
  if (!st.ok() || p.n == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (p.dtype == DType::f16)
    swiglu_kernel<__half><<<grid_for(p.n, kThreads), kThreads, 0, stream>>>(
        static_cast<const __half*>(p.gate), static_cast<const __half*>(p.up), static_cast<__half*>(p.out), p.n);
  else
    swiglu_kernel<__nv_bfloat16><<<grid_for(p.n, kThreads), kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(p.gate), static_cast<const __nv_bfloat16*>(p.up),
        static_cast<__nv_bfloat16*>(p.out), p.n);
  RSVLM_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

Status linear_cuda(const LinearParams& p, void* stream_ptr) {
  Status st = linear_validate(p, true);
  if (!st.ok() || p.m == 0) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const bool i8 = p.w_dtype == DType::i8;
  if (p.act_dtype == DType::f16)
    return i8 ? launch_linear<__half, int8_t>(p, stream) : launch_linear<__half, __half>(p, stream);
  return i8 ? launch_linear<__nv_bfloat16, int8_t>(p, stream) : launch_linear<__nv_bfloat16, __nv_bfloat16>(p, stream);
}

}  // namespace rsvlm_edge
